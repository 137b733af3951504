#!/usr/bin/env python3
"""Command-line contract of `moecluster score` / `generate`: bad input gives a
clear message and a non-zero exit (never a crash), and greedy generation
agrees with the argmax of `score` over the same tokens.

usage: test_cli.py MOECLUSTER FIXTURES_DIR WORK_DIR
"""
import json
import os
import struct
import subprocess
import sys

failures = 0


def check(cond, what):
    global failures
    if not cond:
        failures += 1
        print(f"FAIL: {what}")
    else:
        print(f"ok: {what}")


def write_st(path, tensors):
    header, off, blobs = {}, 0, []
    for name, (dtype, shape, data) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [off, off + len(data)]}
        off += len(data)
        blobs.append(data)
    h = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def read_logits(path):
    blob = open(path, "rb").read()
    (n,) = struct.unpack("<Q", blob[:8])
    info = json.loads(blob[8:8 + n])["logits"]
    b, e = info["data_offsets"]
    vals = struct.unpack(f"<{(e - b) // 4}f", blob[8 + n + b:8 + n + e])
    return info["shape"], vals


def ids_tensor(rows):
    data = b"".join(struct.pack("<q", t) for r in rows for t in r)
    return ("I64", [len(rows), len(rows[0])], data)


def run(args, timeout=120):
    p = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    return p.returncode, p.stdout, p.stderr


def expect_error(args, needle, what):
    rc, out, err = run(args)
    clean = 0 < rc < 128  # an error status, not a signal
    check(clean and needle in err, f"{what}: exit {rc}, message contains '{needle}'")
    if not (clean and needle in err):
        print("   stderr:", err.strip()[:300])


