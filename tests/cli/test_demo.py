#!/usr/bin/env python3
"""The demo model (coordinator/demo.h) that `serve` and `batch` use without
--model, made in MC_CACHE_DIR (a fresh folder here):

- made on first use (by `batch` with an empty input, which needs no
  workers): one folder demo-deepseek-v3-v1-HASH, no temporary left over;
  config.json a deepseek_v3 config whose vocab_size covers every id of the
  bundled tokenizer (vocabulary and added tokens); tokenizer.json and
  tokenizer_config.json byte-identical to tests/fixtures/tokenizers/deepseek-v3;
  generation_config.json's eos_token_id is <｜end▁of▁sentence｜>'s id;
- reused: a second run leaves the folder and its files untouched (mtimes);
- loads: `generate --model DIR --prompt-ids ...` prints ids in the vocabulary;
- a temporary folder left by a dead process is removed when the model is
  made; a MC_DATA_DIR without the tokenizer and an unusable cache folder
  fail with one line naming the path, leaving nothing behind.

usage: test_demo.py MOECLUSTER FIXTURES WORK_DIR
"""
import glob
import json
import os
import shutil
import subprocess
import sys

failures = 0


def check(cond, what, detail=""):
    global failures
    if cond:
        print(f"ok: {what}")
    else:
        failures += 1
        print(f"FAIL: {what}" + (f"\n   {detail}" if detail else ""))


def run(args, env, timeout=300):
    p = subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=env)
    return p.returncode, p.stdout, p.stderr


def env_with(**kw):
    env = dict(os.environ)
    env.pop("MC_DATA_DIR", None)
    env.update(kw)
    return env


def make(exe, work, env):
    """`batch` over an empty input: resolves (makes) the demo model, runs nothing."""
    inp = os.path.join(work, "empty.jsonl")
    open(inp, "w").close()
    out = os.path.join(work, "empty-out.jsonl")
    if os.path.exists(out):
        os.remove(out)
    return run([exe, "batch", "--input", inp, "--output", out], env)


def tree_stat(d):
    return {f: os.stat(os.path.join(d, f)).st_mtime_ns for f in sorted(os.listdir(d))} | \
        {".": os.stat(d).st_mtime_ns}


