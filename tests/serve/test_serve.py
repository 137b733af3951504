#!/usr/bin/env python3
"""`moecluster serve` over real HTTP clients on loopback.

A tiny random-weight qwen3_moe checkpoint is synthesized with the vocabulary
of the bundled gpt4-bpe-2k tokenizer (tests/fixtures/tokenizers), given that
tokenizer, a small chat template and generation_config.json end ids, and
served on port 0. Checked:

- every route (http.client, curl, the `openai` client): /health,
  /v1/models, /metrics (parsed; counters move), completions and chat, both
  streamed (SSE ending in data: [DONE], usage chunk) and not;
- the output against independent references: `moecluster generate
  --prompt-ids` (greedy ids on the in-process executor) decoded with
  `moecluster tokenize --decode`; chat against a completion of the prompt
  `moecluster tokenize --chat --ids` renders; stop strings against the cut
  text; 16 concurrent greedy requests against each one alone;
- every bad request (400 naming error.param), 404, 405, 413, model not
  found; --api-key (401; /health open); 429 when --max-requests are held;
  a client that disconnects frees its slot;
- a killed worker: in-flight requests get an error within seconds, /health
  503 then 200, a new request works;
- serve --workers ADDR attached to a worker started by hand, over a model
  folder without a chat template (completions work, chat is a 400).

usage: test_serve.py MOECLUSTER FIXTURES WORK_DIR
"""
import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

failures = 0
T0 = time.time()


def check(cond, what, detail=""):
    global failures
    if cond:
        print(f"ok: {what}")
    else:
        failures += 1
        print(f"FAIL: {what}" + (f"\n   {detail}" if detail else ""), flush=True)
    return cond


CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def make_model(exe, fixtures, work):
    """The served model folder: synth weights + the gpt4-bpe-2k tokenizer."""
    d = os.path.join(work, "tiny-chat")
    if os.path.exists(os.path.join(d, "generation_config.json")):
        return d
    shutil.rmtree(d, ignore_errors=True)
    tok = json.load(open(os.path.join(fixtures, "tokenizers", "gpt4-bpe-2k", "tokenizer.json")))
    ids = list(tok["model"]["vocab"].values()) + [a["id"] for a in tok["added_tokens"]]
    vocab = (max(ids) + 1 + 63) // 64 * 64  # the model's rows cover every tokenizer id
    cfg = json.load(open(os.path.join(fixtures, "models", "qwen3-moe-tiny", "config.json")))
    cfg["vocab_size"] = vocab
    cfg["num_hidden_layers"] = 2
    cfg_path = os.path.join(work, "tiny-chat-config.json")
    json.dump(cfg, open(cfg_path, "w"))
    p = subprocess.run([exe, "synth", "--config", cfg_path, "--out", d], capture_output=True,
                       text=True, timeout=120)
    if p.returncode != 0:
        raise SystemExit(f"synth failed: {p.stderr}")
    shutil.copy(os.path.join(fixtures, "tokenizers", "gpt4-bpe-2k", "tokenizer.json"), d)
    json.dump({"chat_template": CHAT_TEMPLATE, "bos_token": "<|begin_of_text|>",
               "eos_token": "<|end_of_text|>"}, open(os.path.join(d, "tokenizer_config.json"), "w"))
    json.dump({"eos_token_id": [1]}, open(os.path.join(d, "generation_config.json"), "w"))
    return d


class Server:
    def __init__(self, exe, args, name):
        self.name = name
        self.p = subprocess.Popen([exe, "serve", "--port", "0"] + args, stdout=subprocess.PIPE,
                                  stderr=open(os.path.join(WORK, name + ".log"), "w"), text=True,
                                  start_new_session=True)
        line = self.p.stdout.readline()
        m = re.match(r"serving (\S+) on http://127\.0\.0\.1:(\d+)$", line.strip())
        if not m:
            self.p.kill()
            raise SystemExit(f"{name}: no 'serving' line, got {line!r}; log: "
                             + open(os.path.join(WORK, name + ".log")).read()[-2000:])
        self.model, self.port = m.group(1), int(m.group(2))
        self.base = f"http://127.0.0.1:{self.port}"
        deadline = time.time() + 60
        while time.time() < deadline:
            if self.get("/health")[0] == 200:
                break
            time.sleep(0.1)

    def req(self, method, path, body=None, headers=None, timeout=60):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        h = {"Content-Type": "application/json"}
        h.update(headers or {})
        data = body if isinstance(body, (bytes, str)) or body is None else json.dumps(body)
        c.request(method, path, body=data, headers=h)
        r = c.getresponse()
        out = r.read()
        c.close()
        return r.status, out, r

    def get(self, path, headers=None):
        try:
            s, out, _ = self.req("GET", path, headers=headers, timeout=10)
            return s, out
        except OSError as e:
            return -1, str(e).encode()

    def post(self, path, body, headers=None, timeout=60):
        s, out, _ = self.req("POST", path, body, headers, timeout)
        try:
            return s, json.loads(out)
        except ValueError:
            return s, {"raw": out.decode(errors="replace")}

    def stream(self, path, body, headers=None):
        """(status, [events as parsed JSON or the string '[DONE]'])."""
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        h = {"Content-Type": "application/json"}
        h.update(headers or {})
        c.request("POST", path, body=json.dumps(body), headers=h)
        r = c.getresponse()
        if r.status != 200:
            return r.status, [json.loads(r.read())]
        assert r.getheader("Content-Type", "").startswith("text/event-stream")
        raw = r.read().decode()
        c.close()
        events = []
        for block in raw.split("\n\n"):
            if not block:
                continue
            assert block.startswith("data: "), block
            d = block[6:]
            events.append(d if d == "[DONE]" else json.loads(d))
        return 200, events

    def stop(self, sig=signal.SIGINT):
        if self.p.poll() is None:
            self.p.send_signal(sig)
            try:
                rc = self.p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.p.pid, signal.SIGKILL)
                rc = "hung"
            check(rc == 0, f"{self.name}: {signal.Signals(sig).name} stops serve with exit 0 "
                           f"(rc {rc})")