def main():
    exe, fx, work = sys.argv[1], sys.argv[2], sys.argv[3]
    os.makedirs(work, exist_ok=True)
    model = os.path.join(fx, "models", "qwen3-moe-tiny")
    out = os.path.join(work, "out.safetensors")
    good = os.path.join(work, "good.safetensors")
    write_st(good, {"input_ids": ids_tensor([[1, 2, 3, 4]])})

    expect_error([exe], "usage", "no command")
    expect_error([exe, "frobnicate"], "not a command", "unknown command")
    expect_error([exe, "score", "--model", model], "required", "score without --input")
    expect_error([exe, "score", "--model", model, "--input", good, "--output", out,
                  "--decode-from", "0"], "--decode-from", "decode-from 0")
    expect_error([exe, "score", "--model", model, "--input", good, "--output", out,
                  "--decode-from", "9"], "exceeds the sequence length", "decode-from past T")
    expect_error([exe, "score", "--model", model, "--input", good, "--output", out,
                  "--decode-from", "x1"], "not an integer", "decode-from not a number")
    expect_error([exe, "score", "--model", os.path.join(work, "nope"), "--input", good,
                  "--output", out], "nope", "missing model dir")
    expect_error([exe, "score", "--model", model, "--input", os.path.join(work, "none.st"),
                  "--output", out], "none.st", "missing input file")
    bad = os.path.join(work, "bad_dtype.safetensors")
    write_st(bad, {"input_ids": ("F32", [1, 2], struct.pack("<2f", 1, 2))})
    expect_error([exe, "score", "--model", model, "--input", bad, "--output", out],
                 "I64 [B,T]", "input_ids of the wrong dtype")
    noids = os.path.join(work, "noids.safetensors")
    write_st(noids, {"tokens": ids_tensor([[1, 2]])})
    expect_error([exe, "score", "--model", model, "--input", noids, "--output", out],
                 "input_ids", "input without input_ids")
    oor = os.path.join(work, "oor.safetensors")
    write_st(oor, {"input_ids": ids_tensor([[1, 99999]])})
    expect_error([exe, "score", "--model", model, "--input", oor, "--output", out],
                 "99999", "token id out of range")
    neg = os.path.join(work, "neg.safetensors")
    write_st(neg, {"input_ids": ids_tensor([[1, -3]])})
    expect_error([exe, "score", "--model", model, "--input", neg, "--output", out],
                 "-3", "negative token id")
    trunc = os.path.join(work, "trunc.safetensors")
    with open(good, "rb") as f:
        data = f.read()
    with open(trunc, "wb") as f:
        f.write(data[:-5])
    expect_error([exe, "score", "--model", model, "--input", trunc, "--output", out],
                 "trunc.safetensors", "truncated input file")
    unk = os.path.join(work, "unknown_model")
    os.makedirs(unk, exist_ok=True)
    with open(os.path.join(unk, "config.json"), "w") as f:
        json.dump({"model_type": "mamba"}, f)
    expect_error([exe, "score", "--model", unk, "--input", good, "--output", out],
                 "mamba", "unknown model type")
    expect_error([exe, "score", "--model", model, "--input", good, "--output",
                  os.path.join(work, "no", "such", "dir", "o.safetensors")],
                 "cannot create", "unwritable output")
    expect_error([exe, "generate", "--model", model, "--prompt-ids", "1,,2"], "prompt-ids",
                 "malformed prompt ids")
    expect_error([exe, "generate", "--model", model, "--prompt-ids", "1,2", "--top-p", "0"],
                 "top-p", "top-p 0")
    expect_error([exe, "generate", "--model", model, "--prompt-ids", "1,2", "-n", "-4"],
                 "not an integer", "negative -n")
    expect_error([exe, "generate", "--model", model, "--prompt-ids", "1,5000"], "5000",
                 "prompt id out of range")

    # Greedy generation must pick the argmax of score's logits at every step.
    prompt = [3, 14, 15, 92, 65]
    rc, gen_out, err = run([exe, "generate", "--model", model, "--prompt-ids",
                            ",".join(map(str, prompt)), "-n", "8", "--ignore-eos"])
    check(rc == 0, f"generate exits 0 (rc {rc})")
    gen = [int(t) for t in gen_out.strip().split(",")] if rc == 0 else []
    check(len(gen) == 8, f"generate printed 8 ids: {gen}")
    seq = prompt + gen
    inp = os.path.join(work, "gen_in.safetensors")
    write_st(inp, {"input_ids": ids_tensor([seq[:-1]])})
    rc, _, err = run([exe, "score", "--model", model, "--input", inp, "--output", out])
    check(rc == 0, "score of prompt+generation")
    if rc == 0 and len(gen) == 8:
        (b, t, v), vals = read_logits(out)
        agree = 0
        for i, tok in enumerate(gen):
            pos = len(prompt) - 1 + i
            row = vals[pos * v:(pos + 1) * v]
            agree += max(range(v), key=lambda j: (row[j], -j)) == tok
        check(agree == len(gen), f"greedy ids equal score argmax at {agree}/{len(gen)} steps")

    # Sampling is reproducible for a seed.
    args = [exe, "generate", "--model", model, "--prompt-ids", "1,2,3", "-n", "12",
            "--temperature", "0.9", "--top-p", "0.95", "--top-k", "50", "--seed", "7",
            "--ignore-eos"]
    a, b = run(args), run(args)
    check(a[0] == 0 and a[1] == b[1], "same seed, same sampled ids")

    # plan: JSON with the parameter counts, and clear errors for bad clusters
    root = os.path.dirname(os.path.dirname(fx))
    cfg = os.path.join(fx, "configs", "deepseek-v3.2.config.json")
    rc, out_json, err = run([exe, "plan", "--model", cfg, "--cluster",
                             os.path.join(root, "cluster-configs", "2x8-h100-80gb.yaml"),
                             "--weights", "fp8", "--json"])
    ok = rc == 0
    if ok:
        j = json.loads(out_json)
        ok = abs(j["params_total"] / 1e9 - 671.9) < 6.7 and abs(j["params_active"] / 1e9 - 37.5) < 0.4
        ok = ok and j["fits"] is True and len(j["ranks"]) == 16
    check(ok, "plan --json for DeepSeek-V3.2 on 2x8 H100 (fp8): counts, 16 ranks, fits")
    rc, text, err = run([exe, "plan", "--model", model, "--cluster",
                         os.path.join(root, "cluster-configs", "cpu-2ranks.yaml")])
    check(rc == 0 and "verdict" in text and "FITS" in text, "plan text output on a checkpoint dir")
    expect_error([exe, "plan", "--model", model, "--cluster",
                  os.path.join(fx, "clusters", "bad-ep.yaml")], "parallel.ep", "plan with a bad cluster")
    expect_error([exe, "plan", "--model", model, "--weights", "int3"], "--weights", "plan with a bad format")

    print(f"{failures} failures")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
