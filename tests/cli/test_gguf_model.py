#!/usr/bin/env python3
"""`--model FILE.gguf`: llama.cpp's files give the logits of the same weights
loaded from safetensors.

The GGUF files are written from tests/fixtures/models/qwen3-moe-tiny,
deepseek-v3-tiny and llama4-tiny (BF16) by tests/fixtures/gguf/st_to_gguf.py with the `gguf` PyPI package (its
names, keys, stacked experts and quantizers), then scored with `moecluster
score` next to the safetensors model:

- as stored (BF16 -> BF16), and a split folder of it: the same logits, bit
  for bit;
- f32 / f16 / bf16 / q8_0 matrices (attention, experts, LM head; embedding,
  router and norms as stored): against the safetensors model loaded with
  `--weights f32|f16|bf16|q8_0`, which converts the same matrices with the
  same rounding: within 1e-6 relative per position (||a - b|| / ||b|| over
  the vocabulary);
- `--no-mmap` (the matrices copied into RAM at load) on the q6_k file and
  the safetensors folder: bit for bit;
- q4_k (used as stored) from the tool's block quantizer: against a
  safetensors copy holding what the blocks decode to (the package's
  dequantizer), loaded with `--weights q4_k`: within 1e-6 relative; q6_k
  and q5_k (used as stored) against that copy in F32: within the 8-bit
  activations' error (Q6_REL);
- q8_0 (the GGUF, and --weights q8_0), q4_k, q5_k and q6_k on the default
  kernel path, which repacks Q8_0, Q4_K, Q5_K and Q6_K rows at load where
  it is avx512, against the portable path reading them as stored: within
  PATH_REL; the q4_k and q6_k files on the CPU acting as a device (rows
  uploaded as stored, as the CUDA backend takes them) against the default:
  within PATH_REL; the q5_k file on that device (its Q5_K matrices
  converted to Q8_0 at load, as for the CUDA backend) against the decoded
  copy loaded with `--weights q8_0` on the same device: bit for bit (the
  same blocks); with mpirun, `--tp 2` cutting the 256-column Q5_K / Q4_K
  matrices at 128 (held as Q8_0 on each rank): the q5_k file on the device
  against the decoded copy's `--weights q8_0 --tp 2` there, bit for bit,
  and the q4_k file (such cuts were refused before) runs;
- deepseek2: with attn_k_b + attn_v_b (newer converters; joined back into
  kv_b at load) and with attn_kv_b whole: bit for bit; q8_0 (attn_kv_b)
  against --weights q8_0 within 1e-6;
- llama4: within 1e-6 as stored (the safetensors experts are transposed,
  summed in another order), q8_0 against --weights q8_0 within 1e-6,
  and without its rope_freqs tensor (llama3 scaling) the logits move;
- broken files are refused, naming the tensor or key: a missing tensor, a
  matrix and a stacked expert tensor with swapped dims, an unknown
  architecture, a missing key, no vocabulary, one part of a split opened
  alone, a truncated file; deepseek2 without attn_v_b or a score bias; a NaN
  in a weight is named.

Exits 77 (skipped) when the `gguf` package is missing (scripts/setup.sh
installs it).

usage: test_gguf_model.py MOECLUSTER FIXTURES WORK_DIR
"""
import json
import os
import shutil
import struct
import subprocess
import sys

try:
    import numpy as np
    import gguf  # noqa: F401  (the writer needs it)
except ImportError as e:
    print(f"skipped: {e} (scripts/setup.sh installs the gguf package)")
    sys.exit(77)

failures = 0
REL = 1e-6
PATH_REL = 1e-5  # two kernel paths: the same products summed in another order
# --activations bf16 (random tiny model, 4 layers): against f32 measured 0.074;
# between kernel paths measured 0.0022: a difference of order 1e-7 between two
# paths' sums may move a value across a bf16 rounding boundary (one bf16 step,
# 2^-8 of it), which the next layers carry on
BF16_ACTS_REL = 0.25
BF16_ACTS_PATH_REL = 0.01
Q6_REL = 0.05  # measured 0.019 (8-bit activations; the Q8_0 fallback rows of 64 add their rounding)


def check(cond, what, detail=""):
    global failures
    if cond:
        print(f"ok: {what}")
    else:
        failures += 1
        print(f"FAIL: {what}" + (f"\n   {detail}" if detail else ""))


