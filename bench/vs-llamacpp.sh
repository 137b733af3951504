#!/usr/bin/env bash
# vs-llamacpp.sh - moecluster against llama.cpp on the very same GGUF files,
# on this machine's CPU (issue 13 item 6). A benchmark, not a test.
#
# 1. llama.cpp's source: PyPI's llama-cpp-python sdist (pip download
#    --no-binary :all: --no-deps), unpacked in the cache folder; llama-bench
#    and llama-quantize built with CMake (Release, CPU only, -march=native,
#    static). On a CPU with AMX a second build carries a compiler barrier
#    before ggml's `_tile_loadconfig` (GCC 12 drops the stores to the tile
#    configuration, and the AMX build dies with SIGILL); every build is
#    tried on the first model and the ones that work are all measured.
# 2. The model: `moecluster synth` of Qwen3-30B-A3B's shape
#    (bench/qwen3-30b-a3b.config.json) cut to --layers layers, written as a
#    BF16 GGUF by the `gguf` PyPI package (the converter below: streamed,
#    one tensor in memory at a time), then quantized by llama-quantize.
#    llama.cpp's own convert_hf_to_gguf.py needs torch and a tokenizer, which
#    a synth checkpoint lacks, so it is not used.
# 3. Per format (only that format's file is on disk and in the page cache,
#    plus the BF16 source while quantized files are made from it): --rounds
#    rounds, each llama-bench (every working build) then `moecluster bench`
#    at 64 and at 512 prompt tokens; `moecluster bench` probes the read
#    bandwidth before and after its measurements in the same process, so a
#    probe runs between every two llama.cpp runs. Both engines read the file
#    into their own memory (llama-bench --load-mode none, bench --no-mmap).
#    BF16 is measured twice on our side: activations exact in f32 (our
#    default) and rounded to bf16 (--activations bf16, as llama.cpp computes
#    BF16 layers).
# 4. One table: decode tok/s (32 tokens after the prompt), prefill tok/s at
#    64 and 512 tokens for both engines, our weight GB/s in decode and its
#    fraction of the probe (the best pass; "paired": of the short probes
#    run beside each decode repetition, bench's bandwidth_ratio_paired),
#    our ratio to llama.cpp per cell; with --depth D also decode after a
#    D-token context (llama-bench -p 0 -n 32 -d D; bench --prompt-len D),
#    where attention over the KV cache weighs. Each engine's
#    figure in a round is the fastest of its --reps repetitions (llama-bench
#    samples_ts, bench --repeat); the table gives the median over rounds.
#
# usage: bench/vs-llamacpp.sh [--threads T] [--layers L] [--formats LIST]
#            [--rounds R] [--reps N] [--quick] [--build DIR] [--work DIR]
#            [--depth D] [--llama-version V] [--keep]
#   --threads  threads for both engines (default: all CPUs)
#   --layers   layers of the synth model (default 4; each is 1.2 GB in BF16)
#   --formats  comma list of q4_k_m, q5_k_m, q8_0, bf16 (default q4_k_m,q8_0,bf16)
#   --rounds   rounds per format (default 3)
#   --reps     repetitions inside each run (default 3)
#   --quick    smoke run: 1 layer, 1 round, 1 repetition
#   --depth    also time decode after a D-token context (default 0: not)
#   --build    moecluster's CMake build folder (default build)
#   --work     model files (default ${TMPDIR:-/tmp}/moecluster-vs-llamacpp);
#              emptied at the end unless --keep
#   --llama-version  llama-cpp-python version whose llama.cpp is built
#              (default 0.3.36: llama.cpp 0c1e570)
# Cache (sdist, source, builds): ${MC_BENCH_CACHE:-$HOME/.cache/moecluster-bench}.
# Needs: python3 with numpy and gguf, pip, cmake, a C++ compiler.
set -euo pipefail

threads=$(nproc)
layers=4
formats=q4_k_m,q8_0,bf16
rounds=3
reps=3
build=build
work=${TMPDIR:-/tmp}/moecluster-vs-llamacpp
version=0.3.36
keep=0
depth=0
usage() { sed -n '/^# usage:/,/^# Needs:/p' "$0" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
    case "$1" in
    --threads) threads=$2; shift 2 ;;
    --layers) layers=$2; shift 2 ;;
    --formats) formats=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    --reps) reps=$2; shift 2 ;;
    --quick) layers=1; rounds=1; reps=1; shift ;;
    --build) build=$2; shift 2 ;;
    --work) work=$2; shift 2 ;;
    --depth) depth=$2; shift 2 ;;
    --llama-version) version=$2; shift 2 ;;
    --keep) keep=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) echo "vs-llamacpp.sh: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
    esac
