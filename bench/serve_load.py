#!/usr/bin/env python3
"""Load benchmark of `moecluster serve` (a benchmark, not a test).

Starts `moecluster serve` (the demo model unless --model is given) on a free
loopback port, or uses a running server (--url, with --pid to sample its
memory), and streams completions at each concurrency level (default 1, 4,
16, 64): a fixed prompt set, max_tokens fixed, greedy (--sampling); each level runs
--requests requests (at least 2 x the level). Per level it reports
requests/s, output tokens/s, time to first token (TTFT) and inter-token
latency (ITL, between consecutive streamed chunks of a request; a chunk is
one token unless the server held back an incomplete UTF-8 character)
as p50 / p90 / p99, and the errors.

With --duration S it then keeps --soak-concurrency requests in flight for S
seconds and samples the resident memory (RSS) of the serve process and of
every process under it (the worker group) once a second, printing the
first, last and largest totals: memory staying flat over a long run (10
minutes) is the goal. The RSS is sampled during the levels too.

Only the Python standard library is used.

usage: bench/serve_load.py [--exe build/coordinator/moecluster] [--model DIR]
                           [--url http://127.0.0.1:8000 [--pid PID]]
                           [--levels 1,4,16,64] [--requests N] [--max-tokens N]
                           [--duration S] [--soak-concurrency N] [--json FILE]
                           [--sampling greedy|top_p|top_k]
                           [-- extra serve flags]
"""
import argparse
import http.client
import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.parse

PROMPTS = [
    "The capital of France is",
    "Write a short poem about the sea.",
    "def fibonacci(n):",
    "Explain the difference between TCP and UDP in one paragraph.",
    "你好，请介绍一下你自己。",
    "List three prime numbers greater than 100:",
    "Once upon a time, in a distant galaxy,",
    "SELECT name, COUNT(*) FROM users GROUP BY",
    "Translate to German: The weather is nice today.",
    "The mixture-of-experts layer routes each token to",
    "Summarize: The quick brown fox jumps over the lazy dog. " * 4,
    "1, 1, 2, 3, 5, 8, 13,",
]


def pct(values, p):
    if not values:
        return float("nan")
    v = sorted(values)
    k = (len(v) - 1) * p / 100.0
    lo = int(k)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)


# ---- memory ----

def children_of():
    """{ppid: [pid, ...]} over /proc."""
    kids = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                s = f.read()
            ppid = int(s[s.rindex(")") + 2:].split()[1])
            kids.setdefault(ppid, []).append(int(d))
        except (OSError, ValueError):
            pass
    return kids


def rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_rss(root):
    """(total RSS in MiB of root and every descendant, per-process {pid: MiB})."""
    kids = children_of()
    todo, seen = [root], {}
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen[p] = rss_kib(p) / 1024.0
        todo.extend(kids.get(p, []))
    return sum(seen.values()), seen


class MemSampler(threading.Thread):
    def __init__(self, pid, period=1.0):
        super().__init__(daemon=True)
        self.pid, self.period = pid, period
        self.samples = []  # (t, total MiB, process count)
        self.stop = threading.Event()

    def run(self):
        t0 = time.time()
        while not self.stop.is_set():
            total, per = tree_rss(self.pid)
            self.samples.append((time.time() - t0, total, len(per)))
            self.stop.wait(self.period)


# ---- one streamed request ----

# the requests' sampling parameters (--sampling)
SAMPLING = {"temperature": 0}
SAMPLINGS = {"greedy": {"temperature": 0},
             "top_p": {"temperature": 1.0, "top_p": 0.9},
             "top_k": {"temperature": 1.0, "top_k": 40}}

