#!/usr/bin/env bash
# test.sh - configure, build and run every CTest test.
#
#   scripts/test.sh              RelWithDebInfo build in build/
#   scripts/test.sh --sanitize   ASan + UBSan build in build-asan/
#   scripts/test.sh --build-types  builds (no tests) Debug, Release and MinSizeRel
#                                with the default compiler and RelWithDebInfo with
#                                clang (when installed) in build-<type>/: warnings
#                                are errors, so this checks that each is clean
set -euo pipefail
cd "$(dirname "$0")/.."

build_dir=build
extra=()
case "${1:-}" in
"") ;;
--sanitize)
    build_dir=build-asan
    extra=(-DMC_SANITIZE=ON)
    ;;
--build-types)
    [ "${MC_SKIP_SETUP:-0}" = 1 ] || scripts/setup.sh
    set -x
    for type in Debug Release MinSizeRel; do
        cmake -S . -B "build-${type,,}" -DCMAKE_BUILD_TYPE="$type"
        cmake --build "build-${type,,}" -j"$(nproc)"
    done
    if command -v clang >/dev/null; then
        CC=clang cmake -S . -B build-clang -DCMAKE_BUILD_TYPE=RelWithDebInfo
        cmake --build build-clang -j"$(nproc)"
    fi
    exit 0
    ;;
-h | --help)
    sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'
    exit 0
    ;;
*)
    echo "test.sh: unknown argument '$1' (try --help)" >&2
    exit 2
    ;;
esac

# Installs the Debian packages the build needs (a no-op when they are there).
[ "${MC_SKIP_SETUP:-0}" = 1 ] || scripts/setup.sh

jobs=$(nproc)
set -x
cmake -S . -B "$build_dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo "${extra[@]}"
cmake --build "$build_dir" -j"$jobs"
ctest --test-dir "$build_dir" --output-on-failure -j"$jobs"
