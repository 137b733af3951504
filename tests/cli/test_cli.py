#!/usr/bin/env python3
"""Command-line contract of `moecluster score` / `generate`: bad input gives a
clear message and a non-zero exit (never a crash), and greedy generation
agrees with the argmax of `score` over the same tokens.

usage: test_cli.py MOECLUSTER FIXTURES_DIR WORK_DIR
"""
import hashlib
import json
import os
import resource
import shutil
import signal
import stat
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


def run(args, timeout=120, stdout=None, preexec=None):
    try:
        p = subprocess.run(args, stdout=stdout or subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True, timeout=timeout, preexec_fn=preexec)
    except subprocess.TimeoutExpired:
        return -999, "", f"timed out after {timeout} s"
    return p.returncode, p.stdout, p.stderr


def digest(path):
    """A fingerprint of a file or of every file in a folder (names + bytes)."""
    h = hashlib.sha256()
    paths = [path] if os.path.isfile(path) else sorted(
        os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs)
    for q in paths:
        h.update(q.encode())
        with open(q, "rb") as f:
            h.update(f.read())
    return h.hexdigest()


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

    # --kv-cache-dtype: a bad value, and bf16 where the caches are f32 only
    expect_error([exe, "score", "--model", model, "--input", good, "--output", out,
                  "--kv-cache-dtype", "f16"], "--kv-cache-dtype", "kv-cache-dtype f16")
    v4 = os.path.join(fx, "models", "deepseek-v4-tiny")
    expect_error([exe, "score", "--model", v4, "--input", good, "--output", out,
                  "--kv-cache-dtype", "bf16"], "DeepSeek-V4", "kv-cache-dtype bf16 on DeepSeek-V4")
    # Greedy generation with a bf16 cache runs (its ids may differ from f32's)
    rc, _, err = run([exe, "generate", "--model", model, "--prompt-ids", "3,14,15", "-n", "4",
                      "--ignore-eos", "--kv-cache-dtype", "bf16"])
    check(rc == 0, f"generate --kv-cache-dtype bf16 exits 0 (rc {rc})")

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

    output_paths(exe, fx, work, good)
    stdout_errors(exe, fx, work)
    strict_numbers(exe, model)
    bench_json(exe, fx, work)

    print(f"{failures} failures")
    return 1 if failures else 0


def expect_refused(args, needle, what, guarded):
    """Exit 1 with `needle` in the message, and the guarded file or folder unchanged."""
    before = digest(guarded)
    rc, _, err = run(args, timeout=60)
    same = digest(guarded) == before
    check(rc == 1 and needle in err and same,
          f"{what}: exit {rc}, message contains '{needle}', {guarded} unchanged: {same}")
    if not (rc == 1 and needle in err):
        print("   stderr:", err.strip()[:300])


