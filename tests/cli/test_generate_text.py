#!/usr/bin/env python3
"""`generate --prompt TEXT` on the demo model (made in a fresh MC_CACHE_DIR):

- the prompt's ids are `tokenize --add-special-tokens`'s (BOS first, as
  DeepSeek-V3's tokenizer_config.json says): `generate --prompt-ids` of
  those ids and `generate --prompt` generate the same tokens, and the text
  printed is exactly their decode by an independent byte-level decoder
  written here from tokenizer.json (end token left out), for prompts in
  several scripts; the same under mpirun -np 2 (--ep 2 and --pp 2);
- the end ids of generation_config.json stop it (a copy of the demo folder
  whose eos_token_id list names a token the run generates): the text stops
  before that token; --ignore-eos runs on;
- stderr reports prompt tokens/s, time to first token and decode tokens/s;
- a folder without tokenizer.json: exit 1, "use --prompt-ids"; --prompt
  with --prompt-ids: usage error.

usage: test_generate_text.py MOECLUSTER FIXTURES WORK_DIR
"""
import json
import os
import shutil
import subprocess
import sys

failures = 0
N = 24


def check(cond, what, detail=""):
    global failures
    if cond:
        print(f"ok: {what}")
    else:
        failures += 1
        print(f"FAIL: {what}" + (f"\n   {detail}" if detail else ""))


def run(args, env, data=None, timeout=180):
    p = subprocess.run(args, input=data, capture_output=True, timeout=timeout, env=env)
    return p.returncode, p.stdout, p.stderr.decode("utf-8", "replace")


