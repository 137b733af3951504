#!/usr/bin/env python3
"""Checkpoints that are broken in ways the header cannot show:

  - NaN / +Inf poked into one weight (an expert, an attention projection,
    the embedding, the LM head; BF16 and FP8 checkpoints, DeepSeek-V4):
    `score` and `generate` must fail with a message naming the tensor and the
    element, never write NaN logits or print ids with exit 0;
  - a FIFO or a directory in place of the index or of a shard: refused at
    once (a timeout turns a hang into a failure);
  - a checkpoint truncated by another process while `generate` runs: one line
    naming the file and exit status 1, not a bare SIGBUS.

usage: test_hardening_files.py MOECLUSTER FIXTURES_DIR WORK_DIR
"""
import json
import os
import shutil
import struct
import subprocess
import sys
import time

failures = 0


def check(cond, what, detail=""):
    global failures
    print(("ok: " if cond else "FAIL: ") + what)
    if not cond:
        failures += 1
        if detail:
            print("   " + detail.strip().replace("\n", "\n   ")[-1500:])


def write_ids(path, rows):
    data = b"".join(struct.pack("<q", t) for r in rows for t in r)
    h = json.dumps({"input_ids": {"dtype": "I64", "shape": [len(rows), len(rows[0])],
                                  "data_offsets": [0, len(data)]}}).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + data)


def copy_model(fx, name, dest):
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(os.path.join(fx, "models", name), dest)
    return dest


def tensor_file(model, tensor):
    """The file of `model` holding `tensor` and the tensor's header entry and data offset."""
    index = os.path.join(model, "model.safetensors.index.json")
    files = [json.load(open(index))["weight_map"][tensor]] if os.path.exists(index) else \
        sorted(f for f in os.listdir(model) if f.startswith("model") and f.endswith(".safetensors"))
    for fn in files:
        path = os.path.join(model, fn)
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n))
        if tensor in header:
            return path, header[tensor], 8 + n + header[tensor]["data_offsets"][0]
    raise KeyError(tensor)


BITS = {  # dtype -> kind -> stored bytes
    "BF16": {"NaN": struct.pack("<H", 0x7FC0), "+Inf": struct.pack("<H", 0x7F80)},
    "F32": {"NaN": struct.pack("<I", 0x7FC00000), "+Inf": struct.pack("<I", 0x7F800000)},
    "F8_E4M3": {"NaN": b"\x7f"},
}


def poke(model, tensor, elem, kind):
    path, entry, off = tensor_file(model, tensor)
    raw = BITS[entry["dtype"]][kind]
    with open(path, "r+b") as f:
        f.seek(off + elem * len(raw))
        f.write(raw)


def run(args, timeout=60, env=None):
    try:
        p = subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=env)
        return p.returncode, p.stdout, p.stderr
    except subprocess.TimeoutExpired:
        return None, "", f"TIMEOUT after {timeout} s (hung)"


def expect_fail(args, needles, what, out_path=None, timeout=60, env=None):
    rc, out, err = run(args, timeout, env)
    ok = rc is not None and 0 < rc < 128 and all(n in err for n in needles)
    if out_path:
        ok = ok and not os.path.exists(out_path)
    check(ok, f"{what}: exit {rc}, message names {needles}",
          f"stdout: {out[-300:]}\nstderr: {err[-1200:]}")
    return out