def stream_one(url, model, prompt, max_tokens, timeout=600):
    """(ok, ttft s, [itl s], output tokens, error) of one streamed completion."""
    u = urllib.parse.urlparse(url)
    body = dict(SAMPLING, prompt=prompt, max_tokens=max_tokens, stream=True,
                stream_options={"include_usage": True})
    if model:
        body["model"] = model
    conn = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=timeout)
    t0 = time.perf_counter()
    try:
        conn.request("POST", "/v1/completions", json.dumps(body),
                     {"Content-Type": "application/json"})
        r = conn.getresponse()
        if r.status != 200:
            return False, 0, [], 0, f"HTTP {r.status}: {r.read()[:200]!r}"
        first, last, itl, chunks, usage = None, None, [], 0, None
        for raw in r:
            line = raw.strip()
            if not line.startswith(b"data:"):
                continue
            data = line[5:].strip()
            if data == b"[DONE]":
                break
            ev = json.loads(data)
            if ev.get("usage"):
                usage = ev["usage"]
            if ev.get("choices") and ev["choices"][0].get("text"):
                now = time.perf_counter()
                if first is None:
                    first = now
                else:
                    itl.append(now - last)
                last = now
                chunks += 1
        if first is None:
            return False, 0, [], 0, "no tokens streamed"
        toks = usage["completion_tokens"] if usage else chunks
        return True, first - t0, itl, toks, None
    except (OSError, http.client.HTTPException, ValueError) as e:
        return False, 0, [], 0, str(e)
    finally:
        conn.close()


def run_level(url, model, conc, n_req, max_tokens):
    lock = threading.Lock()
    state = {"next": 0, "ttft": [], "itl": [], "toks": 0, "ok": 0, "err": 0, "errors": []}

    def worker():
        while True:
            with lock:
                i = state["next"]
                if i >= n_req:
                    return
                state["next"] += 1
            ok, ttft, itl, toks, err = stream_one(url, model, PROMPTS[i % len(PROMPTS)],
                                                  max_tokens)
            with lock:
                if ok:
                    state["ok"] += 1
                    state["ttft"].append(ttft)
                    state["itl"].extend(itl)
                    state["toks"] += toks
                else:
                    state["err"] += 1
                    if len(state["errors"]) < 3:
                        state["errors"].append(err)

    t0 = time.perf_counter()
    th = [threading.Thread(target=worker) for _ in range(conc)]
    for t in th:
        t.start()
    for t in th:
        t.join()
    wall = time.perf_counter() - t0
    return {
        "concurrency": conc, "requests": n_req, "ok": state["ok"], "errors": state["err"],
        "wall_s": wall, "req_per_s": state["ok"] / wall, "out_tok_per_s": state["toks"] / wall,
        "ttft_ms": [1e3 * pct(state["ttft"], p) for p in (50, 90, 99)],
        "itl_ms": [1e3 * pct(state["itl"], p) for p in (50, 90, 99)],
        "first_errors": state["errors"],
    }


def soak(url, model, conc, seconds, max_tokens):
    """Keeps conc requests in flight for seconds; returns (requests, errors)."""
    end = time.time() + seconds
    lock = threading.Lock()
    cnt = {"ok": 0, "err": 0, "i": 0}

    def worker():
        while time.time() < end:
            with lock:
                i = cnt["i"]
                cnt["i"] += 1
            ok = stream_one(url, model, PROMPTS[i % len(PROMPTS)], max_tokens)[0]
            with lock:
                cnt["ok" if ok else "err"] += 1

    th = [threading.Thread(target=worker) for _ in range(conc)]
    for t in th:
        t.start()
    for t in th:
        t.join()
    return cnt["ok"], cnt["err"]