done
for v in threads layers rounds reps; do
    case "${!v}" in
    '' | *[!0-9]* | 0*) echo "vs-llamacpp.sh: --$v must be a positive integer, not '${!v}'" >&2; exit 2 ;;
    esac
done
case "$depth" in
'' | *[!0-9]* | 0?*) echo "vs-llamacpp.sh: --depth must be 0 or a positive integer, not '$depth'" >&2; exit 2 ;;
esac
case "$version" in
'' | *[!0-9.]*) echo "vs-llamacpp.sh: --llama-version '$version' is not a version number" >&2; exit 2 ;;
esac
IFS=, read -r -a fmts <<<"$formats"
for f in "${fmts[@]}"; do
    case "$f" in q4_k_m | q5_k_m | q8_0 | bf16) ;; *)
        echo "vs-llamacpp.sh: --formats: '$f' is not q4_k_m, q5_k_m, q8_0 or bf16" >&2; exit 2 ;;
    esac
done

root=$(cd "$(dirname "$0")/.." && pwd)
exe=$build/coordinator/moecluster
[ -x "$exe" ] || exe=$root/$build/coordinator/moecluster
[ -x "$exe" ] || { echo "vs-llamacpp.sh: no moecluster in $build (build it first, or --build DIR)" >&2; exit 1; }
python3 -c 'import numpy, gguf' 2>/dev/null ||
    { echo "vs-llamacpp.sh: python3 needs numpy and the gguf package (pip install gguf)" >&2; exit 1; }
cache=${MC_BENCH_CACHE:-$HOME/.cache/moecluster-bench}
mkdir -p "$cache" "$work"
log=$work/log
mkdir -p "$log"
say() { echo "== $*" >&2; }

# --- 1. llama.cpp --------------------------------------------------------
tarball=$cache/llama_cpp_python-$version.tar.gz
if [ ! -f "$tarball" ]; then
    say "downloading llama-cpp-python $version (sdist) into $cache"
    python3 -m pip download --no-binary :all: --no-deps -d "$cache" "llama-cpp-python==$version" >"$log/pip.log" 2>&1 ||
        { tail -20 "$log/pip.log" >&2; echo "vs-llamacpp.sh: pip download failed" >&2; exit 1; }
fi
src=$cache/src-$version
top=$( (tar -tzf "$tarball" || true) | head -1 | cut -d/ -f1)
if [ ! -f "$src/vendor/llama.cpp/CMakeLists.txt" ]; then
    say "unpacking $tarball"
    rm -rf "$src" && mkdir -p "$src"
    tar -xzf "$tarball" -C "$src" --strip-components=1
fi
lsrc=$src/vendor/llama.cpp
commit=$(head -c 40 "$src/.git/modules/vendor/llama.cpp/HEAD" 2>/dev/null || true)
case "$commit" in [0-9a-f]*) commit=${commit:0:7} ;; *) commit=unknown ;; esac
mmq=ggml/src/ggml-cpu/amx/mmq.cpp
marker='moecluster bench: keep the stores to tc'
bdir=$cache/build-$version
native_flags=$(${CXX:-c++} -march=native -dM -E -x c++ /dev/null 2>/dev/null |
    grep -oE '__(AVX2|AVX512F|AVX512BW|AVX512VNNI|AVX512BF16|AVXVNNI|AMX_TILE|AMX_INT8|AMX_BF16|FMA|F16C)__' |
    sed 's/__//g' | sort | tr '\n' ' ')
has_amx=0
grep -qw amx_int8 /proc/cpuinfo && case "$native_flags" in *AMX_INT8*) has_amx=1 ;; esac