def nan_cases(exe, fx, work):
    ids = os.path.join(work, "ids.safetensors")
    # long enough that every routed expert of these tiny models is chosen
    seq = [(7 * i + 3) % 1000 + 2 for i in range(24)]
    write_ids(ids, [seq])
    prompt = ",".join(str(t) for t in seq)
    cases = [
        # model, tensor, element, kind, where the check fires
        ("qwen3-moe-tiny", "model.layers.1.mlp.experts.3.up_proj.weight", 17, "NaN",
         "layer 1: non-finite activations"),
        ("qwen3-moe-tiny", "model.layers.1.mlp.experts.3.up_proj.weight", 17, "+Inf",
         "layer 1: non-finite activations"),
        ("qwen3-moe-tiny", "model.layers.2.self_attn.q_proj.weight", 1000, "NaN",
         "layer 2: non-finite activations"),
        ("qwen3-moe-tiny", "model.embed_tokens.weight", seq[5] * 256 + 9, "NaN",
         f"input: non-finite embedding (NaN) of token id {seq[5]} at position 5"),
        ("qwen3-moe-tiny", "lm_head.weight", 300 * 256 + 4, "+Inf", "logits: non-finite value"),
        ("deepseek-v3-tiny", "model.layers.2.mlp.experts.5.down_proj.weight", 100, "NaN",
         "layer 2: non-finite activations"),
        ("deepseek-v3-tiny", "model.layers.0.mlp.up_proj.weight", 4, "+Inf",
         "layer 0: non-finite activations"),
        ("deepseek-v3-tiny-fp8", "model.layers.1.mlp.experts.2.gate_proj.weight", 33, "NaN",
         "layer 1: non-finite activations"),
        ("deepseek-v3-tiny-fp8", "model.layers.3.self_attn.kv_b_proj.weight_scale_inv", 0, "+Inf",
         "layer 3: non-finite activations (NaN) after the attention block"),
        ("deepseek-v4-tiny", "model.layers.1.ffn.shared_experts.w3.weight", 50, "NaN",
         "layer 1: non-finite activations"),
    ]
    # the host checks after every block and stops there; a device (the CPU
    # acting as one: its checks deferred as the CUDA backend's) notes the
    # first non-finite value and fails the step at its end, with the same words
    device = dict(os.environ, MC_CPU_AS_DEVICE="1")
    for i, (name, tensor, elem, kind, where) in enumerate(cases):
        model = copy_model(fx, name, os.path.join(work, f"nan{i}-{name}"))
        poke(model, tensor, elem, kind)
        blame = f"tensor {tensor} holds {kind} at element {elem}"
        out = os.path.join(work, f"nan{i}.safetensors")
        for how, env in (("", None), (", cpu device", device)):
            expect_fail([exe, "score", "--model", model, "--input", ids, "--output", out],
                        [where, blame], f"score{how}, {name}, {kind} in {tensor}", out_path=out,
                        env=env)
            stdout = expect_fail([exe, "generate", "--model", model, "--prompt-ids", prompt,
                                  "-n", "4"], [where, blame],
                                 f"generate{how}, {name}, {kind} in {tensor}", env=env)
            check(stdout.strip() == "", f"generate{how}, {name}: no ids printed "
                  f"('{stdout.strip()}')")
        if i == 0:
            # load-time quantization must not turn the NaN into a finite weight
            for fmt in ("q8_0", "q4_k"):
                expect_fail([exe, "score", "--model", model, "--input", ids, "--output", out,
                             "--weights", fmt], [blame, "cannot be quantized"],
                            f"score --weights {fmt}, {kind} in {tensor}", out_path=out)
            # the MoE block's residual, or (ep) the expert outputs on the rank holding it
            mpi_case(exe, model, prompt, [where.replace(" activations", ""), blame])
            mpi_case(exe, model, prompt, [where.replace(" activations", ""), blame],
                     device=True)
    # a shard set cut from a model with a NaN expert: the rank holding the
    # expert (not the one whose tokens went through it) names it
    model = copy_model(fx, "qwen3-moe-tiny", os.path.join(work, "nan-shards-src"))
    tensor = "model.layers.1.mlp.experts.13.up_proj.weight"
    poke(model, tensor, 5, "NaN")
    shards = os.path.join(work, "nan-shards")
    rc, _, err = run([exe, "shard", "--model", model, "--cluster", CPU4, "--out", shards])
    check(rc == 0, f"shard a model with a NaN expert: exit {rc}", err)
    for dev in (False, True):
        mpi_case(exe, shards, prompt, [f"tensor {tensor} holds NaN at element 5"], ranks=4,
                 pars=[[]], source="--shards", device=dev)
    # cutting with a format conversion must not turn the NaN into a finite weight
    # (a plain copy keeps it, and the forward pass names it, as above)
    one = os.path.join(os.path.dirname(CPU4), "cpu-1rank.yaml")
    for fmt in ("q8_0", "q4_k"):
        out_dir = os.path.join(work, f"nan-shards-{fmt}")
        rc, _, err = run([exe, "shard", "--model", model, "--cluster", one, "--out", out_dir,
                          "--weights", fmt])
        ok = 0 < rc < 128 and f"tensor '{tensor}' holds NaN" in err and "cannot be converted" in err
        check(ok, f"shard --weights {fmt} of a NaN expert is refused: exit {rc}", err)
    # the same model without the poke still scores (the check has no false alarm)
    model = copy_model(fx, "qwen3-moe-tiny", os.path.join(work, "clean"))
    out = os.path.join(work, "clean.safetensors")
    rc, _, err = run([exe, "score", "--model", model, "--input", ids, "--output", out])
    check(rc == 0 and os.path.exists(out), f"clean model scores: exit {rc}", err)


