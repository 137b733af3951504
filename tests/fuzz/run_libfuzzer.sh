#!/bin/sh
# run_libfuzzer.sh - builds a libFuzzer target with clang and runs it for a
# bounded time; used by CTest when the main build uses another compiler.
#
#   run_libfuzzer.sh CLANG SOURCE_ROOT WORK_DIR SECONDS PKG_CONFIG "SOURCES" "PKGS" SEED...
#
# SOURCES: the target's .c file first, then the reader's sources (absolute
# paths, space-separated); PKGS: the pkg-config modules they need; SEED:
# files and folders, copied under WORK_DIR/seeds. CLANG may be empty (clang
# not found). Everything is written under WORK_DIR (binary, copied seeds,
# new corpus entries, crash files).
# Exit status: the fuzzer's (0 = nothing found); 77 after printing
# "SKIP: ..." when clang, libFuzzer or working sanitizer runtimes are
# missing (CTest maps 77 to "skipped"); 1 on a build failure.
# MC_FUZZ_CFLAGS (environment, optional): more compiler flags, e.g. -I folders.
set -u

clang=${1:-}
root=${2:?source root}
work=${3:?work dir}
seconds=${4:-20}
pkgconfig=${5:-pkg-config}
sources=${6:?sources}
pkgs=${7:-}
shift 7 || exit 1

skip() {
    echo "SKIP: $*"
    exit 77
}

[ -n "$clang" ] || skip "clang not found; the libFuzzer run needs clang"
command -v "$clang" >/dev/null 2>&1 || skip "$clang is not runnable"
mkdir -p "$work" || exit 1

# libFuzzer and the sanitizer runtimes must link and run here.
probe="$work/probe"
cat >"$probe.c" <<'EOF'
#include <stddef.h>
#include <stdint.h>
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) { return size && data[0] == 255; }
EOF
"$clang" -fsanitize=fuzzer,address,undefined "$probe.c" -o "$probe" >"$probe.log" 2>&1 ||
    skip "$clang cannot build a libFuzzer target (libFuzzer missing?): $(head -c 300 "$probe.log")"
"$probe" -runs=10 >"$probe.log" 2>&1 ||
    skip "a libFuzzer binary built by $clang does not run here: $(tail -c 300 "$probe.log")"

pkg_cflags=
pkg_libs=
if [ -n "$pkgs" ]; then
    # shellcheck disable=SC2086 # a list of module names
    pkg_cflags=$("$pkgconfig" --cflags $pkgs) || { echo "pkg-config $pkgs failed"; exit 1; }
    # shellcheck disable=SC2086
    pkg_libs=$("$pkgconfig" --libs $pkgs) || { echo "pkg-config $pkgs failed"; exit 1; }
fi

first=${sources%% *}
name=$(basename "$first" .c)
bin="$work/$name"
# shellcheck disable=SC2086 # the source list and pkg-config flags are meant to split
"$clang" -std=c11 -g -O1 -Wall -Wextra -D_POSIX_C_SOURCE=200809L -D_DEFAULT_SOURCE \
    -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer \
    -I"$root/core" -I"$root/shard" ${MC_FUZZ_CFLAGS:-} $pkg_cflags $sources $pkg_libs -lm -o "$bin" ||
    { echo "FAIL: building $bin"; exit 1; }

# Seeds copied fresh (numbered: several are called config.json); new
# inputs accumulate in corpus/ between runs.
rm -rf "$work/seeds" && mkdir -p "$work/seeds" "$work/corpus" || exit 1
i=0
for s in "$@"; do
    i=$((i + 1))
    cp -R "$s" "$work/seeds/$i-$(basename "$s")" || exit 1
done

cd "$work" || exit 1
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
"$bin" -max_total_time="$seconds" -print_final_stats=1 -artifact_prefix="$work/" \
    "$work/corpus" "$work/seeds"
status=$?
[ $status -eq 0 ] && echo "libFuzzer: no finding in ${seconds}s" || echo "libFuzzer: exit status $status"
exit $status
