#!/usr/bin/env python3
"""`moecluster shard` / `verify`: per-rank folders that hold only their
rank's tensors, bit-identical logits from a one-rank shard set, resume after
an interruption, refusal of a different plan, checksum verification that
catches a flipped byte, FP8 conversion in both directions.

usage: test_shard.py MOECLUSTER FIXTURES_DIR REPO_ROOT WORK_DIR
"""
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


def run(args, env=None):
    e = dict(os.environ)
    e.update(env or {})
    p = subprocess.run(args, capture_output=True, text=True, timeout=600, env=e)
    return p.returncode, p.stdout, p.stderr


def read_logits(path):
    blob = open(path, "rb").read()
    (n,) = struct.unpack("<Q", blob[:8])
    info = json.loads(blob[8:8 + n])["logits"]
    b, e = info["data_offsets"]
    return struct.unpack(f"<{(e - b) // 4}f", blob[8 + n + b:8 + n + e])


def fp8_decode(b):
    s = -1.0 if b & 0x80 else 1.0
    e, m = (b >> 3) & 15, b & 7
    if e == 15 and m == 7:
        return float("nan")
    return s * (m / 8 * 2 ** -6 if e == 0 else (1 + m / 8) * 2 ** (e - 7))


def bf16_round(x):
    (u,) = struct.unpack("<I", struct.pack("<f", x))
    u = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    return struct.unpack("<f", struct.pack("<I", u << 16))[0]


def tensor(model_dir, name):
    """(values, shape): BF16/F32 as floats, F8_E4M3 as raw bytes."""
    idx = os.path.join(model_dir, "model.safetensors.index.json")
    fn = json.load(open(idx))["weight_map"][name] if os.path.exists(idx) else "model.safetensors"
    path = os.path.join(model_dir, fn)
    h = header(path)
    info = h[name]
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        f.seek(8 + n + info["data_offsets"][0])
        raw = f.read(info["data_offsets"][1] - info["data_offsets"][0])
    if info["dtype"] == "BF16":
        vals = [struct.unpack("<f", b"\0\0" + raw[i:i + 2])[0] for i in range(0, len(raw), 2)]
    elif info["dtype"] == "F32":
        vals = list(struct.unpack(f"<{len(raw) // 4}f", raw))
    else:
        vals = list(raw)
    return vals, info["shape"]


def header(path):
    blob = open(path, "rb").read(8)
    (n,) = struct.unpack("<Q", blob)
    with open(path, "rb") as f:
        f.seek(8)
        h = json.loads(f.read(n))
    h.pop("__metadata__", None)
    return h


