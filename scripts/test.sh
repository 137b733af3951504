#!/usr/bin/env bash
# test.sh - configure, build and run every CTest test.
#
#   scripts/test.sh              RelWithDebInfo build in build/
#   scripts/test.sh --sanitize   ASan + UBSan build in build-asan/
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
-h | --help)
    sed -n '2,5p' "$0" | sed 's/^# \{0,1\}//'
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