def gen_ref(exe, model, ids, n):
    """Greedy ids from `moecluster generate` (the in-process executor), as text."""
    p = subprocess.run([exe, "generate", "--model", model, "--prompt-ids",
                        ",".join(map(str, ids)), "-n", str(n), "--ignore-eos"],
                       capture_output=True, text=True, timeout=60)
    if p.returncode != 0:
        return None, p.stderr
    out = [int(x) for x in p.stdout.strip().split(",") if x]
    return out, ""


def tokenize(exe, model, text=None, chat=None, decode=None):
    args = [exe, "tokenize", "--tokenizer", model]
    if decode is not None:
        inp = json.dumps(decode)
        args.append("--decode")
    elif chat is not None:
        inp = json.dumps({"messages": chat, "add_generation_prompt": True})
        args += ["--chat", "--ids"]
    else:
        inp = text
    p = subprocess.run(args, input=inp, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    return p.stdout if decode is not None else json.loads(p.stdout)


def completion(srv, **kw):
    body = {"model": srv.model, "temperature": 0}
    body.update(kw)
    return srv.post("/v1/completions", body)


def metrics(srv):
    s, out = srv.get("/metrics")
    vals = {}
    for line in out.decode().splitlines():
        if line.startswith("#") or not line:
            continue
        name, v = line.rsplit(" ", 1)
        vals[name] = float(v)
    return s, vals


def test_basics(exe, srv, model):
    s, out = srv.get("/health")
    h = json.loads(out)
    check(s == 200 and h["status"] == "ready" and h["worker_pid"] > 0,
          f"/health 200 ready with the worker pid ({h})")
    s, out = srv.get("/v1/models")
    m = json.loads(out)
    check(s == 200 and m["object"] == "list" and m["data"][0]["id"] == srv.model
          and m["data"][0]["max_model_len"] == 2048, f"/v1/models ({m})")
    s0, m0 = metrics(srv)
    check(s0 == 200 and "moecluster:num_requests_running" in m0
          and "moecluster:time_to_first_token_seconds_count" in m0
          and 'moecluster:e2e_request_latency_seconds_bucket{le="+Inf"}' in m0,
          "/metrics parses as Prometheus text with the gauges and histograms")

    prompt = "Hello, world! The quick brown fox"
    ids = tokenize(exe, model, text=prompt)
    ref, err = gen_ref(exe, model, ids, 12)
    check(ref is not None, "generate --prompt-ids gives the reference ids", err)
    ref_text = tokenize(exe, model, decode=ref) if ref else None
    s, r = completion(srv, prompt=prompt, max_tokens=12)
    ok = s == 200 and r["object"] == "text_completion" and r["id"].startswith("cmpl-")
    check(ok, f"POST /v1/completions 200 ({s} {str(r)[:300]})")
    if not ok:
        return None
    ch = r["choices"][0]
    check(ch["text"] == ref_text, "completion text == generate's greedy ids decoded",
          f"{ch['text']!r} vs {ref_text!r}")
    check(r["usage"] == {"prompt_tokens": len(ids), "completion_tokens": 12, "total_tokens":
                         len(ids) + 12} and ch["finish_reason"] == "length",
          f"usage and finish_reason ({r['usage']}, {ch['finish_reason']})")
    s, r2 = completion(srv, prompt=ids, max_tokens=12)
    check(s == 200 and r2["choices"][0]["text"] == ch["text"], "prompt as token ids: same text")
    s, r3 = completion(srv, prompt=prompt)
    check(s == 200 and r3["usage"]["completion_tokens"] == 16, "default max_tokens is 16")
    # logprobs
    s, r4 = completion(srv, prompt=prompt, max_tokens=6, logprobs=3)
    lp = r4["choices"][0]["logprobs"] if s == 200 else None
    check(lp and len(lp["tokens"]) == 6 and len(lp["token_logprobs"]) == 6
          and all(len(t) >= 1 and len(t) <= 3 for t in lp["top_logprobs"])
          and all(x <= 0 for x in lp["token_logprobs"])
          and "".join(lp["tokens"]) == ch["text"][:len("".join(lp["tokens"]))]
          and lp["text_offset"][0] == 0,
          f"completion logprobs: tokens, token_logprobs, top 3, text_offset ({str(lp)[:300]})")
    # the greedy token is the top candidate
    check(lp and all(abs(lp["token_logprobs"][i] - max(lp["top_logprobs"][i].values())) < 1e-6
                     for i in range(6)), "greedy: each chosen token's logprob is the top one")
    # chat == completion of the rendered prompt
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}]
    cids = tokenize(exe, model, chat=msgs)
    s, c = srv.post("/v1/chat/completions", {"messages": msgs, "temperature": 0,
                                               "max_tokens": 10, "logprobs": True,
                                               "top_logprobs": 2})
    s2, cr = completion(srv, prompt=cids, max_tokens=10)
    ok = s == 200 and c["object"] == "chat.completion" and c["id"].startswith("chatcmpl-")
    check(ok and c["choices"][0]["message"]["role"] == "assistant"
          and c["choices"][0]["message"]["content"] == cr["choices"][0]["text"]
          and c["usage"]["prompt_tokens"] == len(cids),
          f"chat == completion of the template's ids ({str(c)[:300]})")
    clp = c["choices"][0]["logprobs"]["content"] if ok else []
    check(len(clp) == 10 and all(len(e["top_logprobs"]) == 2 and
                                 bytes(e["bytes"]).decode(errors="replace") == e["token"]
                                 for e in clp), "chat logprobs: content[], bytes, top 2")
    s, c2 = srv.post("/v1/chat/completions", {"messages": [{"role": "user", "content": [
        {"type": "text", "text": "Hi "}, {"type": "text", "text": "there"}]}],
        "temperature": 0, "max_completion_tokens": 3})
    check(s == 200 and c2["usage"]["completion_tokens"] == 3,
          "chat: content as text parts, max_completion_tokens")
    s1, m1 = metrics(srv)
    check(m1["moecluster:prompt_tokens_total"] > m0["moecluster:prompt_tokens_total"]
          and m1["moecluster:generation_tokens_total"] >= m0["moecluster:generation_tokens_total"]
          + 12 + 12 + 16 + 6 + 10 + 10 + 3
          and m1["moecluster:e2e_request_latency_seconds_count"]
          >= m0["moecluster:e2e_request_latency_seconds_count"] + 7
          and m1['moecluster:request_success_total{finished_reason="length"}'] >= 7,
          "/metrics counters move (prompt, generation tokens, e2e count, length finishes)")
    # the plain greedy completions (no logprobs) were answered with the workers' picks, the
    # ones with logprobs with whole rows: both kinds of step ran
    dc = m1["moecluster:candidate_steps_total"] - m0["moecluster:candidate_steps_total"]
    ds = m1["moecluster:engine_steps_total"] - m0["moecluster:engine_steps_total"]
    check(0 < dc < ds, f"greedy steps answered with candidates: {dc} of {ds} steps")
    return prompt, ch["text"]


