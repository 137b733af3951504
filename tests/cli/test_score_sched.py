#!/usr/bin/env python3
"""`score` through the scheduler: every step budget and KV block size gives
the logits of the default run, ragged batches match the full rows, and
DeepSeek-V4 (its own stack) and a run with --stats match their golden logits.

- --max-batch-tokens 1, 3, 7, T and --kv-block-size 1, 3, 16 (with and
  without --decode-from T/2) equal the default run within 1e-6 relative
  (per position, ||a - b|| / ||b|| over the vocabulary, as compare_logits);
- the default run itself equals the golden logits of the fixture (compare_logits);
- a `lengths` tensor: positions < lengths[b] equal the unragged run within
  1e-6, positions past it are exactly 0;
- a bad `lengths` (dtype, shape, 0, > T) and bad option values exit non-zero
  with a clear message;
- deepseek-v4-tiny and qwen3-moe-tiny --stats match their golden logits.

usage: test_score_sched.py MOECLUSTER COMPARE_LOGITS FIXTURES WORK_DIR
"""
import json
import os
import struct
import subprocess
import sys

failures = 0
REL = 1e-6


def check(cond, what, detail=""):
    global failures
    if cond:
        print(f"ok: {what}")
    else:
        failures += 1
        print(f"FAIL: {what}" + (f"\n   {detail}" if detail else ""))


def read_st(path):
    blob = open(path, "rb").read()
    (n,) = struct.unpack("<Q", blob[:8])
    head = json.loads(blob[8:8 + n])
    out = {}
    for name, info in head.items():
        if name == "__metadata__":
            continue
        b, e = info["data_offsets"]
        fmt = {"F32": "f", "I64": "q"}[info["dtype"]]
        size = {"f": 4, "q": 8}[fmt]
        out[name] = (info["shape"], struct.unpack(f"<{(e - b) // size}{fmt}",
                                                  blob[8 + n + b:8 + n + e]))
    return out


def write_st(path, tensors):
    header, off, blobs = {}, 0, []
    for name, (dtype, shape, data) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [off, off + len(data)]}
        off += len(data)
        blobs.append(data)
    h = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def i64(shape, vals):
    return ("I64", shape, b"".join(struct.pack("<q", v) for v in vals))


def run(args, timeout=300):
    p = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    return p.returncode, p.stdout, p.stderr


def score(exe, model, inp, out, opts):
    if os.path.exists(out):
        os.remove(out)
    rc, _, err = run([exe, "score", "--model", model, "--input", inp, "--output", out] + opts)
    check(rc == 0, f"score {' '.join(opts) or '(defaults)'}: exit 0 (rc {rc})", err.strip()[-400:])
    return read_st(out)["logits"] if rc == 0 else None


def compare(got, ref, what, mask=None):
    """got vs ref ([B, T, V], flat), per position as compare_logits measures:
    ||got - ref|| / ||ref|| <= REL over the V logits, where mask(b, t)
    (default: everywhere); elsewhere got must be exactly 0. Prints the
    largest element difference and the first mismatching positions."""
    if got is None or ref is None:
        check(False, what, "no logits")
        return
    (B, T, V), g, r = got[0], got[1], ref[1]
    worst, worst_abs, bad, zeros_bad = 0.0, 0.0, [], []
    for b in range(B):
        for t in range(T):
            base = (b * T + t) * V
            if mask and not mask(b, t):
                if any(g[base + v] != 0.0 for v in range(V)):
                    zeros_bad.append((b, t))
                continue
            num = den = 0.0
            for v in range(V):
                d = g[base + v] - r[base + v]
                num += d * d
                den += r[base + v] * r[base + v]
                worst_abs = max(worst_abs, abs(d))
            e = (num / (den if den > 0 else 1.0)) ** 0.5
            worst = max(worst, e)
            if e > REL and len(bad) < 5:
                bad.append(f"[{b},{t}] rel {e:.3g} (logit 0: {g[base]!r} vs {r[base]!r})")
    detail = "; ".join(bad) + (f"; nonzero past the length at {zeros_bad[:5]}" if zeros_bad else "")
    check(worst <= REL and not zeros_bad,
          f"{what}: max rel err {worst:.3g} (max abs diff {worst_abs:.3g})", detail)