build_variant() { # NAME: llama-bench and llama-quantize into $cache/bin-$version-NAME
    local name=$1 out=$cache/bin-$version-$1
    [ -x "$out/llama-bench" ] && [ -x "$out/llama-quantize" ] && return 0
    # the one source tree holds the patch or not; its mtime tells make to rebuild mmq.cpp
    if [ "$name" = amxfix ]; then
        if ! grep -q "$marker" "$lsrc/$mmq"; then
            grep -q '^ *_tile_loadconfig(&tc);' "$lsrc/$mmq" || return 1
            sed -i "s|^\( *\)_tile_loadconfig(&tc);|\1__asm__ __volatile__(\"\" : : \"r\"(\&tc) : \"memory\"); /* $marker (GCC 12 drops them) */\n\1_tile_loadconfig(\&tc);|" "$lsrc/$mmq"
            grep -q "$marker" "$lsrc/$mmq" || return 1
        fi
    else
        if grep -q "$marker" "$lsrc/$mmq" 2>/dev/null; then
            tar -xzf "$tarball" -C "$src" --strip-components=1 "$top/vendor/llama.cpp/$mmq"
        fi
    fi
    touch "$lsrc/$mmq"
    say "building llama.cpp $commit ($name) in $bdir (several minutes)"
    cmake -S "$lsrc" -B "$bdir" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DGGML_CUDA=OFF \
        -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DBUILD_SHARED_LIBS=OFF -DLLAMA_BUILD_TESTS=OFF \
        -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF \
        >"$log/cmake-$name.log" 2>&1 || { tail -20 "$log/cmake-$name.log" >&2; return 1; }
    cmake --build "$bdir" --target llama-bench llama-quantize -j "$(nproc)" >"$log/build-$name.log" 2>&1 ||
        { tail -20 "$log/build-$name.log" >&2; return 1; }
    mkdir -p "$out"
    cp "$bdir/bin/llama-bench" "$bdir/bin/llama-quantize" "$out/"
}

variants=()
build_variant stock || { echo "vs-llamacpp.sh: llama.cpp did not build (logs in $log)" >&2; exit 1; }
variants+=(stock)
amx_note="no AMX on this CPU: one build"
if [ $has_amx = 1 ]; then
    if build_variant amxfix; then
        variants+=(amxfix)
        amx_note="AMX: also built with a compiler barrier before _tile_loadconfig (amxfix)"
    else
        amx_note="AMX: the compiler-barrier patch does not apply to this version; the AMX build is not used"
    fi
fi
say "llama.cpp $commit built with -march=native: $native_flags"
say "$amx_note"
bench_bin() { echo "$cache/bin-$version-$1/llama-bench"; }
quant_bin=$cache/bin-$version-stock/llama-quantize
load_flag=(--load-mode none)
bench_help=$("$(bench_bin stock)" --help 2>&1 || true)
case "$bench_help" in *--load-mode*) ;; *) load_flag=(--mmap 0) ;; esac

# --- 2. the model -------------------------------------------------------
# drops FILE from the page cache (its pages were read; it is not in use now)
uncache() { python3 -c 'import os, sys
for p in sys.argv[1:]:
    if os.path.exists(p):
        fd = os.open(p, os.O_RDONLY); os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED); os.close(fd)' "$@"; }

ckpt=$work/ckpt-$layers
bf16=$work/qwen3-30b-a3b-${layers}l-bf16.gguf
if [ ! -f "$bf16" ]; then
    say "synth: Qwen3-30B-A3B shape, $layers layers"
    rm -rf "$ckpt"
    "$exe" synth --config "$root/bench/qwen3-30b-a3b.config.json" --out "$ckpt" --layers "$layers" --seed 1 \
        >"$log/synth.log" 2>&1 || { tail -5 "$log/synth.log" >&2; exit 1; }
    say "BF16 GGUF with the gguf package"
    python3 - "$ckpt" "$bf16.part" <<'PY'
# Streams a Qwen3-MoE safetensors checkpoint into a GGUF (qwen3moe) with the
# gguf package's names and keys: experts stacked [E, out, in] one tensor at a
# time, matrices as stored, norms and the router in F32; no tokenizer
# ("none": vocab_size only).
import json, os, struct, sys
import numpy as np
import gguf

src, out = sys.argv[1], sys.argv[2]
cfg = json.load(open(os.path.join(src, "config.json")))
arch = gguf.MODEL_ARCH.QWEN3MOE
L, E = cfg["num_hidden_layers"], cfg["num_experts"]
names = gguf.get_tensor_name_map(arch, L)
DT = {"BF16": (np.uint16, gguf.GGMLQuantizationType.BF16),
      "F32": (np.float32, gguf.GGMLQuantizationType.F32),
      "F16": (np.float16, gguf.GGMLQuantizationType.F16)}
