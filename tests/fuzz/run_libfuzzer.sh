#!/bin/sh
# run_libfuzzer.sh - builds the safetensors libFuzzer target with clang and
# runs it for a bounded time; used by CTest when the main build uses another
# compiler.
#
#   run_libfuzzer.sh CLANG SOURCE_ROOT WORK_DIR SEED_DIR SECONDS [PKG_CONFIG]
#
# CLANG may be empty (clang not found). Everything is written under
# WORK_DIR (binary, copied seeds, new corpus entries, crash files).
# Exit status: the fuzzer's (0 = nothing found); 77 after printing
# "SKIP: ..." when clang, libFuzzer or working sanitizer runtimes are
# missing (CTest maps 77 to "skipped"); 1 on a build failure.
set -u

clang=${1:-}
root=${2:?source root}
work=${3:?work dir}
seeds=${4:?seed dir}
seconds=${5:-20}
pkgconfig=${6:-pkg-config}

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

jansson_cflags=$("$pkgconfig" --cflags jansson) || { echo "pkg-config jansson failed"; exit 1; }
jansson_libs=$("$pkgconfig" --libs jansson) || { echo "pkg-config jansson failed"; exit 1; }

bin="$work/fuzz_safetensors"
# shellcheck disable=SC2086 # the pkg-config flags are meant to split
"$clang" -std=c11 -g -O1 -Wall -Wextra -D_POSIX_C_SOURCE=200809L -D_DEFAULT_SOURCE \
    -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer \
    -I"$root/core" -I"$root/shard" $jansson_cflags \
    "$root/tests/fuzz/fuzz_safetensors.c" "$root/shard/safetensors.c" "$root"/core/*.c \
    $jansson_libs -lm -o "$bin" || { echo "FAIL: building $bin"; exit 1; }

# Seeds copied fresh; new inputs accumulate in corpus/ between runs.
rm -rf "$work/seeds" && cp -R "$seeds" "$work/seeds" && mkdir -p "$work/corpus" || exit 1

cd "$work" || exit 1
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
"$bin" -max_total_time="$seconds" -print_final_stats=1 -artifact_prefix="$work/" \
    "$work/corpus" "$work/seeds"
status=$?
[ $status -eq 0 ] && echo "libFuzzer: no finding in ${seconds}s" || echo "libFuzzer: exit status $status"
exit $status