def main():
    exe, fx, work = os.path.abspath(sys.argv[1]), sys.argv[2], sys.argv[3]
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    tokdir = os.path.join(fx, "tokenizers", "deepseek-v3")
    cache = os.path.join(work, "cache")
    env = env_with(MC_CACHE_DIR=cache)

    # a leftover of a dead process: removed when the model is made
    dead = subprocess.Popen(["true"])
    dead.wait()
    os.makedirs(cache)
    rc, out, err = make(exe, work, env)
    check(rc == 0, f"batch with an empty input exits 0 (rc {rc})", err.strip()[-500:])
    made = glob.glob(os.path.join(cache, "demo-deepseek-v3-v1-*"))
    check(len(made) == 1 and os.path.isdir(made[0]), f"one demo folder made: {made}")
    if len(made) != 1:
        print(f"{failures} failures")
        return 1
    demo = made[0]
    name = os.path.basename(demo)

    files = sorted(os.listdir(demo))
    want = ["config.json", "generation_config.json", "model-00001-of-00001.safetensors",
            "model.safetensors.index.json", "tokenizer.json", "tokenizer_config.json"]
    check(files == want, f"demo folder holds {want}", f"got {files}")
    size = sum(os.path.getsize(os.path.join(demo, f)) for f in files)
    print(f"demo model: {size / 1e6:.1f} MB")
    check(size < 100e6, f"demo model is small ({size / 1e6:.1f} MB < 100 MB)")
    cfg = json.load(open(os.path.join(demo, "config.json")))
    tok = json.load(open(os.path.join(tokdir, "tokenizer.json")))
    ids = list(tok["model"]["vocab"].values()) + [a["id"] for a in tok["added_tokens"]]
    check(cfg.get("model_type") == "deepseek_v3", "config is deepseek_v3")
    check(max(ids) < cfg["vocab_size"],
          f"vocab_size {cfg['vocab_size']} covers every tokenizer id (max {max(ids)})")
    for f in ("tokenizer.json", "tokenizer_config.json"):
        same = open(os.path.join(demo, f), "rb").read() == open(os.path.join(tokdir, f), "rb").read()
        check(same, f"{f} is the fixture's, byte for byte")
    eos_text = "<｜end▁of▁sentence｜>"
    eos_id = next(a["id"] for a in tok["added_tokens"] if a["content"] == eos_text)
    gen = json.load(open(os.path.join(demo, "generation_config.json")))
    check(gen.get("eos_token_id") in ([eos_id], eos_id),
          f"generation_config eos_token_id is {eos_text} = {eos_id}", f"got {gen}")
    left = [f for f in os.listdir(cache) if ".tmp-" in f]
    check(not left, "no temporary folder left", f"left: {left}")

    # reused, untouched
    before = tree_stat(demo)
    rc, out, err = make(exe, work, env)
    check(rc == 0, f"second run exits 0 (rc {rc})", err.strip()[-300:])
    again = glob.glob(os.path.join(cache, "demo-deepseek-v3-v1-*"))
    check(again == [demo], "second run uses the same folder", f"{again}")
    check(tree_stat(demo) == before, "second run leaves the folder and its files untouched")
    check("making the demo model" not in err, "second run does not make it again", err.strip())

    # loads and generates
    rc, out, err = run([exe, "generate", "--model", demo, "--prompt-ids", "0,100,2000,30000",
                        "-n", "6", "--ignore-eos"], env, timeout=120)
    got = out.strip().split(",") if rc == 0 else []
    ok = rc == 0 and len(got) == 6 and all(g.isdigit() and int(g) < cfg["vocab_size"] for g in got)
    check(ok, f"generate --model <demo> prints 6 ids in the vocabulary: {out.strip()}",
          err.strip()[-500:])

    # a stale temporary folder of a dead process is removed on the next making
    cache2 = os.path.join(work, "cache2")
    os.makedirs(os.path.join(cache2, f"{name}.tmp-{dead.pid}"))
    open(os.path.join(cache2, f"{name}.tmp-{dead.pid}", "config.json"), "w").close()
    rc, out, err = make(exe, work, env_with(MC_CACHE_DIR=cache2))
    left = [f for f in os.listdir(cache2) if ".tmp-" in f]
    check(rc == 0 and not left and os.path.isdir(os.path.join(cache2, name)),
          "a dead process's temporary folder is removed, the model made", f"rc {rc}, left {left}")

    # MC_DATA_DIR without the tokenizer: one line naming it, nothing made
    cache3 = os.path.join(work, "cache3")
    empty = os.path.join(work, "no-data")
    os.makedirs(empty, exist_ok=True)
    rc, out, err = make(exe, work, env_with(MC_CACHE_DIR=cache3, MC_DATA_DIR=empty))
    check(rc == 1 and "MC_DATA_DIR" in err and empty in err,
          f"MC_DATA_DIR without the tokenizer: exit 1 naming it (rc {rc})", err.strip()[-300:])
    check(not glob.glob(os.path.join(cache3, "demo-*")), "... and no folder made")
    # MC_DATA_DIR with it: used
    data = os.path.join(work, "data")
    os.makedirs(os.path.join(data, "tokenizers"), exist_ok=True)
    if not os.path.exists(os.path.join(data, "tokenizers", "deepseek-v3")):
        shutil.copytree(tokdir, os.path.join(data, "tokenizers", "deepseek-v3"))
    rc, out, err = make(exe, work, env_with(MC_CACHE_DIR=cache3, MC_DATA_DIR=data))
    check(rc == 0 and os.path.isdir(os.path.join(cache3, name)),
          f"MC_DATA_DIR with the tokenizer: the model is made (rc {rc})", err.strip()[-300:])

    # a cache folder that cannot be made
    bad = os.path.join(work, "a-file")
    open(bad, "w").close()
    rc, out, err = make(exe, work, env_with(MC_CACHE_DIR=os.path.join(bad, "cache")))
    check(rc == 1 and bad in err and err.count("\n") <= 2,
          f"unusable cache folder: exit 1 with one line naming it (rc {rc})", err.strip()[-300:])

    print(f"{failures} failures")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