CPU4 = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "cluster-configs",
                    "cpu-4ranks.yaml")


def mpi_case(exe, model, prompt, needles, ranks=2, pars=(["--ep", "2"], ["--pp", "2"]),
             source="--model", device=False):
    """Under mpirun (when there is one): the rank that finds the NaN names it
    and the job ends instead of leaving the other rank waiting."""
    mpirun = shutil.which("mpirun")
    if not mpirun:
        print("skip: no mpirun")
        return
    cmd = [mpirun, "-np", str(ranks)]
    ver = subprocess.run([mpirun, "--version"], capture_output=True, text=True).stdout
    if "Open MPI" in ver or "OpenRTE" in ver:
        cmd += ["--oversubscribe", "--bind-to", "none"]
        if os.geteuid() == 0:
            cmd += ["--allow-run-as-root"]
    env = dict(os.environ)
    env.setdefault("OMPI_MCA_btl_vader_single_copy_mechanism", "none")
    env.setdefault("ASAN_OPTIONS", "detect_leaks=0")
    if device:
        env["MC_CPU_AS_DEVICE"] = "1"
    for par in pars:
        rc, out, err = run(cmd + [exe, "generate", source, model, "--prompt-ids", prompt,
                                  "-n", "4"] + par, timeout=90, env=env)
        ok = rc is not None and rc != 0 and all(n in err for n in needles) and out.strip() == ""
        check(ok, f"mpirun -np {ranks} generate {source} {' '.join(par)}"
              f"{' (cpu device)' if device else ''}: exit {rc}, "
              f"message names {needles}",
              f"stdout: {out[-300:]}\nstderr: {err[-1200:]}")


def non_regular_cases(exe, fx, work):
    ids = os.path.join(work, "ids4.safetensors")
    write_ids(ids, [[1, 2, 3, 4]])
    out = os.path.join(work, "nr.safetensors")
    shard = "model-00002-of-00003.safetensors"
    for target, make, needle in [
        ("model.safetensors.index.json", os.mkfifo, "checkpoint index is a FIFO"),
        ("model.safetensors.index.json", os.mkdir, "checkpoint index is a directory"),
        (shard, os.mkfifo, f"{shard}: safetensors file is a FIFO"),
        (shard, os.mkdir, f"{shard}: safetensors file is a directory"),
    ]:
        model = copy_model(fx, "qwen3-moe-tiny", os.path.join(work, "nonregular"))
        os.unlink(os.path.join(model, target))
        make(os.path.join(model, target))
        expect_fail([exe, "score", "--model", model, "--input", ids, "--output", out], [needle],
                    f"score with {target} as {make.__name__}", out_path=out, timeout=20)
        expect_fail([exe, "generate", "--model", model, "--prompt-ids", "1,2", "-n", "2"],
                    [needle], f"generate with {target} as {make.__name__}", timeout=20)


def truncation_case(exe, fx, work):
    model = copy_model(fx, "qwen3-moe-tiny", os.path.join(work, "shrink"))
    victim = os.path.join(model, "model-00003-of-00003.safetensors")
    p = subprocess.Popen([exe, "generate", "--model", model, "--prompt-ids", "5,6,7",
                          "-n", "4000", "--ignore-eos"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = p.stdout.read(1)  # the first id is out: the weights are mapped and in use
    os.truncate(victim, 8)
    try:
        _, err = p.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        p.kill()
        _, err = p.communicate()
    err = err.decode(errors="replace")
    want = f"moecluster: {victim}: the file shrank while mapped"
    check(first != b"" and p.returncode == 1 and want in err,
          f"checkpoint truncated during generate: exit {p.returncode}, message names the file",
          err[-1000:])


def main():
    exe, fx, work = sys.argv[1], sys.argv[2], sys.argv[3]
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    t0 = time.time()
    nan_cases(exe, fx, work)
    non_regular_cases(exe, fx, work)
    truncation_case(exe, fx, work)
    print(f"{time.time() - t0:.1f} s")
    if failures:
        print(f"{failures} check(s) failed")
        return 1
    shutil.rmtree(work, ignore_errors=True)
    print("all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
