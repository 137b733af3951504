#!/usr/bin/env python3
"""`moecluster batch` on the demo model (made in a fresh MC_CACHE_DIR):

- a file of completions and chats, bad lines of every kind (not JSON, not
  an object, custom_id missing / not a string / used before, method not
  POST, another url, body not an object) and bodies the API refuses (400,
  404), plus a blank line: exit 0, one entry per non-blank line with id
  batch_req_<line>, the bad lines as error entries with their code, the
  refused bodies as responses with the API's status and error body;
- the greedy texts equal `generate --prompt`'s for the same prompt
  (completions) and the decode of `generate --prompt-ids` of the chat
  template's ids (`tokenize --chat --ids`) for chats, decoded here by the
  byte-level decoder of test_generate_text.py; the same with --concurrency 1
  (alone) as with 16 requests at once, on two ranks (--ranks 2 --pp 2), and
  with the CPU acting as a device (MC_CPU_AS_DEVICE=1; one and two ranks);
- restart: OUT cut to its first half plus a torn line: the rerun cuts the
  torn line, runs only the missing lines (the same texts as before), keeps
  the first half byte for byte; a rerun of a complete OUT runs nothing and
  starts no workers;
- refusals: OUT = IN (also through a link), a missing input, an output in a
  missing folder, an OUT holding a line that is not a result: non-zero exit,
  nothing written.

usage: test_batch.py MOECLUSTER FIXTURES WORK_DIR
"""
import json
import os
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_generate_text import Decoder  # noqa: E402

failures = 0
MAXT = 12
PROMPTS = ["Hello, world!", "The capital of France is", "你好，世界", "1, 2, 3, 4,",
           "Once upon a time", "def main():", "Ünïcödé café 🙂", "The quick brown fox",
           "SELECT * FROM", "Dear Sir or Madam,"]
CHATS = ["Hi", "What is 2 + 2?", "Écris un poème.", "用中文回答"]


def check(cond, what, detail=""):
    global failures
    if cond:
        print(f"ok: {what}")
    else:
        failures += 1
        print(f"FAIL: {what}" + (f"\n   {detail}" if detail else ""))


def run(args, env, data=None, timeout=300):
    p = subprocess.run(args, input=data, capture_output=True, timeout=timeout, env=env)
    return p.returncode, p.stdout, p.stderr.decode("utf-8", "replace")


def req(cid, url, body, method="POST"):
    return json.dumps({"custom_id": cid, "method": method, "url": url, "body": body},
                      ensure_ascii=False)


def make_input(path):
    """The lines, and {line number: what is expected} (1-based)."""
    lines, want = [], {}

    def add(text, expect):
        lines.append(text)
        if expect is not None:
            want[len(lines)] = expect
    for i, p in enumerate(PROMPTS):
        add(req(f"c{i}", "/v1/completions", {"prompt": p, "max_tokens": MAXT, "temperature": 0}),
            ("completion", f"c{i}", p))
        if i == 3:
            add("", None)  # a blank line: skipped
    for i, c in enumerate(CHATS):
        add(req(f"h{i}", "/v1/chat/completions",
                {"messages": [{"role": "user", "content": c}], "max_tokens": MAXT,
                 "temperature": 0}), ("chat", f"h{i}", c))
    add("not json at all", ("error", None, "invalid_json"))
    add("[1, 2, 3]", ("error", None, "invalid_json"))
    add(json.dumps({"method": "POST", "url": "/v1/completions", "body": {"prompt": "x"}}),
        ("error", None, "missing_custom_id"))
    add(json.dumps({"custom_id": 7, "method": "POST", "url": "/v1/completions",
                    "body": {"prompt": "x"}}), ("error", None, "missing_custom_id"))
    add(req("c0", "/v1/completions", {"prompt": "again"}), ("error", "c0", "duplicate_custom_id"))
    add(req("m1", "/v1/completions", {"prompt": "x"}, method="GET"),
        ("error", "m1", "invalid_method"))
    add(req("u1", "/v1/embeddings", {"input": "x"}), ("error", "u1", "invalid_url"))
    add(json.dumps({"custom_id": "b1", "method": "POST", "url": "/v1/completions",
                    "body": "prompt"}), ("error", "b1", "invalid_body"))
    add(req("r1", "/v1/completions", {"prompt": "x", "max_tokens": -3}), ("status", "r1", 400))
    add(req("r2", "/v1/completions", {"prompt": "x", "model": "no-such-model"}),
        ("status", "r2", 404))
    add(req("r3", "/v1/chat/completions", {"messages": "hi"}), ("status", "r3", 400))
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    return want


def read_out(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(l) for l in f if l.strip()]


