#!/usr/bin/env python3
"""`moecluster synth`: what it writes loads and runs through `score` (and
`plan`), for every family's on-disk format; --layers cuts depth only; the
output is a function of the seed; bad requests are refused.

usage: test_synth.py MOECLUSTER FIXTURES_DIR WORK_DIR
"""
import hashlib
import json
import math
import os
import shutil
import struct
import subprocess
import sys

failures = 0


def check(cond, what):
    global failures
    print(("ok: " if cond else "FAIL: ") + what)
    if not cond:
        failures += 1


def run(args):
    p = subprocess.run(args, capture_output=True, text=True, timeout=600)
    return p.returncode, p.stdout, p.stderr


def write_ids(path, rows):
    data = b"".join(struct.pack("<q", t) for r in rows for t in r)
    h = json.dumps({"input_ids": {"dtype": "I64", "shape": [len(rows), len(rows[0])],
                                  "data_offsets": [0, len(data)]}}).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + data)


def logits_finite(path):
    blob = open(path, "rb").read()
    (n,) = struct.unpack("<Q", blob[:8])
    info = json.loads(blob[8:8 + n])["logits"]
    b, e = info["data_offsets"]
    vals = struct.unpack(f"<{(e - b) // 4}f", blob[8 + n + b:8 + n + e])
    return all(math.isfinite(v) for v in vals) and max(abs(v) for v in vals) > 0


def st_headers(d):
    """{name: (dtype, shape)} over every model*.safetensors / consolidated* file of d."""
    out = {}
    for f in sorted(os.listdir(d)):
        if f.endswith(".safetensors") and f.startswith(("model", "consolidated")):
            with open(os.path.join(d, f), "rb") as fh:
                (n,) = struct.unpack("<Q", fh.read(8))
                for k, v in json.loads(fh.read(n)).items():
                    if k != "__metadata__":
                        out[k] = (v["dtype"], v["shape"])
    return out


def st_i64(d, name):
    """The values of I64 tensor `name` of checkpoint d."""
    idx = json.load(open(os.path.join(d, "model.safetensors.index.json")))["weight_map"]
    blob = open(os.path.join(d, idx[name]), "rb").read()
    (n,) = struct.unpack("<Q", blob[:8])
    b, e = json.loads(blob[8:8 + n])[name]["data_offsets"]
    return struct.unpack(f"<{(e - b) // 8}q", blob[8 + n + b:8 + n + e])


def digest(d):
    h = hashlib.sha256()
    for name in sorted(os.listdir(d)):
        h.update(name.encode())
        h.update(open(os.path.join(d, name), "rb").read())
    return h.hexdigest()


