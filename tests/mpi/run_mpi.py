#!/usr/bin/env python3
"""Drives `moecluster` under mpirun for the MPI tests (tests/mpi/CMakeLists.txt).

usage: run_mpi.py --mpirun MPIRUN --moecluster EXE --compare COMPARE_LOGITS
                  --fixtures DIR --work DIR  COMMAND ...

commands:
  exec N PROGRAM [ARG...]  mpirun -np N PROGRAM ARG... must exit 0
  score MODEL N [OPT...]   `score` on N ranks with OPT (--decode = --decode-from T/2),
                           logits within 1e-4 / 99% argmax of the fixture's reference
                           (5e-3 with --kv-cache-dtype bf16: the cache's rounding)
  ragged [N OPT...]        a ragged batch (a lengths tensor) on 2 ranks --ep 1 (dp 2)
                           with --max-batch-tokens 5 (or on N ranks with OPT, adding
                           --decode-from 10) equals the single process's logits within
                           1e-6 (per position); past each length exactly 0
  refuse                   impossible layouts end at once with a message naming why
  generate                 greedy ids under several layouts equal the single process's
  stats                    --stats prints a row per layer and rank; dispatched and
                           computed token-expert pairs balance
  fault MODE               one rank exits / crashes / hangs mid-run: the job ends
                           non-zero within a bound, naming the rank and host
  shards MODEL CLUSTER N   `moecluster shard` for a cluster config, then `score` from
                           the shard set on N ranks matches the reference
  plane                    MC_DATA_PLANE: a bad value, nccl without CUDA and ranks given
                           different values end every rank at once with a message
                           naming why; each good value gives the single process's ids
  timeout                  a bad MC_COMM_TIMEOUT ends every rank at once with a message
                           naming it; good values run
  launcher PROGRAM         after kill -9 of mpirun its ranks exit within a bound: one hung
                           and one in a collective (no MC_COMM_TIMEOUT); ranks of
                           `PROGRAM spin` with one SIGSTOPped; and a rank whose parent
                           (a relay between mpirun and it) is killed says so and exits
  stop PROGRAM             one rank of `PROGRAM spin` (test_comm_mpi) is SIGSTOPped:
                           the job ends non-zero and the waiting ranks name it
  lonely PROGRAM           `PROGRAM lonely OP` (test_comm_mpi): rank 1 never joins
                           bcast_id / bcast / iall_reduce; the watchdog ends the job
                           and the waiting ranks name rank 1 and the MPI call
"""
import argparse
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import time
import uuid

failures = 0
a_work = "."


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
    rc, out, err, dt = run(mpi_prefix(a, n) + [prog] + rest[2:], env=mpi_env())
    sys.stdout.write(out)
    check(rc == 0, f"{os.path.basename(prog)} on {n} ranks exits 0 ({dt:.1f} s)", err)


def cmd_score(a, rest):
    model, n, opts = rest[0], int(rest[1]), rest[2:]
    tag = "_".join([model, str(n)] + [o.strip("-") for o in opts])
    # twins of a case (.a2a, .cpu_device, .direct) run concurrently under ctest -j: own files
    if os.environ.get("MC_EP_SHM") == "0":
        tag += "_a2a"
    if os.environ.get("MC_CPU_AS_DEVICE") == "1":
        tag += "_dev"
    if os.environ.get("MC_DATA_PLANE"):
        tag += "_" + os.environ["MC_DATA_PLANE"]
    out = os.path.join(a.work, tag + ".safetensors")
    if os.path.exists(out):
        os.remove(out)
    cmd, (rc, so, se, dt) = score(a, model, n, opts, out)
    check(rc == 0, f"{' '.join(cmd[3:])}: exit 0 ({dt:.1f} s)", se)
    if rc != 0:
        return
    golden = os.path.join(model_dir(a, model), "golden.safetensors")
    # a bf16 KV cache: its rounding (2^-9) moves the logits by ~2e-3 (tests/golden)
    tol = "5e-3" if "--kv-cache-dtype" in opts and "bf16" in opts else "1e-4"
    p = subprocess.run([a.compare, out, golden, tol, "0.99"], capture_output=True, text=True)
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


