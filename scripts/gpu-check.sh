#!/usr/bin/env bash
# gpu-check.sh [RUNTIME_DIR] - run on the GPU machine from the repository root, in one go (within
# MC_GPU_BUDGET_S, default 450 s: every part gets its own timeout, cut to what is left of the budget):
#   1. the CUDA op tests (test_backend_cuda; test_backend_cuda_layers: paged KV cache, MoE and
#      DeepSeek-V4 ops),
#      every implemented CUDA op against the CPU op;
#   2. every golden fixture (tests/fixtures/models/*; deepseek-v4-tiny's V4 ops on the device's
#      kernels, and once more on the host through copies, MC_CUDA_V4=host, for comparison) through
#      `moecluster score --device cuda`, full and with
#      --decode-from, compared with compare_logits at the CPU's bar (1e-4 relative, 0.99 argmax) on
#      the f32-accumulating path (--max-batch-tokens 8: every product is the GEMV kernel); the default
#      step budget (cuBLAS BF16 for > 8 rows, activations rounded to BF16) is reported beside it, not
#      judged; the decode runs once more with MC_STEP_GRAPHS=1 (CUDA graphs) at the same bar
#      (and whether its bits are the f32 path's); qwen3-moe-tiny once more under mpirun -np 2 --ep 2 (the ep exchange on the data
#      plane the ranks choose: nccl with a GPU each, staged through host memory when they share one);
#      and its Q8_0 / Q4_K / Q5_K / Q6_K GGUFs (RUNTIME_DIR/gguf, written by gpu-prepare.sh) on the GPU
#      against the same file on the CPU at 1e-4, full, decode, and decode as graphs;
#   3. the NCCL transport's round trip (test_comm_nccl: one rank; under mpirun -np 2 with two GPUs,
#      or, with one, the refusal of two ranks on one GPU);
#   4. `moecluster bench --device cuda` on checkpoints made here by `moecluster synth`: the
#      Qwen3-30B-A3B shape in BF16 (4 layers, ~6 GB, MC_GPU_SYNTH_DIR, default /tmp/mc-qwen3-4l) and
#      a DeepSeek-V3 shape in FP8 (2 layers, 64 experts, ~7 GB, MC_GPU_SYNTH_V3_DIR, default
#      /tmp/mc-dsv3-2l): decode tok/s at batch 1, 8, 64 and 256 after a 2048-token prefill, GB/s
#      against the device read probe of the same run, prefill tok/s and GFLOP/s against a cuBLAS
#      BF16 product timed in the same run, batch 64 over batch 1 (and Qwen3 batch 1 with
#      MC_CUDA_EXPERTS=loop, with MC_CUDA_SYNC_CHECKS=1, and with MC_STEP_GRAPHS=1);
#   5. the matmul benchmark (test_backend_cuda --bench);
#   6. the op tests under compute-sanitizer memcheck (MC_GPU_SANITIZE=0 skips it);
# then prints one table. Binaries come from RUNTIME_DIR/files (scripts/gpu-prepare.sh packs them),
# else from MC_GPU_BUILD (default build-cuda). Logs go to MC_GPU_LOGS (default: $OUT/gpu-check when
# OUT is set, else $MC_GPU_BUILD/gpu-check-logs). Without a GPU every GPU part reports "skipped".
# Exit status: 0 unless a part failed (skipped parts are no failure).
set -uo pipefail
rt=${1:-${MC_GPU_RUNTIME:-}}
build=${MC_GPU_BUILD:-build-cuda}
logs=${MC_GPU_LOGS:-${OUT:+$OUT/gpu-check}}
logs=${logs:-$build/gpu-check-logs}
budget=${MC_GPU_BUDGET_S:-450}
mkdir -p "$logs"
if [ ! -d tests/fixtures/models ]; then echo "gpu-check: run from the repository root" >&2; exit 2; fi
if [ -n "$rt" ]; then
    [ -f "$rt/unpack.sh" ] || { echo "gpu-check: $rt/unpack.sh not found" >&2; exit 2; }
    # shellcheck disable=SC1091
    . "$rt/unpack.sh" >"$logs/unpack.log" 2>&1 || { cat "$logs/unpack.log"; exit 2; }