def output_paths(exe, fx, work, good):
    """--output / --out never destroy an input and write only regular files."""
    root = os.path.dirname(os.path.dirname(fx))
    cluster = os.path.join(root, "cluster-configs", "cpu-2ranks.yaml")
    d = os.path.join(work, "outputs")
    shutil.rmtree(d, ignore_errors=True)
    model = os.path.join(d, "model")  # a copy: an old binary must not damage the fixtures
    shutil.copytree(os.path.join(fx, "models", "qwen3-moe-tiny"), model)
    inp = os.path.join(d, "in.safetensors")
    shutil.copy(good, inp)
    score = [exe, "score", "--model", model, "--input", inp, "--output"]
    expect_refused(score + [inp], "is the input", "output = input", inp)
    os.symlink(inp, os.path.join(d, "link.safetensors"))
    expect_refused(score + [os.path.join(d, "link.safetensors")], "the input",
                   "output = a link to the input", inp)
    shard = os.path.join(model, "model-00001-of-00003.safetensors")
    expect_refused(score + [shard], "inside the model folder", "output = a model file", model)
    expect_refused(score + [os.path.join(model, "new.safetensors")], "inside the model folder",
                   "output = a new file in the model folder", model)
    expect_refused(score + [os.path.join(model, "..", "model", "x")], "inside the model folder",
                   "output = a model-folder file by a roundabout path", model)
    shards = os.path.join(d, "shards")
    rc, _, err = run([exe, "shard", "--model", model, "--cluster", cluster, "--out", shards])
    check(rc == 0, f"a shard set (rc {rc})")
    expect_refused(score[:2] + ["--shards", shards] + score[4:] +
                   [os.path.join(shards, "rank-00000", "model.safetensors")],
                   "inside the model folder", "output = a file of the --shards set", shards)
    fifo = os.path.join(d, "fifo")
    os.mkfifo(fifo)
    rc, _, err = run(score + [fifo], timeout=60)
    check(rc == 1 and "a FIFO, not a regular file" in err and stat.S_ISFIFO(os.stat(fifo).st_mode),
          f"output = a FIFO: refused without blocking (rc {rc}), still a FIFO")
    folder = os.path.join(d, "folder")
    os.mkdir(folder)
    rc, _, err = run(score + [folder])
    check(rc == 1 and "a directory, not a regular file" in err, f"output = a folder (rc {rc})")
    dev = os.path.join(d, "null-device")
    try:  # a device node of our own (root only): it must survive, not become a file
        os.mknod(dev, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    except OSError:
        dev = None
    if dev:
        rc, _, err = run(score + [dev])
        check(rc == 1 and "character device" in err and stat.S_ISCHR(os.stat(dev).st_mode),
              f"output = a character device: refused (rc {rc}), still a device")
    # a write error (the file size limit here, as a full disk would) is an error, and no
    # output or temporary file is left behind
    out = os.path.join(d, "big.safetensors")

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
    rc, _, err = run(score + [out], preexec=limit)
    left = [f for f in os.listdir(d) if f.startswith("big.")]
    check(rc == 1 and "File too large" in err and not left,
          f"write error on the output: exit {rc}, message, nothing left: {left}")
    rc, _, err = run(score + [out])
    check(rc == 0 and os.path.isfile(out) and not os.path.exists(out + ".partial"),
          f"a good output is written (rc {rc})")
    rc, _, err = run(score + [out])
    check(rc == 0, f"an existing regular output is replaced (rc {rc})")
    # synth --out: not the folder of the config, not a file
    cfg_dir = os.path.join(d, "cfg")
    os.mkdir(cfg_dir)
    shutil.copy(os.path.join(model, "config.json"), cfg_dir)
    synth = [exe, "synth", "--config", os.path.join(cfg_dir, "config.json"), "--out"]
    expect_refused(synth + [cfg_dir], "folder of the config", "synth --out = the config's folder",
                   cfg_dir)
    expect_refused(synth + [os.path.join(cfg_dir, ".")], "folder of the config",
                   "synth --out = the config's folder (dot)", cfg_dir)
    expect_refused(synth + [inp], "not a directory", "synth --out = a file", inp)
    # shard --out: not the model folder, not inside it, not a file
    shard_cmd = [exe, "shard", "--model", model, "--cluster", cluster, "--out"]
    expect_refused(shard_cmd + [model], "is the model folder", "shard --out = the model folder",
                   model)
    expect_refused(shard_cmd + [os.path.join(model, "shards")], "inside the model folder",
                   "shard --out inside the model folder", model)
    expect_refused(shard_cmd + [inp], "not a directory", "shard --out = a file", inp)


def stdout_errors(exe, fx, work):
    """A command whose results cannot be written to stdout fails with a message."""
    if not os.path.exists("/dev/full"):
        print("skip: no /dev/full")
        return
    model = os.path.join(fx, "models", "qwen3-moe-tiny")
    cfg = os.path.join(fx, "configs", "deepseek-v3.2.config.json")
    shards = os.path.join(work, "outputs", "shards")  # from output_paths
    cases = [
        ("generate", [exe, "generate", "--model", model, "--prompt-ids", "1,2,3", "-n", "4"]),
        ("plan --json", [exe, "plan", "--model", cfg, "--json"]),
        ("plan", [exe, "plan", "--model", cfg]),
        ("verify", [exe, "verify", "--shards", shards]),
        ("bench --json", [exe, "bench", "--model", model, "--prompt-len", "4", "--gen-len", "1",
                          "--repeat", "1", "--probe-mib", "1", "--threads", "1", "--json"]),
        ("version", [exe, "version"]),
        ("--help", [exe, "--help"]),
        ("score --help", [exe, "score", "--help"]),
    ]
    with open("/dev/full", "w") as full:
        for what, args in cases:
            rc, _, err = run(args, stdout=full)
            ok = 0 < rc < 128 and "cannot write to standard output" in err
            check(ok, f"{what} > /dev/full: exit {rc} with a message")
            if not ok:
                print("   stderr:", err.strip()[:300])


def strict_numbers(exe, model):
    """Token ids and numeric flags: plain decimal numbers only."""
    gen = [exe, "generate", "--model", model]
    for ids in [" 1", "+5", "1, 2", "1,+2", "-1", ",1", "1,", "", "0x10", "1e3", "1 ",
                "99999999999999999999999999"]:
        expect_error(gen + ["--prompt-ids", ids], "--prompt-ids", f"--prompt-ids '{ids}'")
    ok = gen + ["--prompt-ids", "1,2"]
    for flag, val in [("-n", " 3"), ("-n", "+3"), ("-n", "3 "), ("--top-k", "+1"),
                      ("--seed", " 7"), ("--seed", "0x10"), ("--tp", "+1"),
                      ("--temperature", " 1"), ("--temperature", "+1"), ("--top-p", "0x1p-1"),
                      ("--temperature", "inf"), ("--temperature", "nan"), ("--top-p", "1e")]:
        expect_error(ok + [flag, val], flag, f"generate {flag} '{val}'")
    expect_error([exe, "plan", "--model", model, "--max-model-len", " 5"], "--max-model-len",
                 "plan --max-model-len ' 5'")
    expect_error([exe, "synth", "--config", "c.json", "--out", "o", "--max-file-gib", "+1"],
                 "--max-file-gib", "synth --max-file-gib '+1'")
    expect_error([exe, "bench", "--model", model, "--batch", " 2"], "--batch",
                 "bench --batch ' 2'")
    rc, out, _ = run(gen + ["--prompt-ids", "1,02,3", "-n", "2", "--temperature", "0.0",
                            "--top-p", ".5"])
    check(rc == 0 and len(out.strip().split(",")) == 2, f"plain numbers are accepted (rc {rc})")



def bench_json(exe, fx, work):
    """bench --json is valid JSON whatever the model path holds."""
    weird = os.path.join(work, 'we"ird\\model')
    shutil.rmtree(weird, ignore_errors=True)
    shutil.copytree(os.path.join(fx, "models", "qwen3-moe-tiny"), weird)
    rc, out, err = run([exe, "bench", "--model", weird, "--prompt-len", "4", "--gen-len", "1",
                        "--repeat", "1", "--probe-mib", "1", "--threads", "1", "--json"])
    try:
        j = json.loads(out)
    except ValueError:
        j = {}
    check(rc == 0 and j.get("model") == weird, f"bench --json with a quote in the path (rc {rc})")


if __name__ == "__main__":
    sys.exit(main())