tensors = {}  # name -> (dtype, shape, file, offset)
for f in sorted(os.listdir(src)):
    if not (f.startswith("model") and f.endswith(".safetensors")):
        continue
    p = os.path.join(src, f)
    with open(p, "rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        head = json.loads(fh.read(n))
    for k, v in head.items():
        if k != "__metadata__":
            tensors[k] = (v["dtype"], v["shape"], p, 8 + n + v["data_offsets"][0])

def load(k):
    dt, shape, p, off = tensors[k]
    return np.memmap(p, dtype=DT[dt][0], mode="r", offset=off, shape=tuple(shape))

items = []  # (gguf name, dtype, shape, loader)
experts = {}
for k in tensors:
    if ".mlp.experts." in k:
        pre, rest = k.split(".mlp.experts.")
        e, w = rest.split(".", 1)
        experts.setdefault(f"{pre}.mlp.experts.{w}", {})[int(e)] = k
    else:
        items.append((k, tensors[k][0], tuple(tensors[k][1]), lambda k=k: load(k)))
for m, per in sorted(experts.items()):
    ks = [per[e] for e in range(E)]
    dt, shape = tensors[ks[0]][0], tuple(tensors[ks[0]][1])
    items.append((m, dt, (E,) + shape, lambda ks=ks: np.stack([load(k) for k in ks])))

w = gguf.GGUFWriter(out, gguf.MODEL_ARCH_NAMES[arch])
w.add_vocab_size(cfg["vocab_size"])
w.add_context_length(cfg["max_position_embeddings"])
w.add_embedding_length(cfg["hidden_size"])
w.add_block_count(L)
w.add_feed_forward_length(cfg["intermediate_size"])
w.add_expert_feed_forward_length(cfg["moe_intermediate_size"])
w.add_head_count(cfg["num_attention_heads"])
w.add_head_count_kv(cfg["num_key_value_heads"])
w.add_key_length(cfg["head_dim"])
w.add_value_length(cfg["head_dim"])
w.add_rope_freq_base(cfg["rope_theta"])
w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
w.add_expert_count(E)
w.add_expert_used_count(cfg["num_experts_per_tok"])
w.add_file_type(gguf.LlamaFileType.MOSTLY_BF16)
w.add_tokenizer_model("none")
def f32(get, dt):
    a = get()
    return (a.astype(np.uint32) << 16).view(np.float32) if dt == "BF16" else a.astype(np.float32)

order = []
for hf, dt, shape, get in items:
    g = names.get_name(hf, try_suffixes=(".weight", ".bias"))
    if g is None:
        sys.exit(f"the gguf package maps no name for {hf}")
    if len(shape) == 1 or g.endswith("ffn_gate_inp.weight"):
        # as convert_hf_to_gguf.py: norms and the router in F32 (ggml's CPU
        # backend multiplies by no BF16 vector)
        dt, get = "F32", (lambda get=get, dt=dt: f32(get, dt))
    np_dt, qt = DT[dt]
    nbytes = int(np.prod(shape)) * np.dtype(np_dt).itemsize
    w.add_tensor_info(g, shape, np.dtype(np_dt), nbytes, raw_dtype=qt)
    order.append(get)
w.write_header_to_file()
w.write_kv_data_to_file()
w.write_ti_data_to_file()
for get in order:
    w.write_tensor_data(np.ascontiguousarray(get()))
w.close()
PY
    mv "$bf16.part" "$bf16"
    rm -rf "$ckpt"
fi
uncache "$bf16"

# --- 3. the runs ----------------------------------------------------------
res=$work/results.jsonl
: >"$res"
llama_run() { # VARIANT FILE FORMAT ROUND
    local o=$log/llama-$3-$1-r$4.json od=$log/llama-$3-$1-r$4-d.json
    local rc=0
    "$(bench_bin "$1")" -m "$2" -p 64,512 -n 32 -t "$threads" "${load_flag[@]}" -r "$reps" -o json \
        >"$o" 2>"$log/llama-$3-$1-r$4.err" || rc=$?
    echo "[]" >"$od"
    if [ $rc = 0 ] && [ "$depth" -gt 0 ]; then # decode after a depth-token context
        "$(bench_bin "$1")" -m "$2" -p 0 -n 32 -d "$depth" -t "$threads" "${load_flag[@]}" -r "$reps" \
            -o json >"$od" 2>"$log/llama-$3-$1-r$4.err" || rc=$?
    fi
    if [ $rc = 0 ]; then
        python3 - "$o" "$3" "$4" "$1" "$od" >>"$res" <<'PY'
import json, sys
o, fmt, rnd, var, od = sys.argv[1:6]
for t in json.load(open(o)) + json.load(open(od)):
    d = t.get("n_depth", 0)
    kind = (f"decode@{d}" if d else "decode") if t["n_gen"] > 0 else f"prefill{t['n_prompt']}"
    print(json.dumps({"engine": "llama.cpp", "variant": var, "format": fmt, "round": int(rnd),
                      "cell": kind, "tok_s": max(t["samples_ts"]), "commit": t.get("build_commit"),
                      "model_size": t.get("model_size")}))
PY
        return 0
    fi
    echo "llama-bench ($1) failed on $3 (exit $rc): $(tail -2 "$log/llama-$3-$1-r$4.err" | tr '\n' ' ')" >&2
    return 1
}
ours_run() { # FILE FORMAT ROUND PROMPT ACTIVATIONS
    # --no-mmap: the matrices read into our own memory at load, as llama-bench's
    # ${load_flag[*]} does (mapped, a BF16 file's rows stay on 4 KiB pages of the
    # page cache: ~15% slower decode here)
    local o=$log/ours-$2-$5-p$4-r$3.json
    "$exe" bench --model "$1" --prompt-len "$4" --gen-len 32 --threads "$threads" --repeat "$reps" \
        --no-mmap --activations "$5" --json >"$o" 2>"$log/ours-$2-$5-p$4-r$3.err" ||
        { echo "moecluster bench failed on $2: $(tail -2 "$log/ours-$2-$5-p$4-r$3.err")" >&2; exit 1; }
    python3 - "$o" "$2" "$3" "$4" "$5" "$depth" >>"$res" <<'PY'
import json, sys
o, fmt, rnd, p, acts, depth = sys.argv[1:7]
j = json.load(open(o))
common = {"engine": "moecluster", "format": fmt, "round": int(rnd), "gguf": j.get("gguf"),
          "acts": acts}
print(json.dumps(dict(common, cell=f"prefill{p}", tok_s=j["prefill_tok_s"])))
if p == "64":  # decode after the 64-token prompt, as llama-bench's tg32 follows nothing
    print(json.dumps(dict(common, cell="decode", tok_s=j["decode_tok_s"], gbps=j["achieved_gbps"],
                          probe=j["probe_gbps"], paired=j.get("bandwidth_ratio_paired"),
                          kernels=j["kernels"], weights=j["weights"])))
if p == depth:  # --depth: decode after a depth-token context
    print(json.dumps(dict(common, cell=f"decode@{p}", tok_s=j["decode_tok_s"])))
PY
}

working=()
for f in "${fmts[@]}"; do
    if [ "$f" = bf16 ]; then
        file=$bf16
    else
        file=$work/qwen3-30b-a3b-${layers}l-$f.gguf
        say "llama-quantize $f"
        "$quant_bin" "$bf16" "$file" "$(echo "$f" | tr "[:lower:]" "[:upper:]")" "$threads" >"$log/quantize-$f.log" 2>&1 ||
            { tail -5 "$log/quantize-$f.log" >&2; exit 1; }
        uncache "$bf16"
    fi
    if [ ${#working[@]} = 0 ]; then # which builds run at all (a SIGILL shows here)
        for v in "${variants[@]}"; do
            if "$(bench_bin "$v")" -m "$file" -p 16 -n 2 -t "$threads" "${load_flag[@]}" -r 1 \
                >"$log/smoke-$v.log" 2>&1; then
                working+=("$v")
            else
                say "llama.cpp build '$v' does not run here (exit $?): $(tail -1 "$log/smoke-$v.log")"
            fi
        done
        [ ${#working[@]} -gt 0 ] || { echo "vs-llamacpp.sh: no llama.cpp build runs here" >&2; exit 1; }
        say "llama.cpp builds that run: ${working[*]}"
    fi
    for r in $(seq 1 "$rounds"); do
        say "$f round $r/$rounds"
        for v in "${working[@]}"; do llama_run "$v" "$file" "$f" "$r" || true; done
        ours_run "$file" "$f" "$r" 64 f32
        ours_run "$file" "$f" "$r" 512 f32
        case "$depth" in 0 | 64 | 512) ;; *) ours_run "$file" "$f" "$r" "$depth" f32 ;; esac
        if [ "$f" = bf16 ]; then # llama.cpp's numerics: activations rounded to bf16
            ours_run "$file" "$f" "$r" 64 bf16
            ours_run "$file" "$f" "$r" 512 bf16
        fi
    done
    if [ "$f" != bf16 ]; then rm -f "$file"; fi
done
[ $keep = 1 ] || rm -f "$bf16"

# --- 4. the table ---------------------------------------------------------
python3 - "$res" "$threads" "$layers" "$rounds" "$reps" "$commit" "$version" "$amx_note" \
    "${working[*]}" "$native_flags" <<'PY'
import json, statistics, subprocess, sys, time
res, threads, layers, rounds, reps, commit, version, amx_note, working, flags = sys.argv[1:11]
rows = [json.loads(l) for l in open(res)]
cpu = "unknown"
for line in open("/proc/cpuinfo"):
    if line.startswith("model name"):
        cpu = line.split(":", 1)[1].strip()
        break
ncpu = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
load = open("/proc/loadavg").read().split()[:3]
med = lambda xs: statistics.median(xs) if xs else None
fmts = list(dict.fromkeys(r["format"] for r in rows))
variants = working.split()
print(f"\nmoecluster vs llama.cpp, {time.strftime('%Y-%m-%d %H:%M %Z')}")
print(f"CPU: {cpu}, {ncpu} CPUs, {threads} threads; load average at the end {' '.join(load)}")
print(f"llama.cpp {commit} (llama-cpp-python {version} sdist), Release, -march=native: {flags}")
print(f"{amx_note}; builds measured: {', '.join(variants)}")
print(f"model: Qwen3-30B-A3B shape, {layers} layers (synth, random weights); {rounds} rounds "
      f"x {reps} repetitions, fastest repetition per round, median over rounds")
print()
cells = [("decode", "decode tok/s"), ("prefill64", "prefill 64 tok/s"), ("prefill512", "prefill 512 tok/s")]
cells += [(c, f"decode at depth {c[7:]} tok/s") for c in dict.fromkeys(r["cell"] for r in rows)
          if c.startswith("decode@")]
head = "| format | llama.cpp build |"
for _, n in cells:
    head += f" {n}: llama.cpp | ours | ratio |"
head += " our GB/s | probe GB/s | fraction | fraction (paired) |"
print(head)
print("|" + " --- |" * (head.count("|") - 1))
fmt_n = lambda x, d=1: "-" if x is None else f"{x:.{d}f}"
for f, acts in [(f, a) for f in fmts for a in ("f32", "bf16")
                if any(r["engine"] == "moecluster" and r["format"] == f and r.get("acts", "f32") == a
                       for r in rows)]:
    mine = lambda r: r["engine"] == "moecluster" and r["format"] == f and r.get("acts", "f32") == acts
    best = {}
    for c, _ in cells:
        per = {v: med([r["tok_s"] for r in rows if r["engine"] == "llama.cpp" and r["format"] == f
                       and r["cell"] == c and r["variant"] == v]) for v in variants}
        per = {v: x for v, x in per.items() if x is not None}
        best[c] = max(per.items(), key=lambda kv: kv[1]) if per else (None, None)
    used = sorted({v for v, _ in best.values() if v})
    line = f"| {f.upper()}{' (ours: --activations bf16)' if acts == 'bf16' else ''} | {'/'.join(used) or '-'} |"
    for c, _ in cells:
        ll = best[c][1]
        ours = med([r["tok_s"] for r in rows if mine(r) and r["cell"] == c])
        ratio = f"{ours / ll:.2f}x" if ours and ll else "-"
        line += f" {fmt_n(ll)} | {fmt_n(ours)} | {ratio} |"
    dec = [r for r in rows if mine(r) and r["cell"] == "decode"]
    gb, pr = med([r["gbps"] for r in dec]), med([r["probe"] for r in dec])
    pa = med([r["paired"] for r in dec if r.get("paired") is not None])
    line += f" {fmt_n(gb)} | {fmt_n(pr)} | {fmt_n(gb / pr if gb and pr else None, 2)} | {fmt_n(pa, 2)} |"
    print(line)
print()
for f in fmts:
    g = next((r.get("gguf") for r in rows if r["engine"] == "moecluster" and r["format"] == f), None)
    k = next((r for r in rows if r["engine"] == "moecluster" and r["format"] == f and r["cell"] == "decode"), {})
    if g:
        print(f"{f.upper()}: {g.get('file')} ({g.get('file_type_name')}; tensors {g.get('tensor_types')}); "
              f"moecluster kernels {k.get('kernels')}")
for v in variants:
    if len(variants) > 1:
        for f in fmts:
            xs = {c: med([r["tok_s"] for r in rows if r["engine"] == "llama.cpp" and r["format"] == f
                         and r["cell"] == c and r["variant"] == v]) for c, _ in cells}
            print(f"llama.cpp {v} on {f.upper()}: " +
                  ", ".join(f"{c} {fmt_n(x)}" for c, x in xs.items()))
PY
