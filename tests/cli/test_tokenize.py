#!/usr/bin/env python3
"""`moecluster tokenize` against the golden ids of tests/fixtures/tokenizers:

- every case of gpt4-bpe-2k (17, from Hugging Face tokenizers) and of the
  real DeepSeek-V3 tokenizer (13, add_special_tokens false) encodes to exactly
  the golden ids and decodes back to the golden text; a mismatch prints the
  first differing position and the ids around it;
- --add-special-tokens adds DeepSeek-V3's BOS (tokenizer_config.json's
  add_bos_token) and nothing else; gpt4-bpe-2k (no post-processor) adds none;
- the tokenizer can be named by its folder or its file;
- invalid UTF-8, unknown ids, a non-array on --decode, and a missing or
  malformed tokenizer.json exit non-zero with one clear line;
- encode time of the longest document through the CLI is printed (process
  start and tokenizer load included; test_tokenizer prints the bare speed);
- --chat (see chat_cases): the DeepSeek-V3 golden conversation, its ids, and
  the refusals.

usage: test_tokenize.py MOECLUSTER FIXTURES WORK_DIR
"""
import json
import os
import subprocess
import sys
import time

failures = 0


def check(cond, what, detail=""):
    global failures
    if cond:
        print(f"ok: {what}")
    else:
        failures += 1
        print(f"FAIL: {what}" + (f"\n   {detail}" if detail else ""))


def run(exe, args, data):
    p = subprocess.run([exe, "tokenize"] + args, input=data, capture_output=True, timeout=120)
    return p.returncode, p.stdout, p.stderr.decode("utf-8", "replace")


def first_diff(got, want):
    n = min(len(got), len(want))
    i = next((k for k in range(n) if got[k] != want[k]), n)
    lo = max(0, i - 3)
    return (f"first mismatch at position {i} (got {len(got)} ids, want {len(want)}): "
            f"got {got[lo:i + 5]} want {want[lo:i + 5]} (from position {lo})")


def golden_cases(exe, tok, cases, name):
    for c in cases:
        label = f"{name} {c['text'][:40]!r}"
        t0 = time.time()
        rc, out, err = run(exe, ["--tokenizer", tok], c["text"].encode("utf-8"))
        dt = time.time() - t0
        if rc != 0:
            check(False, f"{label}: encodes", err.strip()[:300])
            continue
        try:
            ids = json.loads(out)
        except ValueError:
            check(False, f"{label}: output is one JSON array", out[:200])
            continue
        check(ids == c["ids"], f"{label}: {len(c['ids'])} golden ids",
              first_diff(ids, c["ids"]) if ids != c["ids"] else "")
        if len(c["text"]) >= 4000:
            print(f"   {name}: {len(c['text'])} characters -> {len(ids)} ids in "
                  f"{dt * 1e3:.0f} ms through the CLI (load included)")
        rc, out, err = run(exe, ["--tokenizer", tok, "--decode"], json.dumps(c["ids"]).encode())
        text = out.decode("utf-8", "replace")
        ok = rc == 0 and text == c["decoded"]
        detail = err.strip()[:300]
        if rc == 0 and not ok:
            n = min(len(text), len(c["decoded"]))
            i = next((k for k in range(n) if text[k] != c["decoded"][k]), n)
            detail = f"first differing character at {i}: {text[i:i + 20]!r} vs {c['decoded'][i:i + 20]!r}"
        check(ok, f"{label}: decodes to the golden text", detail)


