#!/usr/bin/env bash
# gpu-prepare.sh PACK_SH [OUT_DIR] - run here, from the repository root, before a GPU check:
# configures and builds the CUDA build (MC_GPU_BUILD, default build-cuda; -DMC_CUDA=ON, sm_90), then
# packs what the GPU machine needs into OUT_DIR (default: $MC_GPU_BUILD/gpu, inside the ignored build
# folder) with the given pack script, called as `PACK_SH OUT_DIR FILE...`: the op tests, the NCCL
# round trip (test_comm_nccl), moecluster and compare_logits (the golden comparison) under
# OUT_DIR/files, the runtime libraries the machine lacks, and qwen3-moe-tiny as Q8_0 / Q4_K / Q6_K
# GGUFs under OUT_DIR/gguf.
# Then send OUT_DIR along with the tree and run there:  scripts/gpu-check.sh OUT_DIR   (docs/gpu.md)
set -euo pipefail
pack=${1:?usage: scripts/gpu-prepare.sh PACK_SH [OUT_DIR]}
build=${MC_GPU_BUILD:-build-cuda}
out=${2:-$build/gpu}
[ -x "$pack" ] || { echo "gpu-prepare: $pack is not an executable pack script" >&2; exit 2; }
if [ ! -f CMakeLists.txt ] || [ ! -d kernels/cuda ]; then
    echo "gpu-prepare: run from the repository root" >&2; exit 2
fi
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMC_CUDA=ON -DMC_FUZZ=OFF >/dev/null
cmake --build "$build" --target moecluster test_backend_cuda test_backend_cuda_layers test_comm_nccl \
    compare_logits -j"${MC_GPU_JOBS:-2}"
rm -rf "$out"
"$pack" "$out" "$build/tests/unit/test_backend_cuda" "$build/tests/unit/test_backend_cuda_layers" \
    "$build/tests/unit/test_comm_nccl" "$build/coordinator/moecluster" "$build/tests/golden/compare_logits"
# the binaries without their host debug information, gzipped (gpu-check.sh unpacks them): each
# holds the kernels' device code (~17 MB); as built they would not fit in the 64 MiB sent
for f in "$out"/files/*; do
    strip --strip-debug "$f" && gzip -6 -f "$f"
done
# qwen3-moe-tiny as llama.cpp's block formats (gpu-check compares --device cuda with the CPU on
# them): written here, where the gguf package is (scripts/setup.sh installs it)
mkdir -p "$out/gguf"
for t in q8_0 q4_k q5_k q6_k; do
    if ! python3 tests/fixtures/gguf/st_to_gguf.py tests/fixtures/models/qwen3-moe-tiny \
        "$out/gguf/qwen3-moe-tiny-$t.gguf" --type "$t" >/dev/null 2>"$out/gguf/$t.err"; then
        echo "gpu-prepare: no $t GGUF (gpu-check skips it): $(tail -1 "$out/gguf/$t.err")" >&2
        rm -f "$out/gguf/qwen3-moe-tiny-$t.gguf"
    fi
    rm -f "$out/gguf/$t.err"
done
size=$(du -sm "$out" | cut -f1)
echo "gpu-prepare: $out holds ${size} MiB (the tree sent must stay under 64 MiB): $(cd "$out/files" && echo *) $(cd "$out/gguf" && echo *)"
[ "$size" -lt 60 ] || { echo "gpu-prepare: $out is too large to send" >&2; exit 1; }