def expect_error(args, needle, what):
    rc, _, err = run(args)
    ok = 0 < rc < 128 and needle in err
    check(ok, f"{what}: exit {rc}, message contains '{needle}'", err.strip()[:300])


def golden(compare_exe, out, gold, what):
    p = subprocess.run([compare_exe, out, gold, "1e-4", "0.99"], capture_output=True, text=True)
    check(p.returncode == 0, f"{what}: matches the golden logits",
          (p.stdout + p.stderr).strip()[-400:])


def model_cases(exe, cmp_exe, fx, work, name):
    model = os.path.join(fx, "models", name)
    gold = os.path.join(model, "golden.safetensors")
    (B, T), ids = read_st(gold)["input_ids"]
    out = os.path.join(work, f"{name}.safetensors")
    ref = score(exe, model, gold, out, [])
    if ref is not None:
        golden(cmp_exe, out, gold, f"{name} default run")
    half = ["--decode-from", str(T // 2)]
    ref_dec = score(exe, model, gold, out, half)
    for mbt in (1, 3, 7, T):
        for extra, r in (([], ref), (half, ref_dec)):
            opts = ["--max-batch-tokens", str(mbt)] + extra
            compare(score(exe, model, gold, out, opts), r, f"{name} {' '.join(opts)}")
    for bs in (1, 3, 16):
        opts = ["--kv-block-size", str(bs), "--max-batch-tokens", "5"]
        compare(score(exe, model, gold, out, opts), ref, f"{name} {' '.join(opts)}")
    # ragged: lengths T, 1 and a middle value (as many rows as B has)
    lens = [[T, 1, T // 2 + 3][b % 3] for b in range(B)]
    rag = os.path.join(work, f"{name}.ragged.safetensors")
    write_st(rag, {"input_ids": i64([B, T], ids), "lengths": i64([B], lens)})
    mask = lambda b, t: t < lens[b]  # noqa: E731
    for opts in ([], ["--max-batch-tokens", "3", "--kv-block-size", "3"], half):
        compare(score(exe, model, rag, out, opts), ref if opts != half else ref_dec,
                f"{name} ragged {lens} {' '.join(opts)}", mask)


def errors(exe, fx, work):
    model = os.path.join(fx, "models", "qwen3-moe-tiny")
    out = os.path.join(work, "err.safetensors")
    ids = [1, 2, 3, 4, 5, 6, 7, 8]
    cases = {
        "zero": ({"lengths": i64([2], [4, 0])}, "'lengths'[1] = 0"),
        "past": ({"lengths": i64([2], [5, 4])}, "'lengths'[0] = 5"),
        "shape": ({"lengths": i64([3], [1, 1, 1])}, "'lengths' must be I64 [B]"),
        "dtype": ({"lengths": ("F32", [2], struct.pack("<2f", 1, 2))}, "'lengths' must be I64 [B]"),
    }
    for tag, (extra, needle) in cases.items():
        p = os.path.join(work, f"bad_{tag}.safetensors")
        write_st(p, dict({"input_ids": i64([2, 4], ids)}, **extra))
        expect_error([exe, "score", "--model", model, "--input", p, "--output", out], needle,
                     f"lengths {tag}")
    good = os.path.join(work, "good.safetensors")
    write_st(good, {"input_ids": i64([2, 4], ids)})
    for flag, val in (("--max-batch-tokens", "0"), ("--max-batch-tokens", "x"),
                      ("--kv-block-size", "0"), ("--kv-block-size", "4096")):
        expect_error([exe, "score", "--model", model, "--input", good, "--output", out, flag, val],
                     flag, f"{flag} {val}")


def main():
    exe, cmp_exe, fx, work = sys.argv[1:5]
    os.makedirs(work, exist_ok=True)
    for name in ("qwen3-moe-tiny", "deepseek-v3-tiny"):
        model_cases(exe, cmp_exe, fx, work, name)
    errors(exe, fx, work)
    # deepseek-v4-tiny (its own stack on the executor) and a run counting --stats
    for name, opts in (("deepseek-v4-tiny", []), ("qwen3-moe-tiny", ["--stats"])):
        model = os.path.join(fx, "models", name)
        gold = os.path.join(model, "golden.safetensors")
        out = os.path.join(work, f"{name}.other.safetensors")
        if score(exe, model, gold, out, opts) is not None:
            golden(cmp_exe, out, gold, f"{name} {' '.join(opts)}")
    print(f"{failures} failure(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
