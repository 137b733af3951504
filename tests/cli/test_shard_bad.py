#!/usr/bin/env python3
"""Damaged and stale shard sets: `score --shards` checks each rank's tensors
against the manifest at load (--no-verify skips it); a rerun of `shard`
never mixes ranks cut from another source or plan; `verify` checks the
manifest against the plan and the files, so edits to it are caught.

usage: test_shard_bad.py MOECLUSTER FIXTURES_DIR REPO_ROOT WORK_DIR
"""
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import time

failures = 0


def check(cond, what, detail=""):
    global failures
    print(("ok: " if cond else "FAIL: ") + what + ("" if cond or not detail else "\n    " + detail))
    if not cond:
        failures += 1


def run(args, env=None):
    e = dict(os.environ)
    e.update(env or {})
    p = subprocess.run(args, capture_output=True, text=True, timeout=120, env=e)
    return p.returncode, p.stdout, p.stderr


M64 = (1 << 64) - 1
P1, P2, P3 = 11400714785074694791, 14029467366897019727, 1609587929392839161
P4, P5 = 9650029242287828579, 2870177450012600261


def xxh64(data, seed=0):
    """XXH64 from its specification (to check the engine's hashes independently)."""
    def rotl(x, r):
        return ((x << r) | (x >> (64 - r))) & M64

    def rnd(acc, v):
        return (rotl((acc + v * P2) & M64, 31) * P1) & M64

    def merge(acc, v):
        return (((acc ^ rnd(0, v)) * P1) + P4) & M64

    n, i = len(data), 0
    if n >= 32:
        v = [(seed + P1 + P2) & M64, (seed + P2) & M64, seed, (seed - P1) & M64]
        while i + 32 <= n:
            for k, x in enumerate(struct.unpack_from("<4Q", data, i)):
                v[k] = rnd(v[k], x)
            i += 32
        h = (rotl(v[0], 1) + rotl(v[1], 7) + rotl(v[2], 12) + rotl(v[3], 18)) & M64
        for x in v:
            h = merge(h, x)
    else:
        h = (seed + P5) & M64
    h = (h + n) & M64
    while i + 8 <= n:
        h ^= rnd(0, struct.unpack_from("<Q", data, i)[0])
        h = (rotl(h, 27) * P1 + P4) & M64
        i += 8
    if i + 4 <= n:
        h ^= (struct.unpack_from("<I", data, i)[0] * P1) & M64
        h = (rotl(h, 23) * P2 + P3) & M64
        i += 4
    while i < n:
        h ^= (data[i] * P5) & M64
        h = (rotl(h, 11) * P1) & M64
        i += 1
    h ^= h >> 33
    h = (h * P2) & M64
    h ^= h >> 29
    h = (h * P3) & M64
    return h ^ (h >> 32)