def run(args, timeout=300, env=None):
    p = subprocess.run(args, capture_output=True, text=True, timeout=timeout,
                       env=dict(os.environ, **env) if env else None)
    return p.returncode, p.stdout, p.stderr


def logits(path):
    blob = open(path, "rb").read()
    (n,) = struct.unpack("<Q", blob[:8])
    info = json.loads(blob[8:8 + n])["logits"]
    b, e = info["data_offsets"]
    return np.frombuffer(blob[8 + n + b:8 + n + e], np.float32).reshape(info["shape"])


def main():
    exe, fixtures, work = sys.argv[1:4]
    src = os.path.join(fixtures, "models", "qwen3-moe-tiny")
    tool = os.path.join(fixtures, "gguf", "st_to_gguf.py")
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    ids = [(i * 37 + 5) % 1024 for i in range(2 * 12)]
    data = b"".join(struct.pack("<q", v) for v in ids)
    head = json.dumps({"input_ids": {"dtype": "I64", "shape": [2, 12],
                                     "data_offsets": [0, len(data)]}}).encode()
    inp = os.path.join(work, "in.safetensors")
    with open(inp, "wb") as f:
        f.write(struct.pack("<Q", len(head)) + head + data)
    count = [0]

    last_err = [""]

    def score(model, opts=(), env=None, launcher=()):
        count[0] += 1
        out = os.path.join(work, f"out{count[0]}.safetensors")
        rc, _, err = run([*launcher, exe, "score", "--model", model, "--input", inp, "--output",
                          out, *opts], env=env)
        last_err[0] = err
        check(rc == 0, f"score {os.path.basename(model)} {' '.join(opts)}"
              f"{' ' + str(env) if env else ''}: exit 0 (rc {rc})", err.strip()[-400:])
        return logits(out) if rc == 0 else None

    def write(name, *args):
        path = os.path.join(work, name)
        args = list(args)
        model = src
        if "--src" in args:  # another fixture
            i = args.index("--src")
            model = args[i + 1]
            del args[i:i + 2]
        rc, _, err = run([sys.executable, tool, model, path, *args])
        check(rc == 0, f"st_to_gguf {name} {' '.join(args)}", err.strip()[-600:])
        return path

    def compare(what, a, b, bound):
        if a is None or b is None:
            check(False, what, "no logits")
            return
        d = np.abs(a - b)
        rel = (np.linalg.norm(a - b, axis=-1) / np.linalg.norm(b, axis=-1)).max()
        detail = ""
        if rel > bound:
            bad = np.argwhere(d == d.max())[:3]
            detail = "first mismatches (b, t, v): " + ", ".join(
                f"{tuple(int(i) for i in x)}: {a[tuple(x)]} vs {b[tuple(x)]}" for x in bad)
        check(rel <= bound, f"{what}: max abs diff {d.max():.3g}, max rel {rel:.3g} "
              f"(bound {bound:g})", detail)

    base = score(src)
    # as stored: the same bytes, the same kernels
    compare("native BF16 GGUF vs safetensors", score(write("native.gguf")), base, 0.0)
    os.makedirs(os.path.join(work, "split"))
    write("split/m.gguf", "--split", "20")
    parts = sorted(os.listdir(os.path.join(work, "split")))
    check(len(parts) >= 2, f"split into {len(parts)} parts")
    compare("split GGUF folder vs safetensors", score(os.path.join(work, "split")), base, 0.0)
    compare("bf16 GGUF vs --weights bf16", score(write("bf16.gguf", "--type", "bf16")),
            score(src, ["--weights", "bf16"]), 0.0)
    for t in ("f32", "f16", "q8_0"):
        compare(f"{t} GGUF vs --weights {t}", score(write(f"{t}.gguf", "--type", t)),
                score(src, ["--weights", t]), REL)
    # Q8_0 rows repacked at load for the avx512 kernels (mc_mat_pack: matrices of 256
    # columns here, the down projections of 64 stay as stored) against the portable
    # path, which reads them as stored: the same integer block sums, float sums in
    # another order
    scalar = {"MC_KERNELS": "scalar"}
    for what, model, opts in (("q8_0 GGUF", os.path.join(work, "q8_0.gguf"), ()),
                              ("--weights q8_0", src, ("--weights", "q8_0"))):
        fast = score(model, opts)
        packed = "repacked at load" in last_err[0]
        plain = score(model, opts, env=scalar)
        check("repacked at load" not in last_err[0], f"{what}: nothing repacked for scalar")
        print(f"{what}: default kernels {'repacked' if packed else 'did not repack'} Q8_0 rows")
        compare(f"{what}: default kernels{' (repacked rows)' if packed else ''} vs scalar "
                "(rows as stored)", fast, plain, PATH_REL)
    ref = os.path.join(work, "ref_q4_k")
    g = score(write("q4_k.gguf", "--type", "q4_k", "--ref-out", ref))
    compare("q4_k GGUF vs its decoded values --weights q4_k", g, score(ref, ["--weights", "q4_k"]),
            REL)
    # Q5_K is used as stored, as Q6_K: against the decoded values in F32 the 8-bit
    # activations of its products (per 256, as for Q4_K); the kernels are checked
    # against f64 products in unit.test_kernels_kq
    ref5 = os.path.join(work, "ref_q5_k")
    q5 = write("q5_k.gguf", "--type", "q5_k", "--ref-out", ref5)
    g5 = score(q5)
    packed = "repacked at load" in last_err[0]
    compare("q5_k GGUF (used as Q5_K) vs its decoded values in F32", g5, score(ref5), Q6_REL)
    print(f"q5_k GGUF: default kernels {'repacked' if packed else 'did not repack'} rows")
    compare("q5_k GGUF: default kernels vs scalar (rows as stored)", g5, score(q5, env=scalar),
            PATH_REL)
    # on a device its Q5_K matrices become Q8_0 at load (no Q5_K kernels there): the
    # blocks --weights q8_0 makes of the decoded copy, bit for bit
    dev = {"MC_CPU_AS_DEVICE": "1"}
    q5_dev = score(q5, env=dev)
    compare("q5_k GGUF on a device (Q5_K converted to Q8_0) vs its decoded values "
            "--weights q8_0 on the device", q5_dev,
            score(ref5, ["--weights", "q8_0"], env=dev), 0.0)
    # tensor parallelism cutting K-quant matrices inside their 256-weight blocks (this
    # model's 256-column o_proj / down halves at 128): such a rank's matrix is held as
    # Q8_0. On the device every Q5_K matrix is Q8_0 anyway, so --tp 2 there gives the
    # decoded copy's `--weights q8_0 --tp 2` bit for bit (the same blocks on each rank;
    # against one process the split sums' 8-bit activation blocks move routing on this
    # random model, ~1e-2); on the host the q4_k file, whose cuts were refused before,
    # now runs
    mpirun = shutil.which("mpirun")
    if mpirun:
        launcher = [mpirun, "-np", "2"]
        ver = subprocess.run([mpirun, "--version"], capture_output=True, text=True).stdout
        if "Open MPI" in ver or "OpenRTE" in ver:
            launcher += ["--oversubscribe", "--bind-to", "none"]
            if os.geteuid() == 0:
                launcher += ["--allow-run-as-root"]
        # as tests/mpi/run_mpi.py: MPI's own allocations at exit are not our leaks (under
        # -DMC_SANITIZE=ON), and containers often forbid the single-copy mechanism
        menv = {"ASAN_OPTIONS": os.environ.get("ASAN_OPTIONS", "detect_leaks=0"),
                "OMPI_MCA_btl_vader_single_copy_mechanism":
                    os.environ.get("OMPI_MCA_btl_vader_single_copy_mechanism", "none")}
        dev_m = dict(dev, **menv)
        tp5 = score(q5, ["--tp", "2"], env=dev_m, launcher=launcher)
        check("held as Q8_0" in last_err[0], "q5_k --tp 2: the Q8_0 cut is logged",
              last_err[0][-400:])
        compare("q5_k GGUF --tp 2 on a device (cut matrices held as Q8_0) vs its decoded "
                "values --weights q8_0 --tp 2 on the device", tp5,
                score(ref5, ["--weights", "q8_0", "--tp", "2"], env=dev_m, launcher=launcher),
                0.0)
        score(os.path.join(work, "q4_k.gguf"), ["--tp", "2"], env=menv, launcher=launcher)
        check("held as Q8_0" in last_err[0], "q4_k --tp 2: the Q8_0 cut is logged",
              last_err[0][-400:])
    else:
        print("skip: --tp 2 (no mpirun)")
    # the q4_k GGUF's rows repacked at load on avx512, against the scalar path reading them
    # as stored
    q4 = os.path.join(work, "q4_k.gguf")
    fast = score(q4)
    print(f"q4_k GGUF: default kernels {'repacked' if 'repacked at load' in last_err[0] else 'did not repack'} rows")
    compare("q4_k GGUF: default kernels vs scalar (rows as stored)", fast, score(q4, env=scalar),
            PATH_REL)
    # Q6_K is used as stored (no load-time conversion): against the decoded
    # values in F32 the only difference is the 8-bit activations of the Q6_K
    # products (per 256, as for Q4_K); the kernels themselves are checked
    # against f64 products in unit.test_kernels_kq
    ref = os.path.join(work, "ref_q6_k")
    g = score(write("q6_k.gguf", "--type", "q6_k", "--ref-out", ref))
    compare("q6_k GGUF (used as Q6_K) vs its decoded values in F32", g, score(ref), Q6_REL)
    # its Q6_K rows repacked at load on avx512, against the scalar path reading them as stored
    q6 = os.path.join(work, "q6_k.gguf")
    fast = score(q6)
    packed = "repacked at load" in last_err[0]
    print(f"q6_k GGUF: default kernels {'repacked' if packed else 'did not repack'} rows")
    compare("q6_k GGUF: default kernels vs scalar (rows as stored)", fast,
            score(q6, env=scalar), PATH_REL)
    # the Q4_K / Q6_K files on a device backend (the CPU acting as one: the
    # rows uploaded as stored, never repacked, as the CUDA backend reads them)
    for name in ("q4_k.gguf", "q6_k.gguf"):
        path = os.path.join(work, name)
        on_dev = score(path, env=dev)
        check("repacked at load" not in last_err[0], f"{name} on a device: nothing repacked")
        compare(f"{name} on a device (rows as stored) vs the host's default kernels", on_dev,
                score(path), PATH_REL)
    # --no-mmap: the same blocks copied into RAM, the same logits bit for bit
    # (and for a safetensors folder)
    compare("q6_k GGUF --no-mmap vs mapped", score(os.path.join(work, "q6_k.gguf"),
                                                   ["--no-mmap"]), g, 0.0)
    compare("safetensors --no-mmap vs mapped", score(src, ["--no-mmap"]), base, 0.0)
    # --activations bf16: the activations of the BF16 products rounded to bf16
    # first (the products themselves against double sums in unit.test_kernels,
    # every path within 2e-6): the paths within bf16 rounding steps of each
    # other (BF16_ACTS_PATH_REL), f32 the default, and the rounding visible
    b16 = score(src, ["--activations", "bf16"])
    compare("--activations bf16: default kernels vs scalar", b16,
            score(src, ["--activations", "bf16"], env=scalar), BF16_ACTS_PATH_REL)
    compare("--activations f32 is the default", score(src, ["--activations", "f32"]), base, 0.0)
    if b16 is not None and base is not None:
        rel = (np.linalg.norm(b16 - base, axis=-1) / np.linalg.norm(base, axis=-1)).max()
        check(1e-3 < rel < BF16_ACTS_REL, f"--activations bf16 vs f32: max rel {rel:.3g} "
              f"(rounding visible, under {BF16_ACTS_REL:g})")
    rc, _, err = run([exe, "score", "--model", src, "--input", inp, "--output",
                      os.path.join(work, "acts.safetensors"), "--activations", "fp8"])
    check(rc == 2 and "--activations: 'fp8' is not f32 or bf16" in err,
          f"--activations fp8 refused (rc {rc})", err.strip()[-300:])

    # deepseek2 (MLA): attn_k_b + attn_v_b as newer converters write them, and
    # attn_kv_b whole as older ones did
    ds = os.path.join(fixtures, "models", "deepseek-v3-tiny")
    ds_base = score(ds)
    compare("deepseek2 GGUF (attn_k_b/attn_v_b) vs safetensors",
            score(write("ds.gguf", "--src", ds)), ds_base, 0.0)
    compare("deepseek2 GGUF (attn_kv_b) vs safetensors",
            score(write("ds_kvb.gguf", "--src", ds, "--kv-b")), ds_base, 0.0)
    compare("deepseek2 q8_0 GGUF (attn_kv_b) vs --weights q8_0",
            score(write("ds_q8_0.gguf", "--src", ds, "--kv-b", "--type", "q8_0")),
            score(ds, ["--weights", "q8_0"]), REL)

    # llama4: experts split from gate_up_proj and transposed as the converter
    # does, llama3 RoPE scaling as the rope_freqs tensor; without that tensor
    # the logits must move (the divisors are used)
    l4 = os.path.join(fixtures, "models", "llama4-tiny")
    l4_base = score(l4)
    # not bit for bit: Hugging Face stores Llama 4's experts transposed
    # (gate_up_proj [E, H, 2I]), which the CPU kernels sum in another order
    # than the converter's [E, I, H] rows
    compare("llama4 GGUF vs safetensors", score(write("l4.gguf", "--src", l4)), l4_base, REL)
    compare("llama4 q8_0 GGUF vs --weights q8_0",
            score(write("l4_q8_0.gguf", "--src", l4, "--type", "q8_0")),
            score(l4, ["--weights", "q8_0"]), REL)
    nf = score(write("l4_no_freqs.gguf", "--src", l4, "--drop", "rope_freqs.weight"))
    if nf is not None and l4_base is not None:
        moved = float((np.linalg.norm(nf - l4_base, axis=-1) / np.linalg.norm(l4_base, axis=-1)).max())
        check(moved > 1e-5, f"llama4 GGUF without rope_freqs differs from the scaled model "
              f"(max rel {moved:.3g})")

    def refused(name, args, want, model=None):
        path = model or write(name, *args)
        rc, _, err = run([exe, "score", "--model", path, "--input", inp, "--output",
                          os.path.join(work, "refused.safetensors")])
        check(rc != 0 and want in err and "\n" not in err.strip(),
              f"{name}: refused naming '{want}' (rc {rc})", err.strip()[-400:])

    refused("drop.gguf", ["--drop", "blk.1.attn_k.weight"],
            "GGUF has no tensor 'blk.1.attn_k.weight'")
    refused("swap_k.gguf", ["--reshape", "blk.0.attn_k.weight"],
            "tensor 'blk.0.attn_k.weight' has shape [256,64]")
    refused("swap_exps.gguf", ["--reshape", "blk.2.ffn_down_exps.weight"],
            "tensor 'blk.2.ffn_down_exps.weight [expert 0]' has shape [64,256]")
    refused("llama.gguf", ["--arch", "llama"], "general.architecture 'llama' is not supported")
    refused("no_experts.gguf", ["--no-key", "qwen3moe.expert_count"],
            "GGUF metadata has no 'qwen3moe.expert_count'")
    refused("no_vocab.gguf", ["--no-key", "tokenizer.ggml.tokens"], "'tokenizer.ggml.tokens'")
    refused("one part", [], "open the folder",
            model=os.path.join(work, "split", parts[0]))
    refused("ds_no_vb.gguf", ["--src", ds, "--drop", "blk.1.attn_v_b.weight"],
            "nor 'blk.1.attn_v_b.weight'")
    refused("ds_no_bias.gguf", ["--src", ds, "--drop", "blk.2.exp_probs_b.bias"],
            "GGUF has no tensor 'blk.2.exp_probs_b.bias'")
    refused("l4_no_step.gguf", ["--src", l4, "--no-key", "llama4.interleave_moe_layer_step"],
            "GGUF metadata has no 'llama4.interleave_moe_layer_step'")
    # a NaN in a weight is named from the GGUF tensor (the non-finite check
    # reads the loader's views when there is no safetensors checkpoint)
    nan = os.path.join(work, "nan.gguf")
    shutil.copy(os.path.join(work, "native.gguf"), nan)
    off = next(t.data_offset for t in gguf.GGUFReader(nan).tensors
               if t.name == "blk.0.attn_q.weight")
    with open(nan, "r+b") as f:
        f.seek(off + 6)
        f.write(b"\xc0\x7f")  # BF16 NaN as element 3
    rc, _, err = run([exe, "score", "--model", nan, "--input", inp, "--output",
                      os.path.join(work, "refused.safetensors")])
    last = err.strip().splitlines()[-1] if err.strip() else ""
    check(rc != 0 and "tensor blk.0.attn_q.weight holds NaN at element 3" in last,
          f"nan.gguf: the NaN weight named (rc {rc})", err.strip()[-400:])
    blob = open(os.path.join(work, "native.gguf"), "rb").read()
    cut = os.path.join(work, "cut.gguf")
    with open(cut, "wb") as f:
        f.write(blob[:len(blob) // 2])
    refused("cut.gguf", [], "cut.gguf", model=cut)

    print(f"{failures} failure(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