def main():
    exe, fx, root, work = sys.argv[1:5]
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    clusters = os.path.join(root, "cluster-configs")
    model = os.path.join(fx, "models", "deepseek-v3-tiny")
    golden = os.path.join(model, "golden.safetensors")
    ref = os.path.join(work, "ref.safetensors")
    rc, _, err = run([exe, "score", "--model", model, "--input", golden, "--output", ref])
    check(rc == 0, "reference score")

    # DeepSeek-V4: one rank, bit-identical logits, verifies; parallel layouts refused
    v4 = os.path.join(fx, "models", "deepseek-v4-tiny")
    v4ref = os.path.join(work, "v4-ref.safetensors")
    v4out = os.path.join(work, "v4-out.safetensors")
    v4one = os.path.join(work, "v4-one")
    v4gold = os.path.join(v4, "golden.safetensors")
    rc0, _, _ = run([exe, "score", "--model", v4, "--input", v4gold, "--output", v4ref])
    rc, _, err = run([exe, "shard", "--model", v4, "--cluster",
                      os.path.join(clusters, "cpu-1rank.yaml"), "--out", v4one])
    check(rc0 == 0 and rc == 0, "deepseek-v4: shard for one rank" + ("" if rc == 0 else ": " + err[-300:]))
    rc, _, err = run([exe, "score", "--shards", v4one, "--input", v4gold, "--output", v4out])
    check(rc == 0 and open(v4out, "rb").read() == open(v4ref, "rb").read(),
          "deepseek-v4: score --shards (one rank) gives bit-identical logits")
    rc, txt, _ = run([exe, "verify", "--shards", v4one])
    check(rc == 0 and "match" in txt, "deepseek-v4: the one-rank shard set verifies")
    for cl in ("cpu-2ranks.yaml", "cpu-4ranks.yaml"):
        rc, _, err = run([exe, "shard", "--model", v4, "--cluster", os.path.join(clusters, cl),
                          "--out", os.path.join(work, "v4-multi")])
        check(rc != 0 and "DeepSeek-V4 runs on one rank" in err
              and not os.path.exists(os.path.join(work, "v4-multi", "manifest.json")),
              f"deepseek-v4: shard for {cl} refused clearly")
    rc, _, err = run([exe, "shard", "--model", v4, "--cluster", os.path.join(clusters, "cpu-1rank.yaml"),
                      "--out", os.path.join(work, "v4-q8"), "--weights", "q8_0"])
    check(rc != 0 and "BF16" in err, "deepseek-v4: --weights q8_0 refused (BF16 only)")

    # one rank: the shard set is the whole model, logits bit-identical
    one = os.path.join(work, "one")
    rc, _, err = run([exe, "shard", "--model", model, "--cluster",
                      os.path.join(clusters, "cpu-1rank.yaml"), "--out", one])
    check(rc == 0, "shard for one rank" + ("" if rc == 0 else ": " + err[-300:]))
    out = os.path.join(work, "out.safetensors")
    rc, _, err = run([exe, "score", "--model", os.path.join(one, "rank-00000"), "--input", golden,
                      "--output", out])
    check(rc == 0 and open(out, "rb").read() == open(ref, "rb").read(),
          "one-rank shard folder gives bit-identical logits")
    rc, _, err = run([exe, "score", "--shards", one, "--input", golden, "--output", out])
    check(rc == 0 and open(out, "rb").read() == open(ref, "rb").read(),
          "score --shards (one rank) gives bit-identical logits")
    rc, _, err = run([exe, "score", "--shards", model, "--input", golden, "--output", out])
    check(rc == 2 and "moecluster shard" in err, "--shards on a plain checkpoint is refused")
    rc, gen1, _ = run([exe, "generate", "--shards", one, "--prompt-ids", "5,6,7", "-n", "6", "--ignore-eos"])
    rc2, gen2, _ = run([exe, "generate", "--model", model, "--prompt-ids", "5,6,7", "-n", "6", "--ignore-eos"])
    check(rc == 0 and rc2 == 0 and gen1 == gen2, "generate --shards equals generate --model")
    rc, txt, _ = run([exe, "verify", "--shards", one])
    check(rc == 0 and "match" in txt, "verify passes on a fresh shard set")

    # four ranks (tp 2, dp 2, ep 4): each rank holds only its experts and TP slices
    four = os.path.join(work, "four")
    rc, _, err = run([exe, "shard", "--model", model, "--cluster",
                      os.path.join(clusters, "cpu-4ranks.yaml"), "--out", four])
    check(rc == 0, "shard for 4 ranks")
    man = json.load(open(os.path.join(four, "manifest.json")))
    check(man["world"] == 4 and len(man["ranks"]) == 4, "manifest lists 4 ranks")
    src_index = json.load(open(os.path.join(model, "model.safetensors.index.json")))["weight_map"]
    experts_seen = {}
    ok_only_own = True
    for r in range(4):
        h = header(os.path.join(four, f"rank-{r:05d}", "model.safetensors"))
        exp = sorted({int(n.split(".")[5]) for n in h if ".mlp.experts." in n})
        experts_seen[r] = exp
        ok_only_own &= exp == list(range(4 * (r % 4), 4 * (r % 4) + 4))
        qb = h["model.layers.0.self_attn.q_b_proj.weight"]["shape"]
        ok_only_own &= qb == [96, 96]  # 4 heads x 48 split over tp 2
        ok_only_own &= set(h) <= set(src_index)
    check(ok_only_own, f"each rank holds only its 4 experts and its TP slices: {experts_seen}")
    total = sum(os.path.getsize(os.path.join(four, f"rank-{r:05d}", "model.safetensors"))
                for r in range(4))
    check(total < 3 * sum(os.path.getsize(os.path.join(model, f)) for f in os.listdir(model)
                          if f.startswith("model-")), "4 ranks hold much less than 4 copies")

    # interruption and resume (two pipeline stages: the first stage completes)
    pp2 = os.path.join(fx, "clusters", "tiny-pp2.yaml")
    clean = os.path.join(work, "clean")
    run([exe, "shard", "--model", model, "--cluster", pp2, "--out", clean])
    sizes = {"BF16": 2, "F32": 4, "F8_E4M3": 1}
    stage0 = 0
    for t in json.load(open(os.path.join(clean, "manifest.json")))["ranks"][0]["tensors"]:
        n = sizes[t["dtype"]]
        for s in t["shape"]:
            n *= s
        stage0 += n
    res = os.path.join(work, "resume")
    rc, _, err = run([exe, "shard", "--model", model, "--cluster", pp2, "--out", res],
                     env={"MC_SHARD_FAIL_AFTER_BYTES": str(stage0 + 20000)})
    partial = [f for f in os.listdir(os.path.join(res, "rank-00001")) if f.endswith(".partial")]
    check(rc != 0 and not os.path.exists(os.path.join(res, "manifest.json")) and partial,
          "an interrupted run leaves partial files and no manifest")
    done0 = os.path.exists(os.path.join(res, "rank-00000", "tensors.json"))
    check(done0, "the first stage completed before the interruption")
    mtime0 = os.path.getmtime(os.path.join(res, "rank-00000", "model.safetensors"))
    rc, _, err = run([exe, "shard", "--model", model, "--cluster", pp2, "--out", res])
    check(rc == 0 and os.path.exists(os.path.join(res, "manifest.json")), "the rerun completes")
    check(os.path.getmtime(os.path.join(res, "rank-00000", "model.safetensors")) == mtime0,
          "the rerun skips the completed rank")
    same = all(open(os.path.join(res, f"rank-{r:05d}", "model.safetensors"), "rb").read() ==
               open(os.path.join(clean, f"rank-{r:05d}", "model.safetensors"), "rb").read()
               for r in range(2))
    check(same, "a resumed set equals an uninterrupted one byte for byte")

    # another plan into the same folder is refused
    rc, _, err = run([exe, "shard", "--model", model, "--cluster",
                      os.path.join(clusters, "cpu-2ranks.yaml"), "--out", res])
    check(rc == 1 and "different plan" in err, "a different plan in --out is refused")

    # verify catches a flipped byte
    victim = os.path.join(res, "rank-00001", "model.safetensors")
    data = bytearray(open(victim, "rb").read())
    data[-100] ^= 0x40
    open(victim, "wb").write(bytes(data))
    rc, _, err = run([exe, "verify", "--shards", res])
    check(rc == 1 and "checksum" in err, "verify reports a corrupted tensor")

    # FP8 source: cut on 128 blocks or refuse; --weights bf16 dequantizes exactly
    f8 = os.path.join(fx, "models", "deepseek-v3-tiny-fp8")
    rc, _, err = run([exe, "shard", "--model", f8, "--cluster",
                      os.path.join(clusters, "cpu-4ranks.yaml"), "--out", os.path.join(work, "f8x")])
    check(rc == 1 and "block boundary" in err, "FP8 TP cut off a 128 block is refused")
    d16 = os.path.join(work, "f8-bf16")
    rc, _, err = run([exe, "shard", "--model", f8, "--cluster",
                      os.path.join(clusters, "cpu-1rank.yaml"), "--out", d16, "--weights", "bf16"])
    f8ref = os.path.join(work, "f8ref.safetensors")
    run([exe, "score", "--model", f8, "--input", os.path.join(f8, "golden.safetensors"),
         "--output", f8ref])
    # the BF16 weights are the FP8 values times their block scales, rounded to BF16
    name = "model.layers.0.mlp.down_proj.weight"
    w8, sh = tensor(f8, name)
    sc, ssh = tensor(f8, name + "_scale_inv")
    w16, sh16 = tensor(os.path.join(d16, "rank-00000"), name)
    R, C = sh
    exact = rc == 0 and sh16 == sh and all(
        w16[r * C + c] == bf16_round(fp8_decode(w8[r * C + c]) * sc[(r // 128) * ssh[1] + c // 128])
        for r in range(R) for c in range(C))
    check(exact, "FP8 -> BF16: every weight is bf16(fp8 x block scale)")
    # BF16 -> FP8: per-block scale amax/448, each weight within half an e4m3 step
    q8 = os.path.join(work, "to-fp8")
    rc, _, err = run([exe, "shard", "--model", model, "--cluster",
                      os.path.join(clusters, "cpu-1rank.yaml"), "--out", q8, "--weights", "fp8"])
    w, (R, C) = tensor(model, name)
    q, _ = tensor(os.path.join(q8, "rank-00000"), name)
    s, ssh = tensor(os.path.join(q8, "rank-00000"), name + "_scale_inv")
    ok = rc == 0
    worst = 0.0
    for br in range(ssh[0]):
        for bc in range(ssh[1]):
            cells = [(r, c) for r in range(br * 128, min(R, br * 128 + 128))
                     for c in range(bc * 128, min(C, bc * 128 + 128))]
            amax = max(abs(w[r * C + c]) for r, c in cells)
            scale = s[br * ssh[1] + bc]
            ok &= abs(scale - amax / 448) <= 1e-6 * amax
            for r, c in cells:
                x, y = w[r * C + c], fp8_decode(q[r * C + c]) * scale
                bound = max(abs(x) / 16, scale / 1024) * (1 + 1e-6)
                worst = max(worst, abs(x - y) / bound)
                ok &= abs(x - y) <= bound
    check(ok, f"BF16 -> FP8: block scales amax/448, every weight within half a step (worst {worst:.2f} of the bound)")
    rc2, _, err2 = run([exe, "score", "--model", os.path.join(q8, "rank-00000"), "--input", golden,
                        "--output", out])
    check(rc2 == 0 and all(math.isfinite(v) for v in read_logits(out)), "FP8 shards run through score")
    # Q8_0 / Q4_K (llama.cpp blocks): the rule plan counts with, decodable blocks, a working model
    qm = os.path.join(fx, "models", "qwen3-moe-tiny")
    qref = os.path.join(work, "qref.safetensors")
    run([exe, "score", "--model", qm, "--input", os.path.join(qm, "golden.safetensors"), "--output", qref])
    for fmt in ("q8_0", "q4_k"):
        d = os.path.join(work, "to-" + fmt)
        rc, _, err = run([exe, "shard", "--model", qm, "--cluster",
                          os.path.join(clusters, "cpu-1rank.yaml"), "--out", d, "--weights", fmt])
        check(rc == 0, f"shard --weights {fmt}" + ("" if rc == 0 else ": " + err[-200:]))
        if rc != 0:
            continue
        h = header(os.path.join(d, "rank-00000", "model.safetensors"))
        gate = h["model.layers.0.mlp.experts.0.gate_proj.weight"]   # rows of 256: Q4_K possible
        down = h["model.layers.0.mlp.experts.0.down_proj.weight"]   # rows of 64: Q8_0 at most
        want_gate = "Q4_K" if fmt == "q4_k" else "Q8_0"
        check(gate["dtype"] == want_gate and down["dtype"] == "Q8_0"
              and h["lm_head.weight"]["dtype"] == want_gate
              and h["model.embed_tokens.weight"]["dtype"] == "BF16"
              and h["model.layers.0.mlp.gate.weight"]["dtype"] == "BF16",
              f"{fmt}: formats follow the fallback rule (gate {gate['dtype']}, down {down['dtype']}); "
              "embeddings and routers stay BF16")
        rows, cols = down["shape"]
        check(down["data_offsets"][1] - down["data_offsets"][0] == rows * cols // 32 * 34,
              f"{fmt}: Q8_0 rows of 34-byte blocks")
        if fmt == "q8_0":
            # decode the Q8_0 blocks of one tensor and bound them against the BF16 weights
            name = "model.layers.0.self_attn.q_proj.weight"
            w, (R, C) = tensor(qm, name)
            path = os.path.join(d, "rank-00000", "model.safetensors")
            info = header(path)[name]
            with open(path, "rb") as f:
                (n,) = struct.unpack("<Q", f.read(8))
                f.seek(8 + n + info["data_offsets"][0])
                raw = f.read(info["data_offsets"][1] - info["data_offsets"][0])
            ok = True
            for b in range(R * C // 32):
                blk = raw[b * 34:(b + 1) * 34]
                dsc = struct.unpack("<e", blk[:2])[0]
                qs = struct.unpack("<32b", blk[2:])
                xs = w[b * 32:(b + 1) * 32]
                amax = max(abs(x) for x in xs)
                ok &= abs(dsc - amax / 127) <= 1e-3 * amax / 127 + 1e-12
                # q = round(x / (amax/127)); d is stored as f16, which moves each value by |q| * |d - amax/127|
                slack = 127 * abs(dsc - amax / 127)
                ok &= all(abs(x - dsc * q) <= dsc * 0.5 + slack + 1e-9 for x, q in zip(xs, qs))
            check(ok, "q8_0: d = amax/127 per 32 weights, every weight within half a step")
        out2 = os.path.join(work, fmt + ".safetensors")
        rc, _, err = run([exe, "score", "--model", os.path.join(d, "rank-00000"), "--input",
                          os.path.join(qm, "golden.safetensors"), "--output", out2])
        a, b = read_logits(out2) if rc == 0 else [0.0], read_logits(qref)
        num = sum((x - y) ** 2 for x, y in zip(a, b)) ** 0.5
        den = sum(y * y for y in b) ** 0.5
        # load-time quantization (--weights) writes the same blocks as shard --weights
        out3 = os.path.join(work, fmt + "-load.safetensors")
        rc3, _, _ = run([exe, "score", "--model", qm, "--weights", fmt, "--input",
                         os.path.join(qm, "golden.safetensors"), "--output", out3])
        check(rc == 0 and rc3 == 0 and open(out2, "rb").read() == open(out3, "rb").read(),
              f"{fmt}: score --weights {fmt} is bit-identical to the {fmt} shard set")
        bound = 0.1 if fmt == "q8_0" else 0.6   # random-weight routing flips; see docs/kernels.md
        check(rc == 0 and num / den < bound, f"{fmt} shards score within {bound} of BF16 (rel {num / den:.3f})")

    print(f"{failures} failures")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