def start_server(args, extra):
    cmd = [args.exe, "serve", "--port", "0"] + (["--model", args.model] if args.model else [])
    cmd += extra
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    t0 = time.time()
    line = p.stdout.readline()
    m = re.search(r"serving (\S+) on (http://\S+)", line)
    if not m:
        p.kill()
        sys.exit(f"serve did not start: {line!r} {p.stderr.read()[-2000:]}")
    threading.Thread(target=lambda: p.stderr.read(), daemon=True).start()  # drain
    url = m.group(2)
    u = urllib.parse.urlparse(url)
    while time.time() - t0 < 600:  # /health: 200 once the group is ready
        try:
            c = http.client.HTTPConnection(u.hostname, u.port, timeout=5)
            c.request("GET", "/health")
            if c.getresponse().status == 200:
                break
        except OSError:
            pass
        time.sleep(0.2)
    print(f"serve: {m.group(1)} on {url}, ready in {time.time() - t0:.1f} s", flush=True)
    return p, url


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--exe", default="build/coordinator/moecluster")
    ap.add_argument("--model", help="model folder (default: the demo model)")
    ap.add_argument("--url", help="a running server instead of starting one")
    ap.add_argument("--pid", type=int, help="with --url: the serve process, for memory")
    ap.add_argument("--levels", default="1,4,16,64")
    ap.add_argument("--requests", type=int, default=64, help="requests per level (>= 2 x level)")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--sampling", choices=sorted(SAMPLINGS), default="greedy",
                    help="greedy (default), top_p (temperature 1, top_p 0.9: drawn by the "
                    "workers from their rows) or top_k (temperature 1, top_k 40: from "
                    "candidates)")
    ap.add_argument("--duration", type=float, default=0, help="soak seconds after the levels")
    ap.add_argument("--soak-concurrency", type=int, default=16)
    ap.add_argument("--json", help="write the results as JSON here")
    args, extra = ap.parse_known_args()
    extra = [e for e in extra if e != "--"]
    levels = [int(x) for x in args.levels.split(",") if x]
    SAMPLING.clear()
    SAMPLING.update(SAMPLINGS[args.sampling])

    proc = None
    if args.url:
        url, pid = args.url, args.pid
    else:
        proc, url = start_server(args, extra)
        pid = proc.pid
    mem = MemSampler(pid) if pid else None
    if mem:
        mem.start()
    try:
        u = urllib.parse.urlparse(url)
        c = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
        c.request("GET", "/v1/models")
        model = json.loads(c.getresponse().read())["data"][0]["id"]
        stream_one(url, model, PROMPTS[0], args.max_tokens)  # warm-up
        results = []
        print(f"\nmax_tokens {args.max_tokens}, {args.sampling} {SAMPLING}, streamed; latencies "
              "in ms (p50 / p90 / p99)")
        print("| concurrency | requests | errors | req/s | output tok/s | TTFT p50 | TTFT p90 | "
              "TTFT p99 | ITL p50 | ITL p90 | ITL p99 |")
        print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for conc in levels:
            r = run_level(url, model, conc, max(args.requests, 2 * conc), args.max_tokens)
            results.append(r)
            print(f"| {conc} | {r['requests']} | {r['errors']} | {r['req_per_s']:.2f} | "
                  f"{r['out_tok_per_s']:.1f} | " +
                  " | ".join(f"{x:.1f}" for x in r["ttft_ms"] + r["itl_ms"]) + " |", flush=True)
            for e in r["first_errors"]:
                print(f"   error: {e}")
        soak_res = None
        if args.duration > 0:
            t0 = time.time()
            ok, err = soak(url, model, args.soak_concurrency, args.duration, args.max_tokens)
            soak_res = {"seconds": time.time() - t0, "concurrency": args.soak_concurrency,
                        "requests": ok, "errors": err}
            print(f"\nsoak: {ok} requests ({err} errors) in {soak_res['seconds']:.0f} s at "
                  f"concurrency {args.soak_concurrency}")
        memory = None
        if mem:
            mem.stop.set()
            mem.join()
            s = mem.samples
            if s:
                memory = {"samples": len(s), "first_mib": s[0][1], "last_mib": s[-1][1],
                          "max_mib": max(x[1] for x in s), "processes": s[-1][2]}
                print(f"RSS of serve + workers ({memory['processes']} processes, {len(s)} samples "
                      f"over {s[-1][0]:.0f} s): first {memory['first_mib']:.1f} MiB, last "
                      f"{memory['last_mib']:.1f} MiB, max {memory['max_mib']:.1f} MiB")
                if soak_res:  # the soak alone: from its first sample on
                    n0 = next((i for i, x in enumerate(s) if x[0] >= s[-1][0] - args.duration),
                              0)
                    ss = s[n0:]
                    memory["soak_first_mib"], memory["soak_last_mib"] = ss[0][1], ss[-1][1]
                    print(f"RSS during the soak: first {ss[0][1]:.1f} MiB, last {ss[-1][1]:.1f} "
                          f"MiB, max {max(x[1] for x in ss):.1f} MiB")
                    step = max(1, len(ss) // 10)
                    print("   RSS over the soak (s: MiB): " +
                          ", ".join(f"{x[0] - ss[0][0]:.0f}: {x[1]:.1f}" for x in ss[::step]))
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"levels": results, "soak": soak_res, "memory": memory,
                           "max_tokens": args.max_tokens}, f, indent=1)
    finally:
        if proc:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