def test_stream_and_stop(srv, prompt, text):
    s, ev = srv.stream("/v1/completions", {"prompt": prompt, "max_tokens": 12, "temperature": 0,
                                           "stream": True,
                                           "stream_options": {"include_usage": True}})
    ok = s == 200 and ev and ev[-1] == "[DONE]"
    check(ok, f"stream ends with data: [DONE] ({len(ev)} events)")
    if ok:
        chunks = [e for e in ev[:-1] if e["choices"]]
        got = "".join(e["choices"][0]["text"] for e in chunks)
        check(got == text, "streamed text == non-streamed text", f"{got!r} vs {text!r}")
        check(chunks[-1]["choices"][0]["finish_reason"] == "length"
              and all(e["choices"][0]["finish_reason"] is None for e in chunks[:-1]),
              "finish_reason only on the last chunk")
        u = ev[-2]
        check(u["choices"] == [] and u["usage"]["completion_tokens"] == 12,
              f"usage chunk before [DONE] ({u})")
    s, ev = srv.stream("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}],
                                                "max_tokens": 5, "temperature": 0,
                                                "stream": True})
    check(s == 200 and ev[0]["choices"][0]["delta"].get("role") == "assistant"
          and ev[-1] == "[DONE]" and ev[-2]["choices"][0]["finish_reason"] == "length"
          and ev[0]["object"] == "chat.completion.chunk", "chat stream: role, deltas, [DONE]")
    # stop strings: cut where the stop string starts, finish_reason stop
    if len(text) >= 8:
        stop = text[3:6]
        cut = text[:text.index(stop)]
        s, r = completion(srv, prompt=prompt, max_tokens=12, stop=[stop, "never-in-this-text-@@"])
        check(s == 200 and r["choices"][0]["text"] == cut
              and r["choices"][0]["finish_reason"] == "stop",
              f"stop string {stop!r}: text cut at it ({str(r)[:200]})")
        s, ev = srv.stream("/v1/completions", {"prompt": prompt, "max_tokens": 12,
                                               "temperature": 0, "stop": stop, "stream": True})
        got = "".join(e["choices"][0]["text"] for e in ev[:-1] if e["choices"])
        check(got == cut and ev[-2]["choices"][0]["finish_reason"] == "stop",
              f"streamed stop string: same cut ({got!r} vs {cut!r})")
    # seeded sampling is reproducible; a draw without a top_k is made by the workers from
    # their rows (draw_steps_total), and the same request with logprobs (whole rows, drawn
    # here) draws the same text
    body = {"prompt": prompt, "max_tokens": 8, "temperature": 1.0, "top_p": 0.9, "seed": 7}
    m0 = metrics(srv)[1]
    a = srv.post("/v1/completions", body)[1]
    m1 = metrics(srv)[1]
    b = srv.post("/v1/completions", body)[1]
    check(a["choices"][0]["text"] == b["choices"][0]["text"], "same seed, same sampled text")
    m2 = metrics(srv)[1]
    c = srv.post("/v1/completions", dict(body, logprobs=1))[1]
    m3 = metrics(srv)[1]
    dd1 = m1["moecluster:draw_steps_total"] - m0["moecluster:draw_steps_total"]
    dd3 = m3["moecluster:draw_steps_total"] - m2["moecluster:draw_steps_total"]
    check(dd1 == a["usage"]["completion_tokens"] and dd1 > 0 and dd3 == 0 and a["choices"][0]["text"] == c["choices"][0]["text"],
          f"top_p 0.9 without top_k: the workers draw ({dd1} steps), the text of whole rows "
          f"({a['choices'][0]['text']!r} vs {c['choices'][0]['text']!r}, {dd3} steps)")
    for t, p, mp in ((0.7, 1.0, 0.0), (1.3, 0.5, 0.05), (0.4, 1.0, 0.2)):
        body2 = {"prompt": prompt, "max_tokens": 8, "temperature": t, "top_p": p, "min_p": mp,
                 "seed": 23}
        a2 = srv.post("/v1/completions", body2)[1]["choices"][0]["text"]
        c2 = srv.post("/v1/completions", dict(body2, logprobs=0))[1]["choices"][0]["text"]
        check(a2 == c2, f"temperature {t} top_p {p} min_p {mp}: the workers' draws give the "
              f"text of whole rows ({a2!r} vs {c2!r})")
    del body["seed"]
    texts = {srv.post("/v1/completions", body)[1]["choices"][0]["text"] for _ in range(3)}
    check(len(texts) == 3, f"without a seed, each request samples its own text ({texts})")
    # a draw with top_k <= 64 is made from the workers' candidates; the same request with
    # logprobs (whole rows) draws the same text
    body = {"prompt": prompt, "max_tokens": 8, "temperature": 0.8, "top_k": 20, "top_p": 0.95,
            "seed": 11}
    m0 = metrics(srv)[1]
    a = srv.post("/v1/completions", body)[1]
    m1 = metrics(srv)[1]
    b = srv.post("/v1/completions", dict(body, logprobs=1))[1]
    m2 = metrics(srv)[1]
    dc1 = m1["moecluster:candidate_steps_total"] - m0["moecluster:candidate_steps_total"]
    dc2 = m2["moecluster:candidate_steps_total"] - m1["moecluster:candidate_steps_total"]
    check(dc1 > 0 and dc2 == 0 and a["choices"][0]["text"] == b["choices"][0]["text"],
          f"top_k 20 draws from candidates ({dc1} steps), the text of whole rows "
          f"({a['choices'][0]['text']!r} vs {b['choices'][0]['text']!r}, {dc2} steps)")