def main():
    exe, fixtures, work = os.path.abspath(sys.argv[1]), sys.argv[2], sys.argv[3]
    os.makedirs(work, exist_ok=True)
    gpt4 = os.path.join(fixtures, "tokenizers", "gpt4-bpe-2k")
    ds = os.path.join(fixtures, "tokenizers", "deepseek-v3")
    with open(os.path.join(gpt4, "golden.json"), encoding="utf-8") as f:
        golden_cases(exe, gpt4, json.load(f), "gpt4-bpe-2k")
    with open(os.path.join(ds, "golden.json"), encoding="utf-8") as f:
        g = json.load(f)
    check(g["add_special_tokens"] is False, "deepseek-v3 golden ids are without special tokens")
    golden_cases(exe, ds, g["cases"], "deepseek-v3")

    # the file itself works as well as its folder
    rc, out, err = run(exe, ["--tokenizer", os.path.join(gpt4, "tokenizer.json")], b"Hello world")
    check(rc == 0 and json.loads(out) == [43, 72, 79, 424, 625, 664],
          "--tokenizer FILE: same ids as the folder", err.strip()[:200])

    # --add-special-tokens: BOS (id 0, <｜begin▁of▁sentence｜>) first, nothing at the end
    rc, out, err = run(exe, ["--tokenizer", ds, "--add-special-tokens"], b"Hello world")
    check(rc == 0 and json.loads(out) == [0, 19923, 2058],
          "deepseek-v3 --add-special-tokens adds BOS 0", (out + err.encode()).strip()[:200])
    rc, out, err = run(exe, ["--tokenizer", ds], b"Hello world")
    check(rc == 0 and json.loads(out) == [19923, 2058], "deepseek-v3 adds nothing by default")
    rc, out, err = run(exe, ["--tokenizer", gpt4, "--add-special-tokens"], b"a")
    check(rc == 0 and json.loads(out) == [68], "gpt4-bpe-2k (no post-processor) adds nothing")
    # special tokens in the text are matched before the regex
    rc, out, err = run(exe, ["--tokenizer", ds], "<｜begin▁of▁sentence｜>Hi".encode())
    check(rc == 0 and json.loads(out)[0] == 0, "a special token in the text becomes its id",
          out[:100])

    # refusals: one clear line, non-zero exit
    rc, out, err = run(exe, ["--tokenizer", gpt4], b"ok \xff\xfe bad")
    check(rc == 1 and "invalid UTF-8" in err and "offset 3" in err and not out,
          "invalid UTF-8 is refused, naming the offset", err.strip()[:200])
    rc, out, err = run(exe, ["--tokenizer", gpt4, "--decode"], b"[43, 999999]")
    check(rc == 1 and "unknown token id 999999" in err, "an unknown id is refused, naming it",
          err.strip()[:200])
    rc, out, err = run(exe, ["--tokenizer", gpt4, "--decode"], b"[43, -1]")
    check(rc == 1 and "-1" in err, "a negative id is refused", err.strip()[:200])
    rc, out, err = run(exe, ["--tokenizer", gpt4, "--decode"], b"{\"ids\": [1]}")
    check(rc == 1 and "JSON array" in err, "--decode of a non-array is refused", err.strip()[:200])
    missing = os.path.join(work, "no-such-dir")
    rc, out, err = run(exe, ["--tokenizer", missing], b"x")
    check(rc == 1 and "no-such-dir" in err and err.count("\n") == 1,
          "a missing tokenizer is refused, naming it", err.strip()[:200])
    empty = os.path.join(work, "empty")
    os.makedirs(empty, exist_ok=True)
    rc, out, err = run(exe, ["--tokenizer", empty], b"x")
    check(rc == 1 and os.path.join(empty, "tokenizer.json") in err,
          "a folder without tokenizer.json is refused, naming the file", err.strip()[:200])
    bad = os.path.join(work, "bad")
    os.makedirs(bad, exist_ok=True)
    for name, text, needle in [
        ("truncated", '{"model": {"type": "BPE", "vocab": {', "invalid JSON"),
        ("wordpiece", '{"model": {"type": "WordPiece", "vocab": {}}}', "WordPiece"),
        ("unigram", '{"model": {"type": "Unigram", "vocab": []}}', "Unigram"),
    ]:
        path = os.path.join(bad, name + ".json")
        with open(path, "w") as f:
            f.write(text)
        rc, out, err = run(exe, ["--tokenizer", path], b"x")
        check(rc == 1 and path in err and needle in err and err.count("\n") == 1,
              f"a {name} tokenizer.json is refused in one line naming the file and '{needle}'",
              err.strip()[:200])
    chat_cases(exe, fixtures, work)
    print(f"{failures} failures")
    return 1 if failures else 0