def span(path, name):
    """(offset, length) of a tensor's bytes in a safetensors file."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        b, e = json.loads(f.read(n))[name]["data_offsets"]
    return 8 + n + b, e - b


def patch(path, off, data):
    with open(path, "r+b") as f:
        f.seek(off)
        f.write(data)


def read(path, off, n):
    with open(path, "rb") as f:
        f.seek(off)
        return f.read(n)


def manifest_hash(d, rank, name):
    for t in json.load(open(os.path.join(d, "manifest.json")))["ranks"][rank]["tensors"]:
        if t["name"] == name:
            return t["xxh64"]
    return None


def files_of(d):
    out = {}
    for root, _, fs in os.walk(d):
        for f in fs:
            if f.endswith(".safetensors"):
                p = os.path.join(root, f)
                out[os.path.relpath(p, d)] = open(p, "rb").read()
    return out


def main():
    exe, fx, root, work = sys.argv[1:5]
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    model = os.path.join(fx, "models", "deepseek-v3-tiny")
    golden = os.path.join(model, "golden.safetensors")
    one_rank = os.path.join(root, "cluster-configs", "cpu-1rank.yaml")
    pp2 = os.path.join(fx, "clusters", "tiny-pp2.yaml")
    out = os.path.join(work, "logits.safetensors")
    norm = "model.layers.1.input_layernorm.weight"
    expert = "model.layers.2.mlp.experts.5.down_proj.weight"

    # ---- load-time check: a flipped bit in a rank file ----
    one = os.path.join(work, "one")
    rc, _, err = run([exe, "shard", "--model", model, "--cluster", one_rank, "--out", one])
    check(rc == 0, "shard for one rank", err[-300:])
    rf = os.path.join(one, "rank-00000", "model.safetensors")
    off, n = span(rf, norm)
    want = manifest_hash(one, 0, norm)
    check(want == "%016x" % xxh64(read(rf, off, n)),
          "the manifest's xxh64 of an intact tensor equals XXH64 of its bytes", f"{want}")
    clean_bytes = open(rf, "rb").read()
    eo, en = span(rf, expert)
    patch(rf, eo + en // 2, bytes([read(rf, eo + en // 2, 1)[0] ^ 0x10]))
    got = "%016x" % xxh64(read(rf, eo, en))
    rc, _, err = run([exe, "score", "--shards", one, "--input", golden, "--output", out])
    check(rc == 1 and expert in err and "rank-00000/model.safetensors" in err and got in err
          and manifest_hash(one, 0, expert) in err and err.count("\n") == 1,
          "score --shards refuses a flipped bit: one line naming rank folder, file, tensor and "
          "both hashes", err)
    check(not os.path.exists(out), "no output is written for a corrupted set")
    rc, _, err = run([exe, "generate", "--shards", one, "--prompt-ids", "1,2", "-n", "2"])
    check(rc == 1 and expert in err, "generate --shards refuses it too", err)
    rc, _, err = run([exe, "score", "--shards", one, "--no-verify", "--input", golden, "--output",
                      out])
    check(rc == 0 and os.path.exists(out), "--no-verify skips the check", err)
    rc, _, err = run([exe, "verify", "--shards", one])
    check(rc == 1 and expert in err and got in err, "verify names the same tensor and hash", err)

    # NaN written into a norm; the manifest's hash is "fixed" with a wrong value
    open(rf, "wb").write(clean_bytes)
    patch(rf, off, struct.pack("<H", 0x7FC0))  # BF16 NaN
    man = json.load(open(os.path.join(one, "manifest.json")))
    wrong = "%016x" % xxh64(read(rf, off, n), seed=1)
    for t in man["ranks"][0]["tensors"]:
        if t["name"] == norm:
            t["xxh64"] = wrong
    json.dump(man, open(os.path.join(one, "manifest.json"), "w"))
    rc, _, err = run([exe, "score", "--shards", one, "--input", golden, "--output", out])
    check(rc == 1 and norm in err and wrong in err and "%016x" % xxh64(read(rf, off, n)) in err,
          "a NaN with a wrongly recomputed hash is refused at load", err)

    # under mpirun: the rank with the damaged folder names it, every rank exits, no hang
    mpirun = shutil.which("mpirun")
    if mpirun:
        two = os.path.join(work, "two")
        run([exe, "shard", "--model", model, "--cluster", pp2, "--out", two])
        f1 = os.path.join(two, "rank-00001", "model.safetensors")
        o1, n1 = span(f1, "lm_head.weight")
        patch(f1, o1 + n1 // 3, b"\x55\xaa")
        cmd = [mpirun, "--oversubscribe", "--bind-to", "none"]
        cmd += ["--allow-run-as-root"] if os.geteuid() == 0 else []
        t0 = time.time()
        rc, _, err = run(cmd + ["-np", "2", exe, "score", "--shards", two, "--input", golden,
                                "--output", out + ".mpi"], env={"MC_COMM_TIMEOUT": "30"})
        dt = time.time() - t0
        check(rc != 0 and "rank 1" in err and "rank-00001/model.safetensors" in err
              and "'lm_head.weight'" in err and dt < 25 and not os.path.exists(out + ".mpi"),
              f"mpirun -np 2: a damaged rank 1 fails the whole job in {dt:.1f} s", err[-600:])
    else:
        print("skip: no mpirun")

    # ---- resume is tied to the source ----
    src = os.path.join(work, "src")
    shutil.copytree(model, src)
    clean = os.path.join(work, "clean")
    run([exe, "shard", "--model", src, "--cluster", pp2, "--out", clean])
    rank0 = os.path.join(clean, "rank-00000", "model.safetensors")
    stage0 = os.path.getsize(rank0)
    res = os.path.join(work, "resume")
    rc, _, err = run([exe, "shard", "--model", src, "--cluster", pp2, "--out", res],
                     env={"MC_SHARD_FAIL_AFTER_BYTES": str(stage0 + 20000)})
    check(rc != 0 and os.path.exists(os.path.join(res, "rank-00000", "tensors.json")),
          "an interrupted run leaves rank 0 complete", err[-300:])
    # change one weight of the source in place, same size, old mtime restored
    sf = os.path.join(src, "model-00001-of-00003.safetensors")
    st0 = os.stat(sf)
    with open(sf, "rb") as f:
        (hn,) = struct.unpack("<Q", f.read(8))
        hdr = json.loads(f.read(hn))
    name0 = sorted(k for k in hdr if k != "__metadata__" and hdr[k]["dtype"] == "BF16")[0]
    o0 = 8 + hn + hdr[name0]["data_offsets"][0]
    patch(sf, o0, bytes([read(sf, o0, 1)[0] ^ 0x01]))
    os.utime(sf, ns=(st0.st_atime_ns, st0.st_mtime_ns))
    r0 = os.path.join(res, "rank-00000", "model.safetensors")
    before = open(r0, "rb").read()
    rc, _, err = run([exe, "shard", "--model", src, "--cluster", pp2, "--out", res])
    check(rc == 1 and "another source" in err and "model-00001-of-00003.safetensors" in err
          and "--restart" in err and err.count("\n") == 1,
          "a rerun after the source changed (same size and mtime) is refused in one line", err)
    check(open(r0, "rb").read() == before
          and not os.path.exists(os.path.join(res, "manifest.json")),
          "the refused rerun changes nothing")
    rc, _, err = run([exe, "shard", "--model", src, "--cluster", pp2, "--out", res, "--restart"])
    fresh = os.path.join(work, "fresh")
    run([exe, "shard", "--model", src, "--cluster", pp2, "--out", fresh])
    check(rc == 0 and files_of(res) == files_of(fresh) and files_of(res) != files_of(clean),
          "--restart redoes every rank: equal to a fresh cut of the new source", err[-300:])
    rc, _, err = run([exe, "shard", "--model", src, "--cluster", pp2, "--out", res,
                      "--weights", "bf16"])
    check(rc == 1 and "different plan" in err, "another --weights into the same folder is refused",
          err)

    # ---- missing plan and manifest, finished rank folders left over ----
    # (a) from another source: must be rewritten, never reused
    os.remove(os.path.join(clean, "manifest.json"))
    os.remove(os.path.join(clean, "plan.json"))
    rc, _, err = run([exe, "shard", "--model", src, "--cluster", pp2, "--out", clean])
    check(rc == 0 and files_of(clean) == files_of(fresh) and "rewriting" in err,
          "leftover ranks of another source are rewritten, not counted as finished", err[-300:])
    # (b) same source, but a rank file damaged after its tensors.json was written
    os.remove(os.path.join(fresh, "manifest.json"))
    f1 = os.path.join(fresh, "rank-00001", "model.safetensors")
    good1 = open(f1, "rb").read()
    data = bytearray(good1)
    data[-64] ^= 0x08
    open(f1, "wb").write(bytes(data))
    r0 = os.path.join(fresh, "rank-00000", "model.safetensors")
    m0 = os.stat(r0).st_mtime_ns
    rc, _, err = run([exe, "shard", "--model", src, "--cluster", pp2, "--out", fresh])
    check(rc == 0 and open(f1, "rb").read() == good1 and os.stat(r0).st_mtime_ns == m0
          and "rank-00001" in err,
          "a damaged finished rank is redone, an intact one kept", err[-300:])

    # ---- verify checks the manifest against the plan and the files ----
    base = os.path.join(work, "base")
    run([exe, "shard", "--model", model, "--cluster", pp2, "--out", base])
    rc, txt, err = run([exe, "verify", "--shards", base])
    check(rc == 0 and "match" in txt, "verify passes on an intact set", err)
    base_man = json.load(open(os.path.join(base, "manifest.json")))

    def edited(tag, edit, expect, plan_edit=None):
        d = os.path.join(work, "edit-" + tag)
        shutil.copytree(base, d)
        m = json.loads(json.dumps(base_man))
        edit(m)
        json.dump(m, open(os.path.join(d, "manifest.json"), "w"))
        if plan_edit:
            p = json.load(open(os.path.join(d, "plan.json")))
            plan_edit(p)
            json.dump(p, open(os.path.join(d, "plan.json"), "w"))
        rc, _, err = run([exe, "verify", "--shards", d])
        lines = [l for l in err.splitlines() if l.startswith("verify: ")]
        ok = rc == 1 and lines and all(re.search(e, err) for e in expect)
        check(ok, f"verify refuses a manifest with {tag}", err[-600:])
        return d

    def set_tensor(m, rank, name, key, value):
        for t in m["ranks"][rank]["tensors"]:
            if t["name"] == name:
                t[key] = value

    def drop_tensor(m, rank, name):
        m["ranks"][rank]["tensors"] = [t for t in m["ranks"][rank]["tensors"] if t["name"] != name]

    def rank1_tensor(m):
        return m["ranks"][1]["tensors"][3]["name"]

    t1 = rank1_tensor(base_man)
    d = edited("a dropped rank", lambda m: m["ranks"].pop(), [r"rank 1 of the plan is not listed"])
    rc, _, err = run([exe, "score", "--shards", d, "--input", golden, "--output", out])
    check(rc == 1 and "ranks are listed" in err, "score refuses a set with a dropped rank", err)
    edited("a dropped rank and world 1", lambda m: (m["ranks"].pop(), m.update(world=1)),
           [r"world is 1, the plan's is 2", r"rank 1 of the plan is not listed"])
    edited("an extra rank", lambda m: (m["ranks"].append(dict(m["ranks"][1], rank=2)),
                                       m.update(world=3)),
           [r"world is 3 but 3 ranks|world is 3, the plan's is 2", r"lists ranks 2 to 2, the plan "
            r"has only 2"])
    edited("an empty tensor list", lambda m: m["ranks"][1].update(tensors=[]),
           [r"rank 1: the tensor list is empty"])
    d = edited("a huge world", lambda m: m.update(world=1 << 40), [r"'world' is missing or not in"])
    rc, _, err = run([exe, "score", "--shards", d, "--input", golden, "--output", out])
    check(rc == 1 and "world" in err, "score refuses a huge world", err)
    edited("a wrong shape", lambda m: set_tensor(m, 1, t1, "shape", [1, 2]),
           [re.escape(t1) + r"' has shape \[.*\] in the file but \[1, 2\]",
            re.escape(t1) + r"' has shape \[1, 2\], the plan gives"])
    edited("a wrong dtype", lambda m: set_tensor(m, 1, t1, "dtype", "F32"),
           [re.escape(t1) + r"' is BF16 in the file but F32"])
    edited("an unknown dtype", lambda m: set_tensor(m, 1, t1, "dtype", "F128"),
           [re.escape(t1) + r"': dtype is missing or unknown"])
    edited("a dropped tensor", lambda m: drop_tensor(m, 1, t1),
           [re.escape(t1) + r"' is in the file but not listed",
            re.escape(t1) + r"' is not listed \(the plan assigns it"])
    edited("a tensor of another rank", lambda m: m["ranks"][1]["tensors"].append(
        dict(base_man["ranks"][0]["tensors"][0])),
        [r"is not in the file", r"the plan does not assign it to this rank"])
    edited("a tensor listed twice", lambda m: m["ranks"][1]["tensors"].append(
        dict(m["ranks"][1]["tensors"][0])), [r"is listed twice"])
    edited("a wrong hash", lambda m: set_tensor(m, 1, t1, "xxh64", "0" * 16),
           [re.escape(t1) + r"' checksum xxh64 [0-9a-f]{16}, manifest.json says 0{16}"])
    edited("a malformed hash", lambda m: set_tensor(m, 1, t1, "xxh64", "zz"),
           [r"xxh64 is not 16 lowercase hex digits"])
    edited("a huge name", lambda m: set_tensor(m, 1, t1, "name", "x" * 100000),
           [r"no valid name"])
    edited("a huge shape", lambda m: set_tensor(m, 1, t1, "shape", [1 << 62, 1 << 62]),
           [r"shape is not a list of at most"])
    edited("another fingerprint", lambda m: m.update(fingerprint="0123456789abcdef"),
           [r"fingerprint 0123456789abcdef is not the plan's"])
    edited("an edited plan", lambda m: None, [r"plan.json: fingerprint .* does not match"],
           plan_edit=lambda p: p["ranks"][0].update(layers=[0, 1]))
    edited("ranks swapped", lambda m: m.update(ranks=m["ranks"][::-1]),
           [r"entry #0 is not rank 0"])

    print(f"{failures} failures")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
