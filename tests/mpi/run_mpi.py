#!/usr/bin/env python3
"""Drives `moecluster` under mpirun for the MPI tests (tests/mpi/CMakeLists.txt).

usage: run_mpi.py --mpirun MPIRUN --moecluster EXE --compare COMPARE_LOGITS
                  --fixtures DIR --work DIR  COMMAND ...

commands:
  exec N PROGRAM           mpirun -np N PROGRAM must exit 0
  score MODEL N [OPT...]   `score` on N ranks with OPT (--decode = --decode-from T/2),
                           logits within 1e-4 / 99% argmax of the fixture's reference
  refuse                   impossible layouts end at once with a message naming why
  generate                 greedy ids under several layouts equal the single process's
  stats                    --stats prints a row per layer and rank; dispatched and
                           computed token-expert pairs balance
  fault MODE               one rank exits / crashes / hangs mid-run: the job ends
                           non-zero within a bound, naming the rank and host
  shards MODEL CLUSTER N   `moecluster shard` for a cluster config, then `score` from
                           the shard set on N ranks matches the reference
"""
import argparse
import json
import os
import re
import socket
import struct
import subprocess
import sys
import time

failures = 0


def check(cond, what, detail=""):
    global failures
    print(("ok: " if cond else "FAIL: ") + what)
    if not cond:
        failures += 1
        if detail:
            print("   " + detail.strip().replace("\n", "\n   ")[-3000:])


def mpi_prefix(a, n):
    """mpirun -np n with the flags a simulated cluster on one machine needs."""
    cmd = [a.mpirun, "-np", str(n)]
    out = subprocess.run([a.mpirun, "--version"], capture_output=True, text=True).stdout
    if "Open MPI" in out or "OpenRTE" in out:
        cmd += ["--oversubscribe", "--bind-to", "none"]
        if os.geteuid() == 0:
            cmd += ["--allow-run-as-root"]
    return cmd


def mpi_env(extra=None):
    env = dict(os.environ)
    # containers often forbid the cross-memory-attach single copy; fall back to copies
    env.setdefault("OMPI_MCA_btl_vader_single_copy_mechanism", "none")
    env.setdefault("MC_LOG", "warn")
    # under -DMC_SANITIZE=ON: MPI's own allocations at exit are not our leaks
    env.setdefault("ASAN_OPTIONS", "detect_leaks=0")
    env.update(extra or {})
    return env


def run(cmd, env=None, timeout=240):
    t = time.monotonic()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
        rc, out, err = p.returncode, p.stdout, p.stderr
    except subprocess.TimeoutExpired as e:
        rc, out, err = -999, e.stdout or "", (e.stderr or "") + "\n(timed out)"
        out = out.decode() if isinstance(out, bytes) else out
        err = err.decode() if isinstance(err, bytes) else err
    return rc, out, err, time.monotonic() - t


def seq_len(path):
    blob = open(path, "rb").read()
    (n,) = struct.unpack("<Q", blob[:8])
    return json.loads(blob[8:8 + n])["input_ids"]["shape"][1]


def model_dir(a, name):
    return os.path.join(a.fixtures, "models", name)