def test_utf8_holdback(srv, exe, model):
    """A character split over two byte tokens (C3 A9, "é") streams whole.
    logit_bias makes C3 the first pick and A9 the second (the repetition
    penalty pushes C3 down once it was generated)."""
    c3, a9 = 131, 106
    check(tokenize(exe, model, decode=[c3, a9]) == "\u00e9"
          and tokenize(exe, model, decode=[c3]) == "\ufffd", "tokens 131, 106 are the bytes C3, A9")
    body = {"prompt": [5, 6], "max_tokens": 2, "temperature": 0, "repetition_penalty": 1000,
            "logit_bias": {str(c3): 100, str(a9): 50}}
    s, r = srv.post("/v1/completions", body)
    check(s == 200 and r["choices"][0]["text"] == "\u00e9",
          f"C3 then A9: the text is 'é' ({str(r)[:200]})")
    s, ev = srv.stream("/v1/completions", dict(body, stream=True))
    texts = [e["choices"][0]["text"] for e in ev[:-1] if e["choices"]]
    check(s == 200 and "".join(texts) == "\u00e9" and not any("\ufffd" in t for t in texts),
          f"streamed: the incomplete first byte is held back, no U+FFFD sent ({texts})")


def test_concurrent(srv, exe, model):
    prompts = [f"Request number {i}: {'abc ' * (i % 5)}tell me" for i in range(16)]
    alone = []
    for p in prompts:
        s, r = completion(srv, prompt=p, max_tokens=48)
        alone.append(r["choices"][0]["text"] if s == 200 else None)
    together = [None] * 16
    t0 = time.time()

    def one(i):
        s, r = completion(srv, prompt=prompts[i], max_tokens=48)
        together[i] = r["choices"][0]["text"] if s == 200 else f"status {s}: {r}"
    th = [threading.Thread(target=one, args=(i,)) for i in range(16)]
    for t in th:
        t.start()
    for t in th:
        t.join()
    dt = time.time() - t0
    bad = [(i, alone[i], together[i]) for i in range(16) if alone[i] != together[i]]
    check(not bad and None not in alone,
          f"16 concurrent greedy requests == each alone ({dt:.2f} s for all 16)", str(bad[:3]))