fi
export LD_LIBRARY_PATH=/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
start=$SECONDS

# gpu-prepare.sh sends the binaries stripped and gzipped (the tree sent must stay under 64 MiB)
if [ -n "$rt" ] && compgen -G "$rt/files/*.gz" >/dev/null; then
    gunzip -f "$rt"/files/*.gz || echo "gpu-check: could not unpack $rt/files/*.gz" >&2
fi
# find NAME SUBDIR: the packed binary, else the build's
find_bin() {
    local d
    for d in ${rt:+"$rt/files"} "$build/$2"; do
        if [ -x "$d/$1" ]; then echo "$d/$1"; return 0; fi
    done
    return 1
}
opbin=$(find_bin test_backend_cuda tests/unit)
lbin=$(find_bin test_backend_cuda_layers tests/unit)
ncbin=$(find_bin test_comm_nccl tests/unit)
mc=$(find_bin moecluster coordinator)
cmp=$(find_bin compare_logits tests/golden)

rows=()   # table rows
failed=0
# row CHECK RESULT STATUS SECONDS
row() { rows+=("| $1 | $2 | $3 | $4 |"); [ "$3" = FAIL ] && failed=1; return 0; }
# limit WANT: WANT seconds, cut to what is left of the budget (0: nothing left)
limit() {
    local left=$((budget - (SECONDS - start) - 5))
    [ "$left" -lt 10 ] && { echo 0; return; }
    [ "$1" -lt "$left" ] && echo "$1" || echo "$left"
}

card=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -1)
ngpu=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU ' || true)
echo "gpu-check: $(date -u '+%Y-%m-%d %H:%M UTC'), card: ${card:-none visible (no nvidia-smi or no GPU)}, GPUs: ${ngpu}"
mpirun_=$(command -v mpirun || true)
mpi_root=()
[ "$(id -u)" = 0 ] && mpi_root=(--allow-run-as-root)

# ---- 1. op tests (exit 77: skipped) ----
# op_test NAME BIN LOG SUMMARY_RE WANT_S
op_rc=skip
op_test() {
    local name=$1 bin=$2 log=$3 re=$4 t rc line
    if [ -z "$bin" ]; then row "$name" "binary not found (run scripts/gpu-prepare.sh)" FAIL ""; return 1; fi
    t=$(limit "$5"); [ "$t" = 0 ] && { row "$name" "skipped (time budget)" skipped ""; return 1; }
    local t0=$SECONDS
    timeout "$t" "$bin" >"$log" 2>&1; rc=$?
    line=$(grep -E "$re" "$log" | tail -1)
    case $rc in
    0) row "$name" "${line:-passed}" ok $((SECONDS - t0)) ;;
    77) row "$name" "$(grep -m1 skipped "$log")" skipped $((SECONDS - t0)) ;;
    124) row "$name" "timed out after $t s" FAIL $((SECONDS - t0)) ;;
    *) row "$name" "${line:-exit $rc} (see $log)" FAIL $((SECONDS - t0)) ;;
    esac
    return "$rc"
}
op_test "CUDA op tests vs CPU" "$opbin" "$logs/test.log" "test_backend_cuda: (all|[0-9]+ of)" 150
op_rc=$?
op_test "CUDA attention / MoE op tests vs CPU" "$lbin" "$logs/layers.log" \
    "test_backend_cuda_layers: (all|[0-9]+ of)" 150
layers_rc=$?

# ---- 2. golden fixtures through the GPU path ----
# whether this moecluster can use a GPU here at all ("no CUDA device visible", "built without CUDA")
gpu_why=
if [ -z "$mc" ] || [ -z "$cmp" ]; then
    gpu_why="moecluster or compare_logits not found (run scripts/gpu-prepare.sh)"
else
    probe=$("$mc" bench --device cuda --model /nonexistent-model 2>&1 | head -1)
    case $probe in *"--device cuda:"*) gpu_why=${probe#*--device cuda: } ;; esac
fi
# half_of MODEL_DIR: half the positions of its golden input (where --decode-from starts)
half_of() {
    python3 -c "import json,struct,sys; f=open(sys.argv[1],'rb'); n=struct.unpack('<Q',f.read(8))[0]; print(json.loads(f.read(n))['input_ids']['shape'][1]//2)" "$1/golden.safetensors" 2>/dev/null || echo 16
}
# golden NAME MODEL_DIR OUT PREFIX... -- SCORE_ARGS: runs and compares; prints "ok|FAIL rel"
max_rel() { awk '/rel err/ { v = $5 + 0; if (v > m) m = v } END { printf "%.2e", m }' "$1"; }
gpu_st=skipped
[ -n "$gpu_why" ] && [ "$ngpu" -gt 0 ] && gpu_st=FAIL # a GPU is there, moecluster cannot use it
if [ -n "$gpu_why" ]; then
    row "golden fixtures, --device cuda" "$gpu_st: $gpu_why" "$gpu_st" ""
else
    gout=$logs/golden; mkdir -p "$gout"
    for dir in tests/fixtures/models/*/; do
        model=$(basename "$dir")
        half=$(half_of "$dir")
        for mode in full decode; do
            extra=(); [ "$mode" = decode ] && extra=(--decode-from "$half")
            res=() t0=$SECONDS st=ok
            for budget_tok in 8 default; do
                bt=(); [ "$budget_tok" = 8 ] && bt=(--max-batch-tokens 8)
                t=$(limit 40); [ "$t" = 0 ] && { [ "$st" = ok ] && st=skipped; res+=("skipped (time budget)"); break; }
                o=$gout/$model.$mode.$budget_tok.safetensors l=$gout/$model.$mode.$budget_tok.log
                if timeout "$t" "$mc" score --device cuda --model "$dir" --input "$dir/golden.safetensors" \
                    --output "$o" "${extra[@]}" "${bt[@]}" >"$l" 2>&1; then
                    "$cmp" "$o" "$dir/golden.safetensors" 1e-4 0.99 >>"$l" 2>&1; crc=$?
                    if [ "$budget_tok" = 8 ]; then
                        res+=("f32 path rel $(max_rel "$l") $([ $crc = 0 ] && echo ok || echo over 1e-4)")
                        [ $crc = 0 ] || st=FAIL
                    else
                        res+=("default (cuBLAS BF16) rel $(max_rel "$l")")
                    fi
                else
                    res+=("$budget_tok: score failed: $(grep -m1 'moecluster score' "$l" | cut -c1-120)")
                    st=FAIL
                fi
            done
            # the decode steps as CUDA graphs (MC_STEP_GRAPHS=1; steps padded to their graph's
            # batch size, a shape that cannot be captured op by op): at the golden bar, and
            # whether the bits are the f32 path's
            o8=$gout/$model.$mode.8.safetensors
            if [ "$mode" = decode ] && [ -f "$o8" ] && t=$(limit 40) && [ "$t" != 0 ]; then
                o=$gout/$model.$mode.graphs.safetensors l=$gout/$model.$mode.graphs.log
                if MC_STEP_GRAPHS=1 timeout "$t" "$mc" score --device cuda --model "$dir" \
                    --input "$dir/golden.safetensors" --output "$o" "${extra[@]}" \
                    --max-batch-tokens 8 >"$l" 2>&1 &&
                    "$cmp" "$o" "$dir/golden.safetensors" 1e-4 0.99 >>"$l" 2>&1; then
                    same=$(cmp -s "$o8" "$o" && echo "same bits" || echo "other bits")
                    res+=("graphs rel $(max_rel "$l") ok, $same ($(grep -m1 -o 'step graphs: [^,]*, [^,]*' "$l"))")
                else
                    res+=("graphs: over 1e-4 or failed (see $l)")
                    st=FAIL
                fi
            fi
            # DeepSeek-V4's ops: the device kernels (the default) against the front end's host
            # round trip (MC_CUDA_V4=host, the CPU ops on copies), both at the golden bar
            if [ "${model#deepseek-v4}" != "$model" ] && [ -f "$o8" ] && t=$(limit 40) && [ "$t" != 0 ]; then
                o=$gout/$model.$mode.v4host.safetensors l=$gout/$model.$mode.v4host.log
                if MC_CUDA_V4=host timeout "$t" "$mc" score --device cuda --model "$dir" \
                    --input "$dir/golden.safetensors" --output "$o" "${extra[@]}" \
                    --max-batch-tokens 8 >"$l" 2>&1 &&
                    "$cmp" "$o" "$dir/golden.safetensors" 1e-4 0.99 >>"$l" 2>&1; then
                    same=$(cmp -s "$o8" "$o" && echo "same bits" || echo "other bits")
                    res+=("V4 ops on the host rel $(max_rel "$l") ok, $same as the device kernels")
                else
                    res+=("V4 ops on the host: over 1e-4 or failed (see $l)")
                    st=FAIL
                fi
            fi
            row "golden $model $mode" "$(printf '%s; ' "${res[@]}" | sed 's/; $//')" "$st" $((SECONDS - t0))
        done
    done
    # the ep exchange: two ranks on the GPU(s), each rank's experts on its device; with a GPU
    # each the data plane is NCCL (device addresses, no host copies), with one GPU it is staged
    t=$(limit 60)
    dir=tests/fixtures/models/qwen3-moe-tiny
    if [ -z "$mpirun_" ]; then row "golden qwen3-moe-tiny, mpirun -np 2 --ep 2" "skipped: no mpirun" skipped ""
    elif [ "$t" = 0 ]; then row "golden qwen3-moe-tiny, mpirun -np 2 --ep 2" "skipped (time budget)" skipped ""
    else
        t0=$SECONDS l=$gout/ep2.log o=$gout/ep2.safetensors
        if timeout "$t" "$mpirun_" "${mpi_root[@]}" -np 2 "$mc" score --device cuda --ep 2 --max-batch-tokens 8 \
            --model "$dir" --input "$dir/golden.safetensors" --output "$o" >"$l" 2>&1 &&
            "$cmp" "$o" "$dir/golden.safetensors" 1e-4 0.99 >>"$l" 2>&1; then
            plane=$(grep -o -m1 'data plane: [a-z]*' "$l" | cut -d' ' -f3)
            row "golden qwen3-moe-tiny, mpirun -np 2 --ep 2 (${plane:-?})" "f32 path rel $(max_rel "$l") ok" ok $((SECONDS - t0))
        else
            plane=$(grep -o -m1 'data plane: [a-z]*' "$l" | cut -d' ' -f3)
            row "golden qwen3-moe-tiny, mpirun -np 2 --ep 2 (${plane:-?})" "failed (see $l): $(grep -m1 -E 'moecluster|FAIL|rel err' "$l" | cut -c1-120)" FAIL $((SECONDS - t0))
        fi
    fi
    # llama.cpp's block formats: GGUFs of qwen3-moe-tiny written by gpu-prepare.sh (Q8_0, Q4_K
    # with Q8_0 downs, Q5_K, Q6_K) on --device cuda against the same file on this machine's CPU
    # (the experts' grouped launch for block formats; the decode also as graphs, which now
    # capture); Q5_K against the CPU acting as a device, which converts it to the same Q8_0
    # blocks as a GPU session does (the CPU proper reads Q5_K itself)
    dir=tests/fixtures/models/qwen3-moe-tiny
    ggufs=(); [ -n "$rt" ] && [ -d "$rt/gguf" ] && ggufs=("$rt"/gguf/*.gguf)
    if [ ${#ggufs[@]} = 0 ] || [ ! -f "${ggufs[0]}" ]; then
        row "GGUF block formats, --device cuda" "skipped: no GGUFs in RUNTIME_DIR/gguf (gpu-prepare.sh writes them with the gguf package)" skipped ""
    elif [ $((budget - (SECONDS - start))) -lt 300 ]; then # the benchmarks below need ~250 s
        row "GGUF block formats, --device cuda" "skipped (time budget: kept for the benchmarks)" skipped ""
        ggufs=()
    fi
    half=$(half_of "$dir")
    for f in "${ggufs[@]}"; do
        [ -f "$f" ] || continue
        name=$(basename "$f" .gguf) t0=$SECONDS st=ok res=()
        renv=(); case "$name" in *q5_k*) renv=(MC_CPU_AS_DEVICE=1) ;; esac
        for mode in full decode graphs; do
            t=$(limit 40); [ "$t" = 0 ] && { res+=("$mode: skipped (time budget)"); [ "$st" = ok ] && st=skipped; break; }
            extra=(); [ "$mode" != full ] && extra=(--decode-from "$half")
            env_=(); [ "$mode" = graphs ] && env_=(MC_STEP_GRAPHS=1)
            ref=$gout/gguf.$name.$mode.cpu.safetensors o=$gout/gguf.$name.$mode.cuda.safetensors
            l=$gout/gguf.$name.$mode.log
            if env "${renv[@]}" timeout "$t" "$mc" score --device cpu --model "$f" \
                --input "$dir/golden.safetensors" --output "$ref" "${extra[@]}" >"$l" 2>&1 &&
                env "${env_[@]}" timeout "$t" "$mc" score --device cuda --model "$f" \
                    --input "$dir/golden.safetensors" --output "$o" "${extra[@]}" >>"$l" 2>&1 &&
                "$cmp" "$o" "$ref" 1e-4 0.99 >>"$l" 2>&1; then
                g=$([ "$mode" = graphs ] && echo " ($(grep -m1 -o 'step graphs: [^,]*, [^,]*' "$l"))")
                res+=("$mode rel $(max_rel "$l") ok$g")
            else
                res+=("$mode: over 1e-4 or failed (see $l)")
                st=FAIL
            fi
        done
        row "GGUF $name, --device cuda vs cpu" "$(printf '%s; ' "${res[@]}" | sed 's/; $//')" "$st" $((SECONDS - t0))
    done
fi

# ---- 3. NCCL ----
if [ -z "$ncbin" ]; then
    row "NCCL round trip, 1 rank" "test_comm_nccl not found (run scripts/gpu-prepare.sh)" FAIL ""
else
    op_test "NCCL round trip, 1 rank" "$ncbin" "$logs/nccl.log" "checks, [0-9]+ failures" 60
    nc1=$?
    t=$(limit 60)
    if [ "$nc1" != 0 ]; then row "NCCL, mpirun -np 2" "skipped: the one-rank test did not run or pass" skipped ""
    elif [ -z "$mpirun_" ]; then row "NCCL, mpirun -np 2" "skipped: no mpirun" skipped ""
    elif [ "$t" = 0 ]; then row "NCCL, mpirun -np 2" "skipped (time budget)" skipped ""
    else
        t0=$SECONDS
        what="two GPUs: round trip"; [ "$ngpu" -lt 2 ] && what="one GPU: two ranks must be refused"
        if timeout "$t" "$mpirun_" "${mpi_root[@]}" -np 2 "$ncbin" >"$logs/nccl-np2.log" 2>&1; then
            row "NCCL, mpirun -np 2 ($what)" "$(grep -E 'refused as expected|rank 0: [0-9]+ checks' "$logs/nccl-np2.log" | head -1 | cut -c1-160)" ok $((SECONDS - t0))
        else
            row "NCCL, mpirun -np 2 ($what)" "failed (see $logs/nccl-np2.log)" FAIL $((SECONDS - t0))
        fi
    fi
fi

# ---- 4. bench on synthetic checkpoints at real width ----
# bench_rows LOG NAME: table rows from one `bench --json`: a decode row per batch size, batch 64
# over batch 1, prefill against the cuBLAS BF16 rate of the same run
bench_rows() {
    python3 - "$1" "$2" <<'EOF' 2>/dev/null || echo "| $2 | unreadable bench output (see $1) | FAIL | |"
import json, sys
j = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
name = sys.argv[2]
probe = j["probe_gbps"]
for d in j["decode"]:
    extra = ""
    if d["batch"] == 1:
        extra = "; %.2f of the read probe (%.0f GB/s; target 0.70)" % (d["achieved_gbps"] / probe, probe)
    print("| %s decode batch %d | %.1f tok/s, %.1f MB of weights a token, %.0f GB/s%s | ok | |"
          % (name, d["batch"], d["decode_tok_s"], d["bytes_per_token"] / 1e6, d["achieved_gbps"], extra))
by = {d["batch"]: d["decode_tok_s"] for d in j["decode"]}
if 1 in by and 64 in by:
    print("| %s batch 64 / batch 1 | %.1fx (target 20x) | ok | |" % (name, by[64] / by[1]))
pk = j.get("bf16_peak_gflops")
print("| %s prefill %d tokens | %.0f tok/s, %.0f GFLOP/s in matrix products = %s of a cuBLAS BF16 "
      "4096^3 product (%s GFLOP/s; target 0.60 for the expert products) | ok | |"
      % (name, j["prompt_len"], j["prefill_tok_s"], j["prefill_gflops"],
         "%.2f" % (j["prefill_gflops"] / pk) if pk else "n/a", "%.0f" % pk if pk else "n/a"))
EOF
}
# bench_model NAME DIR CONFIG SYNTH_FLAGS...: synth into DIR (once) and bench --batch 1,8,64,256
# --prompt-len 2048 on the GPU; a row per figure. Status 1 when the model is not there.
bench_model() {
    local name=$1 dir=$2 cfg=$3 t t0 l tag
    shift 3
    tag=$(basename "$dir")
    t=$(limit 120) t0=$SECONDS
    if [ "$t" = 0 ]; then row "synth $name" "skipped (time budget)" skipped ""; return 1; fi
    if [ -f "$dir/config.json" ] ||
        timeout "$t" "$mc" synth --config "$cfg" --out "$dir" "$@" >"$logs/synth-$tag.log" 2>&1; then
        row "synth $name" "$(du -sh "$dir" | cut -f1) in $dir" ok $((SECONDS - t0))
    else
        row "synth $name" "failed or timed out (see $logs/synth-$tag.log)" FAIL $((SECONDS - t0))
        rm -rf "$dir"
        return 1
    fi
    t=$(limit 150); [ "$t" = 0 ] && { row "bench $name" "skipped (time budget)" skipped ""; return 0; }
    t0=$SECONDS l=$logs/bench-$tag.json
    if timeout "$t" "$mc" bench --device cuda --model "$dir" --batch 1,8,64,256 --prompt-len 2048 \
        --gen-len 16 --repeat 2 --probe-mib 4096 --json >"$l" 2>"${l%.json}.err"; then
        row "bench $name, --device cuda" "loaded in $(python3 -c 'import json,sys; print("%.1f s" % json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])["load_s"])' "$l" 2>/dev/null); figures below" ok $((SECONDS - t0))
        while IFS= read -r r; do rows+=("$r"); done < <(bench_rows "$l" "$name")
    else
        row "bench $name, --device cuda" "failed: $(head -c 160 "${l%.json}.err")" FAIL $((SECONDS - t0))
    fi
    return 0
}
q3=${MC_GPU_SYNTH_DIR:-/tmp/mc-qwen3-4l}
v3=${MC_GPU_SYNTH_V3_DIR:-/tmp/mc-dsv3-2l}
if [ -n "$gpu_why" ]; then
    row "bench Qwen3-30B-A3B (BF16) and DeepSeek-V3 (FP8) shapes, --device cuda" "$gpu_st: $gpu_why" "$gpu_st" ""
else
    # the issue's two shapes: Qwen3-30B-A3B in BF16 (4 layers, ~6 GB) and DeepSeek-V3 in FP8 (2
    # layers, one dense and one MoE, 64 experts instead of 256: a ~7 GB file in which a token
    # reads what it reads in the real model; bench/deepseek-v3-bench.config.json)
    if bench_model "Qwen3-30B-A3B x 4 layers BF16" "$q3" bench/qwen3-30b-a3b.config.json --layers 4; then
        # batch 1 again with the experts' per-expert loop forced (MC_CUDA_EXPERTS=loop), the
        # grouped launch's alternative, and with every content check waiting at its op
        # (MC_CUDA_SYNC_CHECKS=1: one stream synchronization per rope / paged / MoE op), what
        # the deferred checks save; and the decode steps as CUDA graphs (MC_STEP_GRAPHS=1)
        for v in MC_CUDA_EXPERTS=loop MC_CUDA_SYNC_CHECKS=1 MC_STEP_GRAPHS=1; do
            t=$(limit 60) t0=$SECONDS l=$logs/bench-b1-${v%%=*}.json
            if [ "$t" = 0 ]; then row "bench Qwen3 batch 1, $v" "skipped (time budget)" skipped ""
            elif env "$v" timeout "$t" "$mc" bench --device cuda --model "$q3" --batch 1 \
                --prompt-len 128 --gen-len 32 --repeat 2 --probe-mib 4096 --json >"$l" 2>"${l%.json}.err"; then
                row "bench Qwen3 batch 1, $v" "$(python3 -c 'import json,sys; j=json.loads(open(sys.argv[1]).read().strip().splitlines()[-1]); print("%.1f tok/s, %.0f GB/s = %.2f of the read probe" % (j["decode_tok_s"], j["achieved_gbps"], j["achieved_gbps"] / j["probe_gbps"]))' "$l" 2>/dev/null)$(grep -m1 -o 'step graphs: [^,]*, [^,]*, [0-9]* shapes' "${l%.json}.err" | sed 's/^/; /')" ok $((SECONDS - t0))
            else
                row "bench Qwen3 batch 1, $v" "failed: $(head -c 160 "${l%.json}.err")" FAIL $((SECONDS - t0))
            fi
        done
    fi
    bench_model "DeepSeek-V3 x 2 layers FP8" "$v3" bench/deepseek-v3-bench.config.json --layers 2 --weights fp8
fi

# ---- 5. matmul benchmark ----
bench_rc=skip
if [ "$op_rc" = 0 ]; then
    t=$(limit 90)
    if [ "$t" = 0 ]; then row "matmul benchmark" "skipped (time budget)" skipped ""
    else
        t0=$SECONDS
        timeout "$t" "$opbin" --bench >"$logs/bench.log" 2>&1; bench_rc=$?
        if [ "$bench_rc" = 0 ]; then row "matmul benchmark" "see below" ok $((SECONDS - t0))
        else row "matmul benchmark" "exit $bench_rc (see $logs/bench.log)" FAIL $((SECONDS - t0)); fi
    fi
else
    row "matmul benchmark" "skipped: the op tests did not run or pass" skipped ""
fi

# ---- 6. compute-sanitizer (last: the slowest, and the budget may be spent) ----
sanitizer=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null || true)
if [ "${MC_GPU_SANITIZE:-1}" = 0 ]; then
    row "compute-sanitizer memcheck" "skipped (MC_GPU_SANITIZE=0)" skipped ""
elif [ -z "$sanitizer" ]; then
    row "compute-sanitizer memcheck" "skipped: compute-sanitizer not found" skipped ""
elif [ "$op_rc" != 0 ]; then
    row "compute-sanitizer memcheck" "skipped: the op tests did not run or pass" skipped ""
else
    for pair in "op tests:$opbin:sanitizer.log" "attention / MoE tests:$lbin:sanitizer-layers.log"; do
        IFS=: read -r what bin log <<<"$pair"
        [ "$what" = "attention / MoE tests" ] && [ "$layers_rc" != 0 ] && continue
        t=$(limit 120); [ "$t" = 0 ] && { row "memcheck: $what" "skipped (time budget)" skipped ""; continue; }
        t0=$SECONDS
        timeout "$t" "$sanitizer" --tool memcheck --error-exitcode 3 "$bin" >"$logs/$log" 2>&1; rc=$?
        line=$(grep -E "ERROR SUMMARY" "$logs/$log" | tail -1)
        case $rc in
        0) row "memcheck: $what" "${line:-clean}" ok $((SECONDS - t0)) ;;
        124) row "memcheck: $what" "timed out after $t s" FAIL $((SECONDS - t0)) ;;
        *) row "memcheck: $what" "${line:-exit $rc} (see $logs/$log)" FAIL $((SECONDS - t0)) ;;
        esac
    done
fi

echo
echo "| check | result | status | seconds |"
echo "| --- | --- | --- | --- |"
printf '%s\n' "${rows[@]}"
if [ "$bench_rc" = 0 ]; then echo; grep -E "^(device:|\|)" "$logs/bench.log"; fi
for f in test layers; do
    if [ -f "$logs/$f.log" ] && grep -q FAIL "$logs/$f.log"; then
        echo; echo "first failures (of $logs/$f.log):"; grep -v "^device" "$logs/$f.log" | head -30
    fi
done
echo
echo "gpu-check: $((SECONDS - start)) s of a $budget s budget; logs in $logs"
exit "$failed"