def bytes_to_unicode():
    """GPT-2's ByteLevel alphabet: byte -> printable character."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


class Decoder:
    """Byte-level decode as Hugging Face's: vocabulary entries through the
    ByteLevel alphabet, added tokens as their content, ids the tokenizer
    does not have (the model's vocabulary padding) skipped, then UTF-8 with
    U+FFFD for invalid bytes."""

    def __init__(self, path):
        tok = json.load(open(path, encoding="utf-8"))
        self.vocab = {i: t for t, i in tok["model"]["vocab"].items()}
        self.added = {a["id"]: a["content"] for a in tok["added_tokens"]}
        self.alpha = bytes_to_unicode()

    def __call__(self, ids):
        out = b""
        for i in ids:
            if i not in self.added and i not in self.vocab:
                continue  # a padding id of the model's vocabulary: no text
            if i in self.added:
                out += self.added[i].encode("utf-8")
            else:
                out += bytes(self.alpha[c] for c in self.vocab[i])
        return out.decode("utf-8", errors="replace")


def mpirun_cmd():
    mpirun = shutil.which("mpirun")
    if not mpirun:
        return None
    cmd = [mpirun, "-np", "2"]
    ver = subprocess.run([mpirun, "--version"], capture_output=True, text=True).stdout
    if "Open MPI" in ver or "OpenRTE" in ver:
        cmd += ["--oversubscribe", "--bind-to", "none"]
        if os.geteuid() == 0:
            cmd += ["--allow-run-as-root"]
    return cmd


def compare(exe, demo, env, text, dec, eos, pre=(), par=(), label="", n=N):
    """--prompt-ids of tokenize's ids vs --prompt: same tokens, text = decode."""
    rc, out, err = run([exe, "tokenize", "--tokenizer", demo, "--add-special-tokens"], env,
                       text.encode("utf-8"))
    if rc != 0:
        check(False, f"{label}tokenize {text[:30]!r}", err.strip()[-300:])
        return None
    ids = json.loads(out)
    rc1, out1, err1 = run(list(pre) + [exe, "generate", "--model", demo, "--prompt-ids",
                                       ",".join(map(str, ids)), "-n", str(n)] + list(par), env)
    rc2, out2, err2 = run(list(pre) + [exe, "generate", "--model", demo, "-p", text, "-n", str(n)]
                          + list(par), env)
    if rc1 != 0 or rc2 != 0:
        check(False, f"{label}generate {text[:30]!r}: both exit 0 (rc {rc1}, {rc2})",
              (err1 + err2).strip()[-600:])
        return None
    gen = [int(x) for x in out1.decode().strip().split(",")]
    body = gen[:-1] if gen and gen[-1] in eos else gen
    want = dec(body) + "\n"
    got = out2.decode("utf-8", errors="replace")
    ok = got == want
    if not ok:
        k = next((i for i in range(min(len(got), len(want))) if got[i] != want[i]),
                 min(len(got), len(want)))
        detail = f"first difference at char {k}: got {got[k:k + 20]!r} want {want[k:k + 20]!r}"
    check(ok, f"{label}generate -p {text[:30]!r}: text = decode of --prompt-ids' {len(gen)} ids",
          detail if not ok else "")
    return ids, gen, err2


def main():
    exe, fx, work = os.path.abspath(sys.argv[1]), sys.argv[2], sys.argv[3]
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    env = dict(os.environ)
    env.pop("MC_DATA_DIR", None)
    env["MC_CACHE_DIR"] = os.path.join(work, "cache")
    env.setdefault("OMPI_MCA_btl_vader_single_copy_mechanism", "none")
    env.setdefault("ASAN_OPTIONS", "detect_leaks=0")
    inp = os.path.join(work, "empty.jsonl")
    open(inp, "w").close()
    rc, _, err = run([exe, "batch", "--input", inp, "--output", os.path.join(work, "o.jsonl")],
                     env)
    demos = [d for d in os.listdir(env["MC_CACHE_DIR"]) if d.startswith("demo-")] if rc == 0 else []
    if len(demos) != 1:
        check(False, "the demo model is made", err.strip()[-500:])
        print(f"{failures} failures")
        return 1
    demo = os.path.join(env["MC_CACHE_DIR"], demos[0])
    dec = Decoder(os.path.join(demo, "tokenizer.json"))
    eos = set(json.load(open(os.path.join(demo, "generation_config.json")))["eos_token_id"])

    prompts = ["Hello, world!", "The capital of France is", "你好，世界。今天天气怎么样？",
               "Ünïcödé — naïve café 🙂 12345 + 678 = ?", "def f(x):\n    return x * 2\n"]
    first = None
    for text in prompts:
        r = compare(exe, demo, env, text, dec, eos)
        if r and first is None:
            first = (text, r)
    # a long run: the special, byte and padding ids it meets are counted
    r = compare(exe, demo, env, "Once upon a time", dec, eos, n=400, label="400 tokens: ")
    if r:
        gen = r[1]
        pad = sum(1 for g in gen if g not in dec.vocab and g not in dec.added)
        special = sum(1 for g in gen if g in dec.added)
        byte = sum(1 for g in gen if g in dec.vocab and len(dec.vocab[g]) == 1)
        print(f"   400 tokens: {pad} padding ids, {special} added tokens, {byte} one-byte tokens")
    if first:
        ids, gen, err = first[1]
        check(ids[0] == 0, f"the prompt starts with BOS 0 (add_bos_token): {ids[:4]}")
        need = ["prompt:", "tok/s", "time to first token", "decode:"]
        check(all(n in err for n in need), f"stderr reports {need}", err.strip()[-300:])
        print("   " + [l for l in err.splitlines() if "time to first token" in l][0])

    # the model's end ids stop it: a copy whose generation_config names a generated token
    if first:
        text, (ids, gen, _) = first
        stop = next((g for g in gen[2:] if g not in gen[:2]), None)
        cut = gen.index(stop) if stop is not None else None
        eosdir = os.path.join(work, "demo-eos")
        os.makedirs(eosdir, exist_ok=True)
        for f in os.listdir(demo):
            if f != "generation_config.json" and not os.path.exists(os.path.join(eosdir, f)):
                os.symlink(os.path.join(demo, f), os.path.join(eosdir, f))
        json.dump({"bos_token_id": 0, "eos_token_id": [1, stop]},
                  open(os.path.join(eosdir, "generation_config.json"), "w"))
        rc, out, err = run([exe, "generate", "--model", eosdir, "-p", text, "-n", str(N)], env)
        want = dec(gen[:cut]) + "\n"
        check(rc == 0 and out.decode("utf-8", "replace") == want,
              f"generation_config's end id {stop} stops the text after {cut} tokens",
              f"rc {rc} got {out[:80]!r} want {want[:80]!r} {err[-200:]}")
        rc, out, err = run([exe, "generate", "--model", eosdir, "--prompt-ids",
                            ",".join(map(str, ids)), "-n", str(N)], env)
        check(rc == 0 and out.decode().strip() == ",".join(map(str, gen[:cut + 1])),
              f"--prompt-ids stops on it too, printing it ({cut + 1} ids)", out.decode()[:200])
        rc, out, err = run([exe, "generate", "--model", eosdir, "-p", text, "-n", str(N),
                            "--ignore-eos"], env)
        check(rc == 0 and out.decode("utf-8", "replace") == dec(gen) + "\n",
              "--ignore-eos generates all the tokens", f"rc {rc} {err[-200:]}")

    # under mpirun: the same contract on two ranks
    mpi = mpirun_cmd()
    if not mpi:
        print("skip: no mpirun")
    else:
        for par in (["--ep", "2"], ["--pp", "2"]):
            compare(exe, demo, env, prompts[2], dec, eos, pre=mpi, par=par,
                    label=f"mpirun -np 2 {' '.join(par)}: ")

    # refusals
    tiny = os.path.join(fx, "models", "deepseek-v3-tiny")
    rc, out, err = run([exe, "generate", "--model", tiny, "-p", "hi"], env)
    check(rc == 1 and "use --prompt-ids" in err and out == b"",
          f"a folder without tokenizer.json: exit 1, 'use --prompt-ids' (rc {rc})", err.strip())
    rc, out, err = run([exe, "generate", "--model", demo, "-p", "hi", "--prompt-ids", "1"], env)
    check(rc == 2 and "not both" in err, f"--prompt with --prompt-ids: usage error (rc {rc})",
          err.strip())
    rc, out, err = run([exe.encode(), b"generate", b"--model", demo.encode(), b"-p", b"ab\xffcd"],
                       env)
    check(rc == 1 and "UTF-8" in err and out == b"",
          f"a prompt that is not UTF-8: exit 1 with a message (rc {rc})", err.strip()[-200:])

    print(f"{failures} failures")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