def test_bad(srv):
    big_prompt = [5] * 2100
    cases = [
        ("not json", b"{\"prompt\": ", None),
        ("array body", [1, 2], None),
        ("prompt missing", {}, "prompt"),
        ("prompt wrong type", {"prompt": 5}, "prompt"),
        ("prompt list of strings", {"prompt": ["a", "b"]}, "prompt"),
        ("prompt empty list", {"prompt": []}, "prompt"),
        ("max_tokens negative", {"prompt": "a", "max_tokens": -1}, "max_tokens"),
        ("max_tokens zero", {"prompt": "a", "max_tokens": 0}, "max_tokens"),
        ("max_tokens huge", {"prompt": "a", "max_tokens": 10 ** 9}, "max_tokens"),
        ("max_tokens string", {"prompt": "a", "max_tokens": "5"}, "max_tokens"),
        ("prompt past the context", {"prompt": big_prompt}, "prompt"),
        ("temperature string", {"prompt": "a", "temperature": "hot"}, "temperature"),
        ("temperature negative", {"prompt": "a", "temperature": -1}, "temperature"),
        ("top_p 1.5", {"prompt": "a", "top_p": 1.5}, "top_p"),
        ("top_k -5", {"prompt": "a", "top_k": -5}, "top_k"),
        ("min_p 2", {"prompt": "a", "min_p": 2}, "min_p"),
        ("presence_penalty 3", {"prompt": "a", "presence_penalty": 3}, "presence_penalty"),
        ("seed float", {"prompt": "a", "seed": 1.5}, "seed"),
        ("stop 5 strings", {"prompt": "a", "stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ("stop number", {"prompt": "a", "stop": 3}, "stop"),
        ("stop too long", {"prompt": "a", "stop": "x" * 1000}, "stop"),
        ("stop_token_ids negative", {"prompt": "a", "stop_token_ids": [-1]}, "stop_token_ids"),
        ("logit_bias bad key", {"prompt": "a", "logit_bias": {"x": 1}}, "logit_bias"),
        ("logit_bias 500", {"prompt": "a", "logit_bias": {"5": 500}}, "logit_bias"),
        ("logprobs 50", {"prompt": "a", "logprobs": 50}, "logprobs"),
        ("n 2", {"prompt": "a", "n": 2}, "n"),
        ("best_of 3", {"prompt": "a", "best_of": 3}, "best_of"),
        ("echo", {"prompt": "a", "echo": True}, "echo"),
        ("suffix", {"prompt": "a", "suffix": "zz"}, "suffix"),
        ("stream string", {"prompt": "a", "stream": "yes"}, "stream"),
        ("token id past the vocabulary", {"prompt": [10 ** 6]}, None),
    ]
    for what, body, param in cases:
        s, r = srv.post("/v1/completions", body)
        e = r.get("error", {}) if isinstance(r, dict) else {}
        check(s == 400 and e.get("type") == "invalid_request_error" and e.get("message")
              and (param is None or e.get("param") == param),
              f"400 for {what} (param {param})", f"{s} {r}")
    chat_cases = [
        ("messages missing", {}, "messages"),
        ("messages not list", {"messages": "hi"}, "messages"),
        ("message without role", {"messages": [{"content": "x"}]}, "messages"),
        ("logprobs int", {"messages": [{"role": "user", "content": "x"}], "logprobs": 2},
         "logprobs"),
        ("top_logprobs without logprobs",
         {"messages": [{"role": "user", "content": "x"}], "top_logprobs": 2}, "top_logprobs"),
        ("max_completion_tokens -3",
         {"messages": [{"role": "user", "content": "x"}], "max_completion_tokens": -3},
         "max_completion_tokens"),
    ]
    for what, body, param in chat_cases:
        s, r = srv.post("/v1/chat/completions", body)
        e = r.get("error", {})
        check(s == 400 and e.get("param") == param, f"chat: 400 for {what}", f"{s} {r}")
    s, r = srv.post("/v1/completions", {"model": "gpt-4", "prompt": "a"})
    check(s == 404 and r["error"]["param"] == "model", f"unknown model: 404 ({r})")
    s, out, _ = srv.req("GET", "/v1/nothing")
    check(s == 404 and json.loads(out)["error"]["message"], "unknown path: 404 JSON")
    s, out, resp = srv.req("GET", "/v1/completions")
    check(s == 405 and resp.getheader("Allow") == "POST", "GET /v1/completions: 405, Allow POST")
    s, out, _ = srv.req("POST", "/health")
    check(s == 405, "POST /health: 405")
    big = b'{"prompt": "' + b"a" * (9 << 20) + b'"}'
    try:
        s, out, _ = srv.req("POST", "/v1/completions", big)
    except OSError as e:  # the server may close before the whole body is sent
        s, out = 413 if "Broken pipe" in str(e) or "reset" in str(e) else -1, str(e).encode()
    check(s == 413, f"9 MiB body: 413 ({s})")
    s, out = srv.get("/health")
    check(s == 200, "still serving after the bad requests")


def test_clients(srv):
    p = subprocess.run(["curl", "-sS", "-X", "POST", srv.base + "/v1/completions", "-H",
                        "Content-Type: application/json", "-d",
                        json.dumps({"prompt": "Say this", "max_tokens": 4, "temperature": 0})],
                       capture_output=True, text=True, timeout=60)
    try:
        r = json.loads(p.stdout)
    except ValueError:
        r = {}
    check(p.returncode == 0 and r.get("usage", {}).get("completion_tokens") == 4,
          f"curl POST /v1/completions ({p.stdout[:200]} {p.stderr[:200]})")
    p = subprocess.run(["curl", "-sS", "-N", "-X", "POST", srv.base + "/v1/chat/completions",
                        "-H", "Content-Type: application/json", "-d",
                        json.dumps({"messages": [{"role": "user", "content": "hi"}],
                                    "max_tokens": 3, "stream": True})],
                       capture_output=True, text=True, timeout=60)
    check(p.returncode == 0 and p.stdout.endswith("data: [DONE]\n\n"), "curl streaming chat")
    try:
        import openai
    except ImportError:
        check(False, "the openai package is installed (tests use it as a client)")
        return
    cl = openai.OpenAI(base_url=srv.base + "/v1", api_key="unused", max_retries=0)
    ms = cl.models.list()
    check([m.id for m in ms.data] == [srv.model], "openai: models.list")
    r = cl.completions.create(model=srv.model, prompt="Once upon", max_tokens=5, temperature=0)
    check(r.usage.completion_tokens == 5 and isinstance(r.choices[0].text, str),
          "openai: completions.create")
    r = cl.chat.completions.create(model=srv.model, messages=[{"role": "user", "content": "Hi"}],
                                   max_tokens=5, temperature=0)
    check(r.choices[0].message.role == "assistant" and r.usage.completion_tokens == 5,
          "openai: chat.completions.create")
    st = cl.chat.completions.create(model=srv.model, messages=[{"role": "user", "content": "Hi"}],
                                    max_tokens=5, temperature=0, stream=True,
                                    stream_options={"include_usage": True})
    parts, usage = [], None
    for ch in st:
        if ch.choices:
            parts.append(ch.choices[0].delta.content or "")
        if ch.usage:
            usage = ch.usage
    check("".join(parts) == r.choices[0].message.content and usage
          and usage.completion_tokens == 5, "openai: chat streaming == non-streaming, usage")
    st = cl.completions.create(model=srv.model, prompt="Once upon", max_tokens=5, temperature=0,
                               stream=True)
    check(len([c for c in st]) >= 1, "openai: completions streaming")
    try:
        cl.completions.create(model=srv.model, prompt="x", max_tokens=-2)
        check(False, "openai: a bad request raises BadRequestError")
    except openai.BadRequestError as e:
        check(e.status_code == 400, "openai: a bad request raises BadRequestError (400)")


def start_pair(srv, body):
    """A plain and a streamed completion, both running (/metrics); the plain
    one's result lands in results from its own thread."""
    results = {}

    def plain():
        try:
            s, r = srv.post("/v1/completions", body)
            results["plain"] = (s, "error" in r, r.get("error", {}).get("message", "")[:120])
        except OSError as e:
            results["plain"] = (-1, False, str(e))
        results["plain_t"] = time.time()
    th = threading.Thread(target=plain)
    th.start()
    c = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=60)
    c.request("POST", "/v1/completions", body=json.dumps(dict(body, stream=True)),
              headers={"Content-Type": "application/json"})
    r = c.getresponse()
    first = r.readline()
    running = wait_metrics(srv, lambda m: m.get("moecluster:num_requests_running") == 2)
    return results, th, c, r, first, running


def test_killed_worker(srv):
    s, out = srv.get("/health")
    pid = json.loads(out)["worker_pid"]
    body = {"prompt": "a b c", "max_tokens": 2000, "temperature": 0, "ignore_eos": True}
    # The tiny model writes 2000 tokens in well under a second: the worker is
    # stopped (SIGSTOP) once both requests run, and the kill comes only if they
    # are still running while it is stopped (else it goes on and the pair is
    # sent again), so the kill always meets two requests in flight.
    for attempt in range(5):
        results, th, c, r, first, running = start_pair(srv, body)
        frozen = running and stop_worker_if(
            srv, pid, lambda m: m.get("moecluster:num_requests_running") == 2)
        if frozen:
            break
        r.read()
        c.close()
        th.join(timeout=60)
        print(f"   attempt {attempt + 1}: the requests ended before the worker was stopped")
    check(frozen, "both requests are running before the kill (/metrics, worker stopped)")
    health = []
    stop = threading.Event()

    def poll():  # /health as often as it answers (one kept-alive connection), from before the kill
        hc = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
        while not stop.is_set():
            try:
                hc.request("GET", "/health")
                resp = hc.getresponse()
                health.append((time.time(), resp.status, resp.read()))
            except (OSError, http.client.HTTPException):
                hc.close()
                hc = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
        hc.close()
    pts = [threading.Thread(target=poll) for _ in range(2)]
    for pt in pts:
        pt.start()
    t_kill = time.time()
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError as e:
        check(False, f"kill the worker pid {pid}: {e}")
    rest = (first + r.read()).decode()
    t_stream = time.time() - t_kill
    c.close()
    th.join(timeout=30)
    events = [b[6:] for b in rest.split("\n\n") if b.startswith("data: ")]
    err = [e for e in events if e.startswith('{"error"')]
    print(f"   killed worker {pid}: stream ended {t_stream:.2f} s later, plain "
          f"{results.get('plain_t', 0) - t_kill:.2f} s later; {results.get('plain')}; "
          f"{err[:1]}")
    check(results.get("plain", (0,))[0] == 500 and results["plain"][1],
          f"in-flight request: 500 with an error body ({results.get('plain')})")
    check(err and events[-1] == "[DONE]", "in-flight stream: an error event then [DONE]",
          rest[-300:])
    check(t_stream < 10 and results.get("plain_t", 1e9) - t_kill < 10,
          "in-flight requests end within seconds")
    deadline = time.time() + 60
    while time.time() < deadline:
        if any(s == 200 and json.loads(o)["worker_pid"] not in (pid, 0)
               for _, s, o in health[-3:]):
            break
        time.sleep(0.05)
    stop.set()
    for pt in pts:
        pt.join()
    health.sort(key=lambda h: h[0])
    after = [(t - t_kill, s) for t, s, _ in health if t >= t_kill]
    first503 = next((t for t, s in after if s == 503), None)
    back = next((t for t, s in after if s == 200 and first503 is not None and t > first503), None)
    check(first503 is not None and back is not None,
          f"/health: 503 from {first503} s, 200 again from {back} s after the kill "
          f"({len(after)} polls)", str([(round(t, 3), s) for t, s in after][:8]) + " ... " + str(
              [(round(t, 3), s) for t, s in after if s != 200][:8]))
    s, r = completion(srv, prompt="after the restart", max_tokens=4)
    check(s == 200 and r["usage"]["completion_tokens"] == 4, "a new request works")


def test_key_and_overload(exe, model):
    srv = Server(exe, ["--model", model, "--api-key", "s3cret", "--max-requests", "2",
                       "--max-num-seqs", "1", "--served-model-name", "tiny"], "serve-key")
    try:
        check(srv.model == "tiny", "--served-model-name names the model")
        s, out = srv.get("/health")
        check(s == 200, "/health needs no key")
        for path in ("/v1/models", "/metrics"):
            s, out = srv.get(path)
            check(s == 401 and json.loads(out)["error"]["code"] == "invalid_api_key",
                  f"{path} without the key: 401")
        s, r = srv.post("/v1/completions", {"prompt": "a", "max_tokens": 2},
                        {"Authorization": "Bearer wrong"})
        check(s == 401, "a wrong key: 401")
        s, r = srv.post("/v1/completions", {"prompt": "a", "max_tokens": 2},
                        {"Authorization": "Bearer s3cret"})
        check(s == 200, f"the right key: 200 ({s} {r})")
        auth = {"Authorization": "Bearer s3cret", "Content-Type": "application/json"}
        # one stream runs (--max-num-seqs 1), one waits: both slots held; a third request
        # is refused with 429. The tiny model writes the 4000 tokens in about a second, and
        # the loopback socket takes them all unread, so once both are held the worker is
        # stopped (SIGSTOP) for the check and the third request: otherwise, on a loaded
        # machine, the first stream could end (and free its slot) in between. The pair is
        # sent again if the first stream ended before the worker was stopped.
        pid = json.loads(srv.get("/health")[1])["worker_pid"]
        both = lambda m: (m.get("moecluster:num_requests_running") == 1
                          and m.get("moecluster:num_requests_waiting") == 1)
        held = False
        try:
            for attempt in range(5):
                conns = []
                for i in range(2):
                    c = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
                    c.request("POST", "/v1/completions", body=json.dumps(
                        {"prompt": "a b", "max_tokens": 4000, "ignore_eos": True, "stream": True}),
                        headers=auth)
                    if i == 0:
                        c.getresponse().readline()  # its first token came: it is running
                    conns.append(c)
                held = wait_metrics(srv, both, auth) and stop_worker_if(srv, pid, both, auth)
                if held:
                    break
                for c in conns:
                    c.close()
                print(f"   attempt {attempt + 1}: the first stream ended before the worker was stopped")
            check(held, "one stream runs, one waits (/metrics)", str(metrics_auth(srv, auth)[1])[:600])
            s, r = srv.post("/v1/completions", {"prompt": "a", "max_tokens": 2}, auth)
            check(s == 429 and r["error"]["type"] == "rate_limit_error",
                  f"a third request with --max-requests 2 held: 429 ({s} {r})")
        finally:
            if held:  # the worker was left stopped
                os.kill(pid, signal.SIGCONT)
        for c in conns:  # the clients go away: their requests are cancelled
            if c.sock:
                c.sock.shutdown(2)
            c.close()
        deadline, s = time.time() + 15, 0
        while time.time() < deadline:
            s, r = srv.post("/v1/completions", {"prompt": "a", "max_tokens": 2}, auth)
            if s == 200:
                break
            time.sleep(0.1)
        check(s == 200, "disconnected streams free their slots")
        s, m = metrics_auth(srv, auth)
        check(m.get('moecluster:request_success_total{finished_reason="abort"}', 0) >= 2,
              "the disconnected streams count as aborted")
    finally:
        srv.stop(signal.SIGTERM)


def wait_metrics(srv, cond, h=None, timeout=10):
    deadline = time.time() + timeout
    while time.time() < deadline:
        s, m = metrics_auth(srv, h) if h else metrics(srv)
        if s == 200 and cond(m):
            return True
        time.sleep(0.01)
    return False


def stop_worker_if(srv, pid, cond, h=None):
    """Stops the worker (SIGSTOP) and checks /metrics against cond once the
    server has taken in what the worker sent before it stopped: True with the
    worker left stopped, or False with it running again (SIGCONT)."""
    os.kill(pid, signal.SIGSTOP)
    time.sleep(0.2)
    s, m = metrics_auth(srv, h) if h else metrics(srv)
    if s == 200 and cond(m):
        return True
    os.kill(pid, signal.SIGCONT)
    return False


def test_attached(exe, model):
    """serve --workers: attach to a worker started by hand; a model folder
    without a chat template serves completions and refuses chat."""
    bare = os.path.join(WORK, "no-template")
    os.makedirs(bare, exist_ok=True)
    for f in os.listdir(model):
        if f != "tokenizer_config.json" and not os.path.exists(os.path.join(bare, f)):
            os.symlink(os.path.join(model, f), os.path.join(bare, f))
    w = subprocess.Popen([exe, "worker", "--model", bare, "--listen", "tcp://127.0.0.1:*"],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                         start_new_session=True)
    try:
        line = w.stdout.readline().strip()
        check(line.startswith("listening on tcp://"), f"worker: {line!r}")
        addr = line.split()[-1]
        srv = Server(exe, ["--workers", addr, "--model", bare], "serve-attached")
        try:
            s, r = completion(srv, prompt="attached", max_tokens=3)
            check(s == 200 and r["usage"]["completion_tokens"] == 3,
                  f"serve --workers ADDR: a completion through the attached worker ({s})")
            s, r = srv.post("/v1/chat/completions", {"messages": [{"role": "user",
                                                                   "content": "x"}]})
            check(s == 400 and "no chat template" in r["error"]["message"]
                  and r["error"]["param"] == "messages",
                  f"no chat template: chat is a 400 saying so ({r})")
        finally:
            srv.stop()
        check(w.poll() is None, "an attached worker keeps running after serve stops")
    finally:
        if w.poll() is None:
            w.terminate()
            try:
                w.wait(timeout=10)
            except subprocess.TimeoutExpired:
                w.kill()


def metrics_auth(srv, h):
    s, out = srv.get("/metrics", {"Authorization": h["Authorization"]})
    vals = {}
    for line in out.decode().splitlines():
        if line and not line.startswith("#"):
            name, v = line.rsplit(" ", 1)
            vals[name] = float(v)
    return s, vals


def main():
    global WORK
    exe, fixtures, WORK = os.path.abspath(sys.argv[1]), sys.argv[2], os.path.abspath(sys.argv[3])
    os.makedirs(WORK, exist_ok=True)
    model = make_model(exe, fixtures, WORK)
    p = subprocess.run([exe, "serve", "--workers", "tcp://127.0.0.1:1"], capture_output=True,
                       text=True, timeout=30)
    check(p.returncode == 2 and "--model" in p.stderr, "--workers without --model is refused")
    srv = Server(exe, ["--model", model, "--max-model-len", "2048"], "serve-main")
    try:
        print(f"   serving on port {srv.port} ({time.time() - T0:.1f} s)")
        got = test_basics(exe, srv, model)
        if got:
            test_stream_and_stop(srv, *got)
        test_utf8_holdback(srv, exe, model)
        test_concurrent(srv, exe, model)
        test_bad(srv)
        test_clients(srv)
        test_killed_worker(srv)
    finally:
        srv.stop()
    if os.environ.get("MC_STEP_GRAPHS") == "1":
        # serve.http.graphs: the workers' decode steps ran as graphs (the CPU
        # acting as a device records them), and every answer above held
        with open(os.path.join(WORK, "serve-main.log"), errors="replace") as f:
            runs = re.findall(r"step graphs: (\d+) captured, (\d+) launched", f.read())
        check(any(int(n) > 0 for _, n in runs),
              f"MC_STEP_GRAPHS=1: the workers launched graphs ({runs})")
    test_key_and_overload(exe, model)
    test_attached(exe, model)
    print(f"{failures} failures ({time.time() - T0:.1f} s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