def reference_texts(exe, demo, env, dec, eos):
    """{custom_id: greedy text} from `generate` (not the service)."""
    ref = {}
    for i, p in enumerate(PROMPTS):
        rc, out, err = run([exe, "generate", "--model", demo, "-p", p, "-n", str(MAXT)], env)
        ref[f"c{i}"] = out.decode("utf-8", "replace")[:-1] if rc == 0 else None
    for i, c in enumerate(CHATS):
        conv = json.dumps({"messages": [{"role": "user", "content": c}],
                           "add_generation_prompt": True}).encode()
        rc, out, err = run([exe, "tokenize", "--tokenizer", demo, "--chat", "--ids"], env, conv)
        ids = json.loads(out) if rc == 0 else []
        rc, out, err = run([exe, "generate", "--model", demo, "--prompt-ids",
                            ",".join(map(str, ids)), "-n", str(MAXT)], env)
        gen = [int(x) for x in out.decode().strip().split(",")] if rc == 0 else None
        if gen and gen[-1] in eos:
            gen = gen[:-1]
        ref[f"h{i}"] = dec(gen) if gen is not None else None
    return ref


def text_of(entry):
    body = entry["response"]["body"]
    ch = body["choices"][0]
    return ch["text"] if "text" in ch else ch["message"]["content"]


def check_entries(entries, want, ref, label):
    by_id = {}
    for e in entries:
        by_id.setdefault(e.get("id"), []).append(e)
    dup = [k for k, v in by_id.items() if len(v) > 1]
    check(not dup, f"{label}: one entry per id", f"repeated: {dup}")
    ids = {f"batch_req_{n}" for n in want}
    check(set(by_id) == ids, f"{label}: an entry for every non-blank line ({len(ids)})",
          f"missing {sorted(ids - set(by_id))}, extra {sorted(set(by_id) - ids)}")
    texts = {}
    for n, w in sorted(want.items()):
        e = by_id.get(f"batch_req_{n}", [None])[0]
        if e is None:
            continue
        kind = w[0]
        if kind == "error":
            ok = e.get("response") is None and isinstance(e.get("error"), dict) and \
                e["error"].get("code") == w[2] and e.get("custom_id") == w[1] and \
                isinstance(e["error"].get("message"), str)
            check(ok, f"{label}: line {n} is an error entry {w[2]}", json.dumps(e)[:300])
        elif kind == "status":
            r = e.get("response") or {}
            body = r.get("body") or {}
            ok = e.get("error") is None and r.get("status_code") == w[2] and \
                isinstance(body.get("error"), dict) and e.get("custom_id") == w[1]
            check(ok, f"{label}: line {n} ({w[1]}) is answered {w[2]} with the API's error body",
                  json.dumps(e)[:300])
        else:
            r = e.get("response") or {}
            ok = e.get("error") is None and r.get("status_code") == 200 and \
                e.get("custom_id") == w[1] and isinstance(r.get("request_id"), str)
            if not ok:
                check(False, f"{label}: line {n} ({w[1]}) answered 200", json.dumps(e)[:300])
                continue
            texts[w[1]] = text_of(e)
    if ref is not None:
        bad = [(k, texts.get(k), ref.get(k)) for k in sorted(ref) if texts.get(k) != ref.get(k)]
        check(not bad and len(texts) == len(ref),
              f"{label}: the {len(texts)} greedy texts equal generate's",
              "first mismatches: " + "; ".join(f"{k}: got {g!r} want {w!r}" for k, g, w in bad[:3]))
    return texts


