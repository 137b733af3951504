#!/usr/bin/env bash
# gpu-check.sh [RUNTIME_DIR] - run on the GPU machine from the repository root, in one go (well under
# 8 minutes): sources RUNTIME_DIR/unpack.sh when there is one (the runtime libraries made by
# scripts/gpu-prepare.sh), runs the CUDA op tests (test_backend_cuda: every implemented CUDA op against
# the CPU op; test_backend_cuda_layers beside it when present: the paged-KV-cache and MoE ops), the same
# tests under compute-sanitizer (MC_GPU_SANITIZE=0 skips it), and the matmul
# benchmark (test_backend_cuda --bench), then prints one table. The binary is taken from
# RUNTIME_DIR/files, else from MC_GPU_BUILD (default build-cuda)/tests/unit. Logs go to MC_GPU_LOGS
# (default: $OUT/gpu-check when OUT is set, else build-cuda/gpu-check-logs). Exit status 0 only when
# the tests pass and the benchmark ran.
set -uo pipefail
rt=${1:-${MC_GPU_RUNTIME:-}}
build=${MC_GPU_BUILD:-build-cuda}
logs=${MC_GPU_LOGS:-${OUT:+$OUT/gpu-check}}
logs=${logs:-$build/gpu-check-logs}
mkdir -p "$logs"
if [ -n "$rt" ]; then
    [ -f "$rt/unpack.sh" ] || { echo "gpu-check: $rt/unpack.sh not found" >&2; exit 2; }
    # shellcheck disable=SC1091
    . "$rt/unpack.sh" >"$logs/unpack.log" 2>&1 || { cat "$logs/unpack.log"; exit 2; }
fi
bin=
for d in ${rt:+"$rt/files"} "$build/tests/unit"; do
    if [ -x "$d/test_backend_cuda" ]; then bin=$d/test_backend_cuda; break; fi
done
[ -n "$bin" ] || { echo "gpu-check: no test_backend_cuda (run scripts/gpu-prepare.sh here first)" >&2; exit 2; }
export LD_LIBRARY_PATH=/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}

card=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -1)
echo "gpu-check: $(date -u '+%Y-%m-%d %H:%M UTC'), card: ${card:-unknown (no nvidia-smi)}, binary: $bin"

t0=$SECONDS
timeout 240 "$bin" >"$logs/test.log" 2>&1; test_rc=$?
test_s=$((SECONDS - t0))
test_line=$(grep -E "test_backend_cuda: (all|skipped|[0-9]+ of)" "$logs/test.log" | tail -1)

lbin=$(dirname "$bin")/test_backend_cuda_layers
layers_rc=skip layers_s='' layers_line="not found beside $bin"
if [ -x "$lbin" ]; then
    t0=$SECONDS
    timeout 240 "$lbin" >"$logs/layers.log" 2>&1; layers_rc=$?
    layers_s=$((SECONDS - t0))
    layers_line=$(grep -E "test_backend_cuda_layers: (all|skipped|[0-9]+ of)" "$logs/layers.log" | tail -1)
fi

san_rc=skip san_line="skipped (MC_GPU_SANITIZE=0)"
sanitizer=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null)
if [ "${MC_GPU_SANITIZE:-1}" != 0 ] && [ -n "$sanitizer" ] && [ "$test_rc" = 0 ]; then
    t0=$SECONDS
    timeout 180 "$sanitizer" --tool memcheck --error-exitcode 3 "$bin" >"$logs/sanitizer.log" 2>&1
    san_rc=$?
    san_line="$(grep -E "ERROR SUMMARY" "$logs/sanitizer.log" | tail -1) ($((SECONDS - t0)) s)"
    [ "$san_rc" = 124 ] && san_line="timed out after 180 s"
    if [ "$san_rc" = 0 ] && [ "$layers_rc" = 0 ]; then
        t0=$SECONDS
        timeout 180 "$sanitizer" --tool memcheck --error-exitcode 3 "$lbin" >"$logs/sanitizer-layers.log" 2>&1
        san_rc=$?
        san_line="$san_line; layers: $(grep -E "ERROR SUMMARY" "$logs/sanitizer-layers.log" | tail -1) ($((SECONDS - t0)) s)"
        [ "$san_rc" = 124 ] && san_line="$san_line (layers timed out after 180 s)"
    fi
elif [ -z "$sanitizer" ]; then
    san_line="compute-sanitizer not found"
fi

t0=$SECONDS
timeout 300 "$bin" --bench >"$logs/bench.log" 2>&1; bench_rc=$?
bench_s=$((SECONDS - t0))

echo
echo "| check | result | status | seconds |"
echo "| --- | --- | --- | --- |"
echo "| CUDA op tests vs CPU | ${test_line:-no summary line (see $logs/test.log)} | $test_rc | $test_s |"
echo "| CUDA attention / MoE op tests vs CPU | ${layers_line:-no summary line (see $logs/layers.log)} | $layers_rc | $layers_s |"
echo "| compute-sanitizer memcheck | $san_line | $san_rc | |"
echo "| matmul benchmark | see below | $bench_rc | $bench_s |"
grep -E "^(device:|\|)" "$logs/bench.log"
if [ "$test_rc" != 0 ]; then
    echo; echo "first failures (of $logs/test.log):"; grep -v "^device:" "$logs/test.log" | head -40
fi
if [ "$layers_rc" != 0 ] && [ "$layers_rc" != skip ]; then
    echo; echo "first failures (of $logs/layers.log):"; grep -v "^device" "$logs/layers.log" | head -40
fi
if [ "$bench_rc" != 0 ]; then echo; tail -20 "$logs/bench.log"; fi
[ "$test_rc" = 0 ] && [ "$bench_rc" = 0 ] && { [ "$layers_rc" = skip ] || [ "$layers_rc" = 0 ]; } &&
    { [ "$san_rc" = skip ] || [ "$san_rc" = 0 ]; }