def chat_cases(exe, fixtures, work):
    """--chat: the DeepSeek-V3 fixture's conversation renders to golden.json's
    "rendered" text exactly, and with --ids to that text's ids (BOS first,
    <｜User｜> / <｜Assistant｜> as single added tokens); bad input, a folder
    without a chat template and a template error exit 1 with one line."""
    ds = os.path.join(fixtures, "tokenizers", "deepseek-v3")
    with open(os.path.join(ds, "golden.json"), encoding="utf-8") as f:
        chat = json.load(f)["chat"]
    req = json.dumps({"messages": chat["messages"],
                      "add_generation_prompt": chat["add_generation_prompt"]}).encode()
    rc, out, err = run(exe, ["--tokenizer", ds, "--chat"], req)
    text = out.decode("utf-8", "replace")
    detail = err.strip()[:300]
    if rc == 0 and text != chat["rendered"]:
        n = min(len(text), len(chat["rendered"]))
        i = next((k for k in range(n) if text[k] != chat["rendered"][k]), n)
        detail = (f"first differing character at {i}: {text[max(0, i - 20):i + 20]!r} vs "
                  f"{chat['rendered'][max(0, i - 20):i + 20]!r}")
    check(rc == 0 and text == chat["rendered"], "--chat renders the golden conversation exactly",
          detail)
    rc, out, err = run(exe, ["--tokenizer", os.path.join(ds, "tokenizer.json"), "--chat", "--ids"],
                       req)
    rc2, want, _ = run(exe, ["--tokenizer", ds], chat["rendered"].encode())
    ok = rc == 0 and rc2 == 0 and json.loads(out) == json.loads(want)
    check(ok, "--chat --ids: the ids of the rendered text", (out + err.encode())[:300])
    if ok:
        ids = json.loads(out)
        check(ids[0] == 0 and ids.count(128803) == 2 and ids.count(128804) == 2 and
              ids[-1] == 128804 and ids.count(1) == 1,
              "--chat --ids: BOS 0 first, <｜User｜> 128803 and <｜Assistant｜> 128804 twice "
              "each, one EOS, the generation prompt last", str(ids))
    no_gen = json.dumps({"messages": chat["messages"][:3]}).encode()
    rc, out, err = run(exe, ["--tokenizer", ds, "--chat"], no_gen)
    check(rc == 0 and out.decode().endswith("Q4.<｜end▁of▁sentence｜>"),
          "--chat without add_generation_prompt ends with the last message", out[-80:])
    for args, data, needle, what in [
        (["--chat"], b"[1, 2]", "messages", "a non-object on stdin"),
        (["--chat"], b'{"messages": [], "add_generation_prompt": "yes"}', "add_generation_prompt",
         "a non-boolean add_generation_prompt"),
        (["--chat"], b"{\"messages\": ", "JSON", "truncated JSON"),
    ]:
        rc, out, err = run(exe, ["--tokenizer", ds] + args, data)
        check(rc == 1 and needle in err and err.count("\n") == 1 and not out,
              f"--chat refuses {what} in one line", err.strip()[:200])
    gpt4 = os.path.join(fixtures, "tokenizers", "gpt4-bpe-2k")
    rc, out, err = run(exe, ["--tokenizer", gpt4, "--chat"], b'{"messages": []}')
    check(rc == 1 and "no chat template" in err and "serve completions only" in err,
          "--chat on a tokenizer without a chat template says so", err.strip()[:200])
    tdir = os.path.join(work, "chat-raise")
    os.makedirs(tdir, exist_ok=True)
    with open(os.path.join(tdir, "tokenizer_config.json"), "w") as f:
        json.dump({"chat_template": "{% for m in messages %}{% if m.role != 'user' %}"
                   "{{ raise_exception('only user messages') }}{% endif %}{% endfor %}"}, f)
    rc, out, err = run(exe, ["--tokenizer", tdir, "--chat"],
                       b'{"messages": [{"role": "tool", "content": "x"}]}')
    check(rc == 1 and "only user messages" in err and "line 1 column" in err,
          "raise_exception in a template is one line with its message and position",
          err.strip()[:200])
    for args in (["--chat", "--decode"], ["--chat", "--add-special-tokens"], ["--ids"]):
        rc, out, err = run(exe, ["--tokenizer", ds] + args, b"{}")
        check(rc == 2, f"{' '.join(args)} is refused as a usage error", err.strip()[:200])


if __name__ == "__main__":
    sys.exit(main())