def main():
    exe, fx, work = os.path.abspath(sys.argv[1]), sys.argv[2], sys.argv[3]
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    env = dict(os.environ)
    env.pop("MC_DATA_DIR", None)
    env["MC_CACHE_DIR"] = os.path.join(work, "cache")
    inp = os.path.join(work, "in.jsonl")
    out = os.path.join(work, "out.jsonl")
    want = make_input(inp)
    in_bytes = open(inp, "rb").read()

    rc, _, err = run([exe, "batch", "--input", inp, "--output", out], env)
    check(rc == 0, f"batch exits 0 (rc {rc})", err[-1500:])
    check("req/s" in err and "done" in err, "progress lines on stderr", err[-300:])
    demo = [d for d in os.listdir(env["MC_CACHE_DIR"]) if d.startswith("demo-")]
    if rc != 0 or len(demo) != 1:
        print(f"{failures} failures")
        return 1
    demo = os.path.join(env["MC_CACHE_DIR"], demo[0])
    dec = Decoder(os.path.join(demo, "tokenizer.json"))
    eos = set(json.load(open(os.path.join(demo, "generation_config.json")))["eos_token_id"])
    ref = reference_texts(exe, demo, env, dec, eos)
    check(all(v is not None for v in ref.values()), "generate gives every reference text")
    first = check_entries(read_out(out), want, ref, "run 1")
    print("   c0: " + repr(first.get("c0")))

    # alone: --concurrency 1 gives the same texts
    out1 = os.path.join(work, "out-c1.jsonl")
    rc, _, err = run([exe, "batch", "--input", inp, "--output", out1, "--concurrency", "1"], env)
    check(rc == 0, f"--concurrency 1 exits 0 (rc {rc})", err[-500:])
    check_entries(read_out(out1), want, ref, "--concurrency 1")

    # two ranks (--pp 2 splits the layers: the same arithmetic, so the same texts)
    if shutil.which("mpirun"):
        out2 = os.path.join(work, "out-r2.jsonl")
        rc, _, err = run([exe, "batch", "--input", inp, "--output", out2, "--ranks", "2",
                          "--pp", "2"], env)
        check(rc == 0, f"--ranks 2 --pp 2 exits 0 (rc {rc})", err[-800:])
        if rc == 0:
            check_entries(read_out(out2), want, ref, "--ranks 2 --pp 2")
    else:
        print("skip: no mpirun")

    # the CPU acting as a device (MC_CPU_AS_DEVICE=1: the serving executor's
    # device paths, weights uploaded and logits downloaded; with --pp 2 the
    # pipeline's send / receive staged through host copies): the same texts
    denv = dict(env, MC_CPU_AS_DEVICE="1")
    for name, extra in [("cpu-device", ["--device", "cpu"]),
                        ("cpu-device, --ranks 2 --pp 2", ["--ranks", "2", "--pp", "2"])]:
        if "--ranks" in extra and not shutil.which("mpirun"):
            continue
        od = os.path.join(work, f"out-dev{len(extra)}.jsonl")
        rc, _, err = run([exe, "batch", "--input", inp, "--output", od] + extra, denv)
        check(rc == 0, f"{name}: exits 0 (rc {rc})", err[-800:])
        if rc == 0:
            check_entries(read_out(od), want, ref, name)

    # restart: half of OUT and a torn line
    lines = open(out, "rb").read().split(b"\n")[:-1]
    half = len(lines) // 2
    kept = b"\n".join(lines[:half]) + b"\n"
    with open(out, "wb") as f:
        f.write(kept + lines[half][: len(lines[half]) // 2])
    missing_good = sum(1 for l in lines[half:] if json.loads(l).get("response") is not None)
    rc, _, err = run([exe, "batch", "--input", inp, "--output", out], env)
    check(rc == 0, f"restart exits 0 (rc {rc})", err[-800:])
    check("torn" in err, "restart says it cut a torn line", err[-500:])
    check(f"{missing_good} to run" in err,
          f"restart runs only the {missing_good} missing requests", err[-500:])
    now = open(out, "rb").read()
    check(now.startswith(kept), "restart keeps the first half byte for byte")
    again = check_entries(read_out(out), want, ref, "after restart")
    check(again == first, "restart gives the same texts")

    # complete: nothing to run, nothing started, OUT unchanged
    rc, _, err = run([exe, "batch", "--input", inp, "--output", out], env)
    check(rc == 0 and "0 to run" in err and "waiting for the worker group" not in err,
          f"a complete OUT: exit 0, nothing run, no workers (rc {rc})", err[-500:])
    check(open(out, "rb").read() == now, "a complete OUT is left unchanged")

    # refusals
    rc, _, err = run([exe, "batch", "--input", inp, "--output", inp], env)
    check(rc == 2 and "input" in err and open(inp, "rb").read() == in_bytes,
          f"OUT = IN: exit 2, input untouched (rc {rc})", err[-300:])
    link = os.path.join(work, "link.jsonl")
    os.symlink(inp, link)
    rc, _, err = run([exe, "batch", "--input", inp, "--output", link], env)
    check(rc == 2 and open(inp, "rb").read() == in_bytes,
          f"OUT = IN through a link: exit 2 (rc {rc})", err[-300:])
    rc, _, err = run([exe, "batch", "--input", os.path.join(work, "nope.jsonl"), "--output",
                      os.path.join(work, "o2.jsonl")], env)
    check(rc == 1 and "nope.jsonl" in err, f"a missing input: exit 1 naming it (rc {rc})",
          err[-300:])
    rc, _, err = run([exe, "batch", "--input", inp, "--output",
                      os.path.join(work, "no-dir", "o.jsonl")], env)
    check(rc == 1 and "no-dir" in err, f"an output in a missing folder: exit 1 (rc {rc})",
          err[-300:])
    junk = os.path.join(work, "junk.jsonl")
    with open(junk, "w") as f:
        f.write('{"id": "batch_req_1", "custom_id": "c0", "response": null, "error": null}\n'
                'hello\n')
    before = open(junk, "rb").read()
    rc, _, err = run([exe, "batch", "--input", inp, "--output", junk], env)
    check(rc == 1 and "not a batch result line" in err and open(junk, "rb").read() == before,
          f"an OUT holding a line that is not a result: exit 1, untouched (rc {rc})", err[-300:])

    print(f"{failures} failures")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