def main():
    exe, fx, work = sys.argv[1:4]
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    ids = os.path.join(work, "ids.safetensors")
    write_ids(ids, [[1, 5, 9, 200, 7, 3]])
    out = os.path.join(work, "out.safetensors")
    models = ["deepseek-v3-tiny", "deepseek-v32-tiny", "qwen3-moe-tiny", "llama4-tiny",
              "mistral4-tiny", "deepseek-v4-tiny"]
    for m in models:
        d = os.path.join(work, m)
        rc, _, err = run([exe, "synth", "--config", os.path.join(fx, "models", m, "config.json"),
                          "--out", d, "--max-file-gib", "0.002", "--seed", "3"])
        check(rc == 0, f"synth {m}" + ("" if rc == 0 else ": " + err.strip()[-300:]))
        files = [f for f in os.listdir(d) if f.endswith(".safetensors")] if rc == 0 else []
        check(len(files) > 1, f"{m}: weights split over {len(files)} files with an index")
        rc, _, err = run([exe, "score", "--model", d, "--input", ids, "--output", out,
                          "--decode-from", "3"])
        check(rc == 0 and logits_finite(out), f"{m}: synthetic checkpoint runs through score")
        # same tensor names and shapes as the reference checkpoint
        ref = json.load(open(os.path.join(fx, "models", m, "model.safetensors.index.json")))
        syn = json.load(open(os.path.join(d, "model.safetensors.index.json")))
        check(set(ref["weight_map"]) == set(syn["weight_map"]),
              f"{m}: the same tensor names as the real checkpoint")
        rc, pj, _ = run([exe, "plan", "--model", d, "--json"])
        rc2, pr, _ = run([exe, "plan", "--model", os.path.join(fx, "models", m), "--json"])
        check(rc == 0 and rc2 == 0 and json.loads(pj)["params_total"] == json.loads(pr)["params_total"],
              f"{m}: plan counts the same parameters as for the real checkpoint")

    # DeepSeek-V4: every tensor with the fixture's dtype and shape (tid2eid I64, rest BF16);
    # hash tables map each token to distinct experts; BF16 only; --layers trims layer lists
    v4 = os.path.join(work, "deepseek-v4-tiny")
    ref_dir = os.path.join(fx, "models", "deepseek-v4-tiny")
    want, have = st_headers(ref_dir), st_headers(v4)
    bad = [k for k in sorted(set(want) | set(have)) if want.get(k) != have.get(k)]
    check(not bad, "deepseek-v4-tiny: every tensor has the fixture's dtype and shape"
          + ("" if not bad else f" (first: {bad[0]}: {want.get(bad[0])} vs {have.get(bad[0])})"))
    rows = st_i64(v4, "model.layers.0.ffn.gate.tid2eid")
    check(len(rows) == 1024 * 4 and all(0 <= e < 16 for e in rows)
          and all(len(set(rows[i:i + 4])) == 4 for i in range(0, len(rows), 4)),
          "deepseek-v4-tiny: tid2eid rows hold 4 distinct experts of 16")
    rc, _, err = run([exe, "synth", "--config", os.path.join(ref_dir, "config.json"), "--out",
                      os.path.join(work, "v4-fp8"), "--weights", "fp8"])
    check(rc != 0 and "BF16" in err, "deepseek-v4: synth --weights fp8 refused (BF16 only)")
    d = os.path.join(work, "v4-cut")
    rc, _, _ = run([exe, "synth", "--config", os.path.join(ref_dir, "config.json"), "--out", d,
                    "--layers", "2"])
    cfg = json.load(open(os.path.join(d, "config.json"))) if rc == 0 else {}
    check(rc == 0 and cfg.get("num_hidden_layers") == 2 and len(cfg.get("layer_types", [])) == 2
          and len(cfg.get("mlp_layer_types", [])) == 2, "deepseek-v4 --layers 2: layer lists trimmed")
    rc, _, _ = run([exe, "score", "--model", d, "--input", ids, "--output", out])
    check(rc == 0 and logits_finite(out), "deepseek-v4 --layers 2 checkpoint runs through score")

    # a synthetic checkpoint goes through shard and verify like a real one
    root = os.path.dirname(os.path.dirname(fx))
    sd = os.path.join(work, "synth-shards")
    rc, _, err = run([exe, "shard", "--model", os.path.join(work, "deepseek-v3-tiny"), "--cluster",
                      os.path.join(root, "cluster-configs", "cpu-4ranks.yaml"), "--out", sd])
    rc2, txt, _ = run([exe, "verify", "--shards", sd])
    check(rc == 0 and rc2 == 0 and "match" in txt, "synthetic checkpoint shards for 4 ranks and verifies")

    # Mistral's native format from a params.json
    conv = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "golden",
                        "convert_fixture.py")
    nat = os.path.join(work, "native-src")
    subprocess.run([sys.executable, conv, "mistral-native", os.path.join(fx, "models", "mistral4-tiny"),
                    nat], check=True)
    d = os.path.join(work, "native")
    rc, _, err = run([exe, "synth", "--config", os.path.join(nat, "params.json"), "--out", d,
                      "--max-file-gib", "0.002"])
    files = sorted(os.listdir(d)) if rc == 0 else []
    check(rc == 0 and "params.json" in files and any(f.startswith("consolidated-") for f in files),
          "synth from params.json writes params.json + consolidated-*.safetensors")
    rc, _, err = run([exe, "score", "--model", d, "--input", ids, "--output", out])
    check(rc == 0 and logits_finite(out), "native synthetic checkpoint runs through score")

    # FP8 in DeepSeek's block format
    d = os.path.join(work, "fp8")
    rc, _, err = run([exe, "synth", "--config", os.path.join(fx, "models", "deepseek-v3-tiny", "config.json"),
                      "--out", d, "--weights", "fp8"])
    check(rc == 0, "synth --weights fp8")
    idx = json.load(open(os.path.join(d, "model.safetensors.index.json")))["weight_map"] if rc == 0 else {}
    check(any(k.endswith("weight_scale_inv") for k in idx), "fp8: block scales written")
    cfg = json.load(open(os.path.join(d, "config.json"))) if rc == 0 else {}
    check(cfg.get("quantization_config", {}).get("weight_block_size") == [128, 128],
          "fp8: quantization_config with weight_block_size")
    rc, _, err = run([exe, "score", "--model", d, "--input", ids, "--output", out])
    check(rc == 0 and logits_finite(out), "fp8 synthetic checkpoint runs through score")

    # --layers keeps width, cuts depth
    d = os.path.join(work, "cut")
    rc, _, _ = run([exe, "synth", "--config", os.path.join(fx, "models", "llama4-tiny", "config.json"),
                    "--out", d, "--layers", "2"])
    cfg = json.load(open(os.path.join(d, "config.json"))) if rc == 0 else {}
    check(rc == 0 and cfg.get("num_hidden_layers") == 2 and cfg.get("hidden_size") == 256
          and cfg.get("moe_layers") == [1] and len(cfg.get("no_rope_layers", [])) == 2,
          "--layers 2: depth cut, width kept, per-layer lists trimmed")
    rc, _, _ = run([exe, "score", "--model", d, "--input", ids, "--output", out])
    check(rc == 0 and logits_finite(out), "--layers 2 checkpoint runs through score")

    # the seed decides the bytes
    a, b, c = (os.path.join(work, x) for x in ("s1a", "s1b", "s2"))
    cfgp = os.path.join(fx, "models", "qwen3-moe-tiny", "config.json")
    for dd, s in ((a, "1"), (b, "1"), (c, "2")):
        run([exe, "synth", "--config", cfgp, "--out", dd, "--seed", s])
    check(digest(a) == digest(b), "same seed, identical files")
    check(digest(a) != digest(c), "another seed, other weights")

    # refusals
    def refused(args, needle, what):
        rc, _, err = run(args)
        check(0 < rc < 128 and needle in err, f"{what}: exit {rc}, '{needle}' in the message")
    refused([exe, "synth", "--config", cfgp, "--out", os.path.join(work, "x"), "--layers", "9"],
            "--layers", "more layers than the model has")
    refused([exe, "synth", "--config", os.path.join(fx, "models", "llama4-tiny", "config.json"),
             "--out", os.path.join(work, "y"), "--weights", "fp8"], "fp8", "fp8 for Llama 4")
    refused([exe, "synth", "--config", os.path.join(work, "nope.json"), "--out",
             os.path.join(work, "z")], "nope.json", "missing config")
    refused([exe, "synth", "--config", cfgp], "--out", "no --out")
    print(f"{failures} failures")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