def score(a, model, n, opts, out, env=None):
    d = model_dir(a, model)
    golden = os.path.join(d, "golden.safetensors")
    opts = [o for o in opts]
    if "--decode" in opts:
        i = opts.index("--decode")
        opts[i:i + 1] = ["--decode-from", str(seq_len(golden) // 2)]
    cmd = mpi_prefix(a, n) + [a.moecluster, "score", "--model", d, "--input", golden,
                              "--output", out] + opts
    return cmd, run(cmd, env=mpi_env(env))


def cmd_exec(a, rest):
    n, prog = int(rest[0]), rest[1]
    rc, out, err, dt = run(mpi_prefix(a, n) + [prog], env=mpi_env())
    sys.stdout.write(out)
    check(rc == 0, f"{os.path.basename(prog)} on {n} ranks exits 0 ({dt:.1f} s)", err)


def cmd_score(a, rest):
    model, n, opts = rest[0], int(rest[1]), rest[2:]
    tag = "_".join([model, str(n)] + [o.strip("-") for o in opts])
    out = os.path.join(a.work, tag + ".safetensors")
    if os.path.exists(out):
        os.remove(out)
    cmd, (rc, so, se, dt) = score(a, model, n, opts, out)
    check(rc == 0, f"{' '.join(cmd[3:])}: exit 0 ({dt:.1f} s)", se)
    if rc != 0:
        return
    golden = os.path.join(model_dir(a, model), "golden.safetensors")
    p = subprocess.run([a.compare, out, golden, "1e-4", "0.99"], capture_output=True, text=True)
    sys.stdout.write(p.stdout)
    rels = [float(x) for x in re.findall(r"rel err ([0-9.e+-]+)", p.stdout)]
    check(p.returncode == 0, f"{model} on {n} ranks {' '.join(opts)}: logits match the reference "
          f"(max rel err {max(rels) if rels else float('nan'):.3g})", p.stderr)


def cmd_refuse(a, rest):
    host = socket.gethostname()
    q = "qwen3-moe-tiny"
    cases = [
        (q, 3, ["--tp", "3"], "the 8 attention (query) heads of qwen3_moe"),
        (q, 4, ["--pp", "4"], "more pipeline stages than the 3 layers"),
        (q, 4, ["--ep", "3"], "--ep 3 does not divide the 4 ranks"),
        (q, 4, ["--tp", "3"], "4 ranks cannot be split"),
        ("deepseek-v4-tiny", 2, ["--ep", "2"], "DeepSeek-V4 runs only with --tp 1 --ep 1 --pp 1"),
        ("deepseek-v4-tiny", 4, ["--pp", "2"], "DeepSeek-V4 runs only with --tp 1 --ep 1 --pp 1"),
    ]
    for model, n, opts, needle in cases:
        out = os.path.join(a.work, "refused.safetensors")
        cmd, (rc, so, se, dt) = score(a, model, n, opts, out)
        named = f"rank 0 (host {host})" in se
        check(rc != 0 and needle in se and named and dt < 60,
              f"{model} {' '.join(opts)} on {n} ranks refused with '{needle}' ({dt:.1f} s)", se)
    # without mpirun: a single process asked for two ranks' worth
    d = model_dir(a, q)
    rc, so, se, dt = run([a.moecluster, "score", "--model", d, "--input",
                          os.path.join(d, "golden.safetensors"), "--output",
                          os.path.join(a.work, "r.safetensors"), "--tp", "2"])
    check(rc == 1 and "start the command with mpirun" in se,
          "single process with --tp 2 says to use mpirun", se)


def gen(a, model, n, opts):
    d = model_dir(a, model)
    base = [a.moecluster, "generate", "--model", d, "--prompt-ids", "3,14,15,92,65", "-n", "10",
            "--ignore-eos"]
    cmd = base + opts if n == 0 else mpi_prefix(a, n) + base + opts
    rc, so, se, dt = run(cmd, env=mpi_env())
    return rc, so.strip(), se


def cmd_generate(a, rest):
    for model in ["qwen3-moe-tiny", "deepseek-v3-tiny", "llama4-tiny"]:
        rc, ref, se = gen(a, model, 0, [])
        check(rc == 0 and len(ref.split(",")) == 10, f"{model}: single-process generate", se)
        for n, opts in [(2, []), (4, ["--tp", "2"]), (4, ["--pp", "2", "--tp", "2"]),
                        (3, ["--pp", "3", "--ep", "1"])]:
            rc, ids, se = gen(a, model, n, opts)
            check(rc == 0 and ids == ref,
                  f"{model}: generate on {n} ranks {' '.join(opts)} gives the same ids ({ids})", se)


def cmd_stats(a, rest):
    model, n, opts = "deepseek-v3-tiny", 4, ["--tp", "2", "--stats"]
    out = os.path.join(a.work, "stats.safetensors")
    cmd, (rc, so, se, dt) = score(a, model, n, opts, out)
    check(rc == 0, f"score {' '.join(opts)} on {n} ranks", se)
    cfg = json.load(open(os.path.join(model_dir(a, model), "config.json")))
    L, k = cfg["num_hidden_layers"], cfg["num_experts_per_tok"]
    dense = cfg.get("first_k_dense_replace", 0)
    golden = os.path.join(model_dir(a, model), "golden.safetensors")
    blob = open(golden, "rb").read()
    (hn,) = struct.unpack("<Q", blob[:8])
    B, T = json.loads(blob[8:8 + hn])["input_ids"]["shape"]
    check("moecluster stats: 4 ranks (tp 2, ep 4, pp 1, dp 2)" in se, "stats header", se)
    rows = {}
    for line in se.splitlines():
        f = line.split()
        if len(f) == 12 and (f[0].isdigit() or f[0] in ("head", "pipe", "total", "all")):
            rows[(f[0], f[1])] = [float(x) for x in f[2:]]
    for l in range(L):
        have = all((str(l), str(r)) in rows for r in range(n))
        check(have, f"layer {l}: one row per rank")
        if not have:
            continue
        disp = sum(rows[(str(l), str(r))][0] for r in range(n))
        comp = sum(rows[(str(l), str(r))][3] for r in range(n))
        want = 0 if l < dense else B * T * k
        check(disp == want and comp == want,
              f"layer {l}: {disp:.0f} pairs dispatched, {comp:.0f} computed, expected {want}")
    check(("all", "-") in rows and 0 <= rows[("all", "-")][9] <= 100, "totals row with comm%")


def cmd_fault(a, rest):
    mode = rest[0]
    host = socket.gethostname()
    out = os.path.join(a.work, f"fault_{mode}.safetensors")
    env = {"MC_FAULT_INJECT": f"2:1:{mode}", "MC_COMM_TIMEOUT": "3"}
    cmd, (rc, so, se, dt) = score(a, "deepseek-v3-tiny", 4, [], out, env=env)
    check(rc != 0 and rc != -999, f"{mode}: the job fails (exit {rc})", se)
    check(dt < 60, f"{mode}: the job ended in {dt:.1f} s (bound 60 s)", se)
    if mode == "hang":
        # the peers' watchdog names the waiting rank, its host and the MPI call
        named = re.search(r"rank [013] \(host " + re.escape(host) + r"\): MPI_\w+ .*waited", se)
    elif mode == "crash":
        # mpirun's report names the rank and the node
        named = re.search(r"rank 2 .*(node|host) \S+.*signal", se.replace("\n", " "))
    else:
        named = f"rank 2 (host {host})" in se
    check(bool(named), f"{mode}: the error names the rank and host", se)


def cmd_shards(a, rest):
    model, cluster, n = rest[0], rest[1], int(rest[2])
    out = os.path.join(a.work, f"shards_{model}_{os.path.basename(cluster)}")
    rc, so, se, dt = run([a.moecluster, "shard", "--model", model_dir(a, model), "--cluster",
                          cluster, "--out", out])
    check(rc == 0, f"shard {model} for {os.path.basename(cluster)} ({dt:.1f} s)", se)
    if rc != 0:
        return
    d = model_dir(a, model)
    golden = os.path.join(d, "golden.safetensors")
    logits = os.path.join(a.work, f"shards_{model}.safetensors")
    cmd = mpi_prefix(a, n) + [a.moecluster, "score", "--model", out, "--input", golden,
                              "--output", logits]
    rc, so, se, dt = run(cmd, env=mpi_env())
    check(rc == 0, f"score from the shard set on {n} ranks ({dt:.1f} s)", se)
    if rc == 0:
        p = subprocess.run([a.compare, logits, golden, "1e-4", "0.99"], capture_output=True,
                           text=True)
        sys.stdout.write(p.stdout)
        check(p.returncode == 0, "logits from the shard set match the reference", p.stderr)
    # the wrong rank count, and options that contradict the plan, are refused
    rc, so, se, dt = run(mpi_prefix(a, n // 2) + cmd[len(mpi_prefix(a, n)):], env=mpi_env())
    check(rc != 0 and f"use mpirun -np {n}" in se, f"shard set on {n // 2} ranks refused", se)
    rc, so, se, dt = run(cmd + ["--pp", "2"], env=mpi_env())
    check(rc != 0 and "was cut for" in se, "--pp that contradicts the shard plan refused", se)


def main():
    ap = argparse.ArgumentParser()
    for f in ("mpirun", "moecluster", "compare", "fixtures", "work"):
        ap.add_argument("--" + f, required=True)
    ap.add_argument("command")
    ap.add_argument("rest", nargs=argparse.REMAINDER)
    a = ap.parse_args()
    os.makedirs(a.work, exist_ok=True)
    {"exec": cmd_exec, "score": cmd_score, "refuse": cmd_refuse, "generate": cmd_generate,
     "stats": cmd_stats, "fault": cmd_fault, "shards": cmd_shards}[a.command](a, a.rest)
    print(f"{failures} failure(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