def st_tensors(path):
    blob = open(path, "rb").read()
    (n,) = struct.unpack("<Q", blob[:8])
    head, out = json.loads(blob[8:8 + n]), {}
    for name, info in head.items():
        if name != "__metadata__":
            b, e = info["data_offsets"]
            fmt = {"F32": "f", "I64": "q"}[info["dtype"]]
            k = (e - b) // (4 if fmt == "f" else 8)
            out[name] = (info["shape"], struct.unpack(f"<{k}{fmt}", blob[8 + n + b:8 + n + e]))
    return out


def cmd_ragged(a, rest):
    n, layout = (int(rest[0]), rest[1:]) if rest else (2, ["--ep", "1"])
    model = "qwen3-moe-tiny"
    d = model_dir(a, model)
    (B, T), ids = st_tensors(os.path.join(d, "golden.safetensors"))["input_ids"]
    lens = [[T, 1, T // 2 + 3][b % 3] for b in range(B)]
    tag = "_".join(o.strip("-") for o in [str(n)] + layout)  # own files: tests run in parallel
    inp = os.path.join(a.work, f"ragged_in_{tag}.safetensors")
    head = {"input_ids": {"dtype": "I64", "shape": [B, T], "data_offsets": [0, 8 * B * T]},
            "lengths": {"dtype": "I64", "shape": [B], "data_offsets": [8 * B * T, 8 * B * T + 8 * B]}}
    h = json.dumps(head).encode()
    with open(inp, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + struct.pack(f"<{B * T}q", *ids) +
                struct.pack(f"<{B}q", *lens))
    opts = ["--max-batch-tokens", "5"] + (["--decode-from", "10"] if rest else [])
    one, two = (os.path.join(a.work, f"ragged_{tag}_{t}.safetensors") for t in ("np1", "mpi"))
    for p in (one, two):
        if os.path.exists(p):
            os.remove(p)
    rc, so, se, dt = run([a.moecluster, "score", "--model", d, "--input", inp, "--output", one] +
                         opts, env=mpi_env())
    check(rc == 0, f"ragged score {lens} in one process ({dt:.1f} s)", se)
    cmd = mpi_prefix(a, n) + [a.moecluster, "score", "--model", d, "--input", inp, "--output",
                              two] + layout + opts
    rc2, so, se, dt = run(cmd, env=mpi_env())
    what = f"{n} ranks {' '.join(layout)} {' '.join(opts)}"
    check(rc2 == 0, f"ragged score {lens} on {what} ({dt:.1f} s)", se)
    if rc or rc2:
        return
    (_, _, V), x = st_tensors(two)["logits"]
    y = st_tensors(one)["logits"][1]
    worst, bad, nonzero = 0.0, [], []
    for b in range(B):
        for t in range(T):
            o = (b * T + t) * V
            if t >= lens[b]:
                if any(v != 0.0 for v in x[o:o + V]):
                    nonzero.append((b, t))
                continue
            num = sum((x[o + v] - y[o + v]) ** 2 for v in range(V))
            den = sum(y[o + v] ** 2 for v in range(V))
            e = (num / (den or 1.0)) ** 0.5
            worst = max(worst, e)
            if e > 1e-6 and len(bad) < 5:
                bad.append(f"[{b},{t}] rel {e:.3g}")
    check(worst <= 1e-6 and not nonzero,
          f"{what} equals one process: max rel err {worst:.3g}",
          "; ".join(bad) + (f"; nonzero past the length at {nonzero[:5]}" if nonzero else ""))


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
    # the expert exchange: through shared memory when the ranks share a host
    # (the default), by all-to-all with MC_EP_SHM=0; the same logits bit for bit
    outs = {}
    for shm in ("1", "0"):
        o = os.path.join(a.work, f"stats_shm{shm}.safetensors")
        _, (rc, so, se, dt) = score(a, model, n, ["--tp", "2"], o,
                                    env={"MC_EP_SHM": shm, "MC_LOG": "info"})
        want = ("expert exchange through shared memory" if shm == "1"
                else "expert exchange by all-to-all (MC_EP_SHM=0)")
        other = ("expert exchange by all-to-all" if shm == "1"
                 else "expert exchange through shared memory")
        # (mpirun forwards each rank's stderr on its own: under load a line
        # may reach us cut, so: said at least once, and the other never)
        check(rc == 0 and want in se and other not in se,
              f"MC_EP_SHM={shm}: the ranks say '{want}' and never '{other}'", se[-2000:])
        outs[shm] = open(o, "rb").read() if rc == 0 else b""
    check(outs["1"] != b"" and outs["1"] == outs["0"],
          "shared-memory and all-to-all exchanges give the same logits bit for bit")


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
        # ... and rank 2 as the one that did not arrive; any other rank it names
        # is itself waiting (for rank 2)
        ranks = named_ranks(se)
        blamed = {r for rs in ranks.values() for r, note in rs.items() if not note}
        check(blamed == {2}, f"hang: the waiting ranks name rank 2 as missing ({ranks})", se)
    elif mode == "crash":
        # mpirun's report names the rank and the node
        named = re.search(r"rank 2 .*(node|host) \S+.*signal", se.replace("\n", " "))
    else:
        named = f"rank 2 (host {host})" in se
    check(bool(named), f"{mode}: the error names the rank and host", se)


def named_ranks(stderr):
    """{waiting rank: {named rank: note}} from the watchdog's timeout lines."""
    found = {}
    for m in re.finditer(r"rank (\d+) \(host [^)]*\): .*?has waited \d+ s (.*)", stderr):
        named = {}
        for part in re.findall(r"rank\(s\) (.*?)(?:, which did not arrive| on this host)",
                               m.group(2)):
            for item in re.findall(r"(\d+)(?: \(([^)]*)\))?", part):
                named[int(item[0])] = item[1]
        found[int(m.group(1))] = named
    return found


def cmd_timeout(a, rest):
    host = socket.gethostname()
    d = model_dir(a, "qwen3-moe-tiny")
    gen_cmd = [a.moecluster, "generate", "--model", d, "--prompt-ids", "3,14,15", "-n", "3"]
    for bad in ["abc", "-1", "1e999", "5s", ""]:  # more forms: unit.test_comm
        rc, so, se, dt = run(mpi_prefix(a, 2) + gen_cmd, env=mpi_env({"MC_COMM_TIMEOUT": bad}),
                             timeout=60)
        msg = f"MC_COMM_TIMEOUT='{bad}' is not a timeout"
        every = all(f"rank {r} (host {host}): {msg}" in se for r in range(2))
        check(rc not in (0, -999) and every and dt < 30,
              f"MC_COMM_TIMEOUT={bad!r} refused by both ranks (exit {rc}, {dt:.1f} s)", se)
    rc, so, se, dt = run(gen_cmd, env=mpi_env({"MC_COMM_TIMEOUT": "abc"}), timeout=60)
    check(rc == 1 and "MC_COMM_TIMEOUT='abc' is not a timeout" in se,
          f"single process: MC_COMM_TIMEOUT='abc' refused (exit {rc})", se)
    rc, ref, se, dt = run(gen_cmd, env=mpi_env(), timeout=60)
    for good in ["0", "2.5"]:
        rc, ids, se, dt = run(mpi_prefix(a, 2) + gen_cmd,
                              env=mpi_env({"MC_COMM_TIMEOUT": good}), timeout=60)
        check(rc == 0 and ids.strip() == ref.strip() and ids.strip(),
              f"MC_COMM_TIMEOUT={good}: generate on 2 ranks gives the single process's ids", se)


def marked_procs(marker):
    """pid -> (state, world rank) of live processes whose environment holds marker."""
    found = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            env = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
            stat = open(f"/proc/{pid}/stat").read()
        except OSError:
            continue
        if f"MC_TEST_MARKER={marker}".encode() not in env:
            continue
        state = stat[stat.rindex(")") + 2]
        ranks = [e.split(b"=", 1)[1] for e in env if e.startswith(b"OMPI_COMM_WORLD_RANK=")]
        if state not in "ZX" and ranks:
            found[int(pid)] = (state, int(ranks[0]))
    return found


def kill_marked(marker):
    for pid in marked_procs(marker):
        for sig in (signal.SIGCONT, signal.SIGKILL):
            try:
                os.kill(pid, sig)
            except OSError:
                pass


def start_marked(cmd, env, tag):
    """Starts cmd with a unique MC_TEST_MARKER; output goes to files in the work folder."""
    marker = uuid.uuid4().hex
    out = open(os.path.join(a_work, tag + ".out"), "w+")
    err = open(os.path.join(a_work, tag + ".err"), "w+")
    p = subprocess.Popen(cmd, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                         env=mpi_env(dict(env, MC_TEST_MARKER=marker)))
    return p, marker, out, err


def wait_for(cond, bound):
    t = time.monotonic()
    while time.monotonic() - t < bound:
        if cond():
            return True
        time.sleep(0.1)
    return cond()


def relay(argv):
    """mpirun runs this between itself and a rank: the rank's stderr goes to
    argv[0] with %d replaced by the rank; exits with the rank's status."""
    path = argv[0] % int(os.environ.get("OMPI_COMM_WORLD_RANK", "0"))
    with open(path, "w") as err:
        return subprocess.run(argv[1:], stderr=err, stdin=subprocess.DEVNULL).returncode


def cmd_launcher(a, rest):
    launcher_killed(a)
    launcher_killed_stopped(a, rest[0])
    launcher_relay_killed(a, rest[0])


def launcher_killed_stopped(a, prog):
    """A stopped rank cannot run its watchdog; once mpirun is gone its process group
    is orphaned and the kernel hangs it up (SIGHUP, then SIGCONT)."""
    p, marker, out, err = start_marked(mpi_prefix(a, 2) + [prog, "spin"],
                                       {"MC_COMM_TIMEOUT": "0"}, "launcher_stop")
    try:
        lines = lambda: re.findall(r"rank (\d+) spinning \(pid (\d+)\)", open(out.name).read())
        up = wait_for(lambda: len(lines()) == 2 or p.poll() is not None, 60)
        pids = {int(r): int(pid) for r, pid in lines()}
        check(up and len(pids) == 2 and p.poll() is None, "2 ranks spinning",
              open(err.name).read())
        if len(pids) != 2:
            return
        os.kill(pids[1], signal.SIGSTOP)
        time.sleep(0.5)
        t = time.monotonic()
        p.kill()
        p.wait()
        gone = wait_for(lambda: not marked_procs(marker), 10)
        dt = time.monotonic() - t
        check(gone and dt < 5, f"rank 1 stopped, kill -9 of mpirun: every rank exits ({dt:.1f} s, "
              f"bound 5 s; left: {marked_procs(marker)})")
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        kill_marked(marker)


def launcher_relay_killed(a, prog):
    """The watchdog's own check: the parent of a rank dies, the rank says so and exits."""
    errs = os.path.join(a.work, "relay_rank%d.err")
    cmd = mpi_prefix(a, 2) + [sys.executable, os.path.abspath(__file__), "--relay", errs,
                              prog, "spin"]
    p, marker, out, err = start_marked(cmd, {"MC_COMM_TIMEOUT": "0"}, "launcher_relay")
    try:
        lines = lambda: re.findall(r"rank (\d+) spinning \(pid (\d+)\)", open(out.name).read())
        up = wait_for(lambda: len(lines()) == 2 or p.poll() is not None, 60)
        pids = {int(r): int(pid) for r, pid in lines()}
        check(up and len(pids) == 2 and p.poll() is None, "2 ranks spinning under relays",
              open(err.name).read())
        if len(pids) != 2:
            return
        relay_pid = int(open(f"/proc/{pids[1]}/stat").read().rsplit(")", 1)[1].split()[1])
        t = time.monotonic()
        os.kill(relay_pid, signal.SIGKILL)
        gone = wait_for(lambda: pids[1] not in marked_procs(marker), 10)
        dt = time.monotonic() - t
        msg = open(errs % 1).read()
        want = f"rank 1 (host {socket.gethostname()}): the launcher (pid {relay_pid}) is gone"
        check(gone and dt < 5 and want in msg,
              f"rank 1's parent killed: it says so and exits ({dt:.1f} s, bound 5 s)", msg)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        kill_marked(marker)


def launcher_killed(a):
    d = model_dir(a, "qwen3-moe-tiny")
    cmd = mpi_prefix(a, 2) + [a.moecluster, "generate", "--model", d, "--prompt-ids", "3,14,15",
                              "-n", "3"]
    # rank 1 hangs at layer 1, rank 0 waits for it in a collective, forever (no timeout)
    p, marker, out, err = start_marked(cmd, {"MC_FAULT_INJECT": "1:1:hang",
                                             "MC_COMM_TIMEOUT": "0"}, "launcher")
    try:
        up = wait_for(lambda: len(marked_procs(marker)) == 2 and
                      "MC_FAULT_INJECT: hang" in open(err.name).read(), 60)
        time.sleep(1.0)
        ranks = marked_procs(marker)
        check(up and len(ranks) == 2 and p.poll() is None,
              f"2 ranks running, one hung, before mpirun is killed ({len(ranks)} found)",
              open(err.name).read())
        t = time.monotonic()
        p.kill()
        p.wait()
        gone = wait_for(lambda: not marked_procs(marker), 10)
        dt = time.monotonic() - t
        left = marked_procs(marker)
        check(gone and dt < 5, f"after kill -9 of mpirun every rank exits ({dt:.1f} s, bound 5 s; "
              f"left: {sorted(left)})")
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        kill_marked(marker)


def cmd_stop(a, rest):
    host = socket.gethostname()
    prog = rest[0]
    n = 3
    p, marker, out, err = start_marked(mpi_prefix(a, n) + [prog, "spin"],
                                       {"MC_COMM_TIMEOUT": "2"}, "stop")
    try:
        lines = lambda: re.findall(r"rank (\d+) spinning \(pid (\d+)\)", open(out.name).read())
        up = wait_for(lambda: len(lines()) == n or p.poll() is not None, 60)
        pids = {int(r): int(pid) for r, pid in lines()}
        check(up and len(pids) == n and p.poll() is None, f"{n} ranks spinning", 
              open(err.name).read())
        if len(pids) != n:
            return
        t = time.monotonic()
        os.kill(pids[1], signal.SIGSTOP)
        try:
            rc = p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            rc = -999
        dt = time.monotonic() - t
        se = open(err.name).read()
        check(rc not in (0, -999) and dt < 15,
              f"rank 1 stopped: the job ends non-zero (exit {rc}) in {dt:.1f} s (bound 15 s)", se)
        named = named_ranks(se)
        stopped = {w: r for w, rs in named.items() for r, note in rs.items() if note == "stopped"}
        check(any(r == 1 for r in stopped.values()) and all(r == 1 for r in stopped.values()),
              f"a waiting rank names rank 1 as stopped, and no other rank ({named})", se)
        check(all(f"rank {w} (host {host})" in se for w in named) and 1 not in named,
              "the messages come from the waiting ranks, with their host", se)
        leftovers = [f for f in os.listdir("/dev/shm")
                     if any(f.startswith(f"moecluster-{pid}-") for pid in pids.values())]
        check(not leftovers, f"no progress board left in /dev/shm ({leftovers})")
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        kill_marked(marker)


def cmd_lonely(a, rest):
    host = socket.gethostname()
    prog = rest[0]
    for op, call in [("bcast_id", "MPI_Allgatherv"), ("bcast", "MPI_Bcast"),
                     ("iall_reduce", "MPI_Alltoallv")]:
        rc, so, se, dt = run(mpi_prefix(a, 3) + [prog, "lonely", op],
                             env=mpi_env({"MC_COMM_TIMEOUT": "1"}), timeout=60)
        check(rc not in (0, -999) and dt < 30,
              f"{op} without rank 1: the job ends non-zero (exit {rc}) in {dt:.1f} s", se)
        named = named_ranks(se)
        blamed = {r for rs in named.values() for r, note in rs.items() if not note}
        check(blamed == {1} and 1 not in named, f"{op}: the waiting ranks name rank 1 ({named})",
              se)
        check(re.search(r"rank [02] \(host " + re.escape(host) + r"\): " + call, se) is not None,
              f"{op}: the message names the rank, its host and {call}", se)


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


def cmd_plane(a, rest):
    host = socket.gethostname()
    d = model_dir(a, "qwen3-moe-tiny")
    gen_cmd = [a.moecluster, "generate", "--model", d, "--prompt-ids", "3,14,15", "-n", "3",
               "--tp", "2"]
    dev = {"MC_CPU_AS_DEVICE": "1"}
    bad = [({"MC_DATA_PLANE": "bogus"}, "MC_DATA_PLANE: 'bogus' is not auto, staged, direct "
            "or nccl"),
           ({"MC_DATA_PLANE": "nccl"}, "MC_DATA_PLANE=nccl: the compute backend is not CUDA"),
           (dict(dev, MC_DATA_PLANE="nccl"), "MC_DATA_PLANE=nccl: the compute backend is not "
            "CUDA")]
    for env, msg in bad:
        rc, so, se, dt = run(mpi_prefix(a, 2) + gen_cmd, env=mpi_env(env), timeout=60)
        check(rc not in (0, -999) and f"rank 0 (host {host}): {msg}" in se and dt < 30,
              f"{env} refused on 2 ranks (exit {rc}, {dt:.1f} s)", se)
    # ranks given different values (an MPMD launch): refused before any collective moves data
    pre = mpi_prefix(a, 1)
    mpmd = (pre + ["-x", "MC_DATA_PLANE=direct"] + gen_cmd + [":"] + pre[1:3] +
            ["-x", "MC_DATA_PLANE=staged"] + gen_cmd)
    rc, so, se, dt = run(mpmd, env=mpi_env(dev), timeout=60)
    check(rc not in (0, -999) and "MC_DATA_PLANE: the ranks were given different values" in se
          and dt < 30, f"ranks given direct and staged refused (exit {rc}, {dt:.1f} s)", se)
    rc, ref, se, dt = run(gen_cmd[:-2], env=mpi_env(), timeout=60)
    check(rc == 0 and ref.strip() != "", "single process generates", se)
    for env in [{}, {"MC_DATA_PLANE": "direct"}, dict(dev, MC_DATA_PLANE="auto"),
                dict(dev, MC_DATA_PLANE="staged"), dict(dev, MC_DATA_PLANE="direct")]:
        e = dict(env, MC_LOG="info")
        rc, ids, se, dt = run(mpi_prefix(a, 2) + gen_cmd, env=mpi_env(e), timeout=60)
        want = "direct" if env.get("MC_DATA_PLANE") == "direct" and dev.items() <= env.items() \
            else "staged" if dev.items() <= env.items() else "host"
        check(rc == 0 and ids.strip() == ref.strip() and f"data plane: {want} (2 ranks)" in se,
              f"{env}: the {want} data plane gives the single process's ids", se + ids)


def main():
    if len(sys.argv) > 2 and sys.argv[1] == "--relay":
        return relay(sys.argv[2:])
    ap = argparse.ArgumentParser()
    for f in ("mpirun", "moecluster", "compare", "fixtures", "work"):
        ap.add_argument("--" + f, required=True)
    ap.add_argument("command")
    ap.add_argument("rest", nargs=argparse.REMAINDER)
    a = ap.parse_args()
    os.makedirs(a.work, exist_ok=True)
    global a_work
    a_work = a.work
    {"exec": cmd_exec, "score": cmd_score, "refuse": cmd_refuse, "ragged": cmd_ragged, "generate": cmd_generate,
     "stats": cmd_stats, "fault": cmd_fault, "shards": cmd_shards, "timeout": cmd_timeout,
     "plane": cmd_plane,
     "launcher": cmd_launcher, "stop": cmd_stop, "lonely": cmd_lonely}[a.command](a, a.rest)
    print(f"{failures} failure(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
