#!/usr/bin/env python3
"""Drives `moecluster worker` for the control-plane tests (tests/mpi/CMakeLists.txt).

usage: run_worker.py --mpirun MPIRUN --moecluster EXE --test TEST_WORKER
                     --fixtures DIR MODEL N [OPT...]

N = 1 starts the worker directly (one rank), N > 1 under mpirun -np N with
OPT (e.g. --pp 2). Then:
  1. `test_worker run`: every logits row of several multi-sequence schedules
     against the reference forward, refusals that leave the worker serving,
     Shutdown; every rank must then exit 0 within a bound;
  2. a fresh worker, `test_worker kill`: rank 0 is SIGKILLed mid-session; the
     client's next step fails within its timeout naming the address, and the
     whole group ends within a bound;
  3. with N > 1: a layout with dp > 1 (--ep N alone) is refused at start with
     a message naming dp.
"""
import argparse
import os
import re
import select
import signal
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
    sys.stdout.flush()


def mpi_prefix(mpirun, n):
    """mpirun -np n with the flags a simulated cluster on one machine needs (as run_mpi.py)."""
    cmd = [mpirun, "-np", str(n)]
    out = subprocess.run([mpirun, "--version"], capture_output=True, text=True).stdout
    if "Open MPI" in out or "OpenRTE" in out:
        cmd += ["--oversubscribe", "--bind-to", "none"]
        if os.geteuid() == 0:
            cmd += ["--allow-run-as-root"]
    return cmd


def env():
    e = dict(os.environ)
    e.setdefault("OMPI_MCA_btl_vader_single_copy_mechanism", "none")
    e.setdefault("MC_LOG", "warn")
    e.setdefault("ASAN_OPTIONS", "detect_leaks=0")
    return e


def start(a, opts):
    cmd = [a.moecluster, "worker", "--model", os.path.join(a.fixtures, "models", a.model),
           "--listen", "tcp://127.0.0.1:*", "--kv-blocks", "96", "--kv-block-size", "8",
           "--max-batch-tokens", "64"] + opts
    if a.n > 1:
        cmd = mpi_prefix(a.mpirun, a.n) + cmd
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env(),
                         start_new_session=True)
    return p


def listening(p, limit=120):
    """The address the worker prints once every rank has loaded, or None."""
    end = time.time() + limit
    buf = b""
    while time.time() < end:
        r, _, _ = select.select([p.stdout], [], [], 0.5)
        if r:
            chunk = os.read(p.stdout.fileno(), 4096)
            if not chunk:
                return None
            buf += chunk
            m = re.search(rb"listening on (\S+)\n", buf)
            if m:
                return m.group(1).decode()
        elif p.poll() is not None:
            return None
    return None


def finish(p, limit):
    """(exit status or None when still running after limit s, stderr)."""
    try:
        _, err = p.communicate(timeout=limit)
        return p.returncode, err.decode(errors="replace")
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        _, err = p.communicate()
        return None, err.decode(errors="replace")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mpirun", required=True)
    ap.add_argument("--moecluster", required=True)
    ap.add_argument("--test", required=True)
    ap.add_argument("--fixtures", required=True)
    ap.add_argument("model")
    ap.add_argument("n", type=int)
    ap.add_argument("opts", nargs=argparse.REMAINDER)
    a = ap.parse_args()
    what = f"{a.model} on {a.n} rank(s) {' '.join(a.opts)}".strip()

    # 1. logits, refusals, shutdown
    p = start(a, a.opts)
    addr = listening(p)
    check(addr is not None and addr.startswith("tcp://127.0.0.1:"),
          f"{what}: the worker listens on loopback ({addr})")
    if addr:
        t = subprocess.run([a.test, "run", addr, a.fixtures, a.model], capture_output=True,
                           text=True, timeout=600)
        print(t.stdout.strip())
        check(t.returncode == 0, f"{what}: test_worker run passes", t.stderr)
        t0 = time.time()
        rc, err = finish(p, 30)
        check(rc == 0, f"{what}: after Shutdown every rank exits 0 (rc {rc}, "
              f"{time.time() - t0:.1f} s)", err)
    else:
        rc, err = finish(p, 5)
        check(False, f"{what}: worker start", err)

    # 2. a killed worker
    p = start(a, a.opts)
    addr = listening(p)
    if addr:
        t = subprocess.run([a.test, "kill", addr], capture_output=True, text=True, timeout=120)
        print(t.stdout.strip())
        check(t.returncode == 0, f"{what}: a killed worker fails the client's step in time",
              t.stderr)
        t0 = time.time()
        rc, err = finish(p, 60)
        check(rc is not None and rc != 0,
              f"{what}: the group ends after its rank 0 is killed (rc {rc}, "
              f"{time.time() - t0:.1f} s)", err)
    else:
        finish(p, 5)
        check(False, f"{what}: worker start for the kill test")

    # 3. dp > 1 is refused at start
    if a.n > 1:
        p = start(a, ["--ep", str(a.n)])
        rc, err = finish(p, 120)
        check(rc not in (0, None) and "dp = 1" in err and "data-parallel" in err,
              f"{what}: --ep {a.n} alone (dp {a.n}) is refused at start (rc {rc})", err)

    print(f"{failures} failures")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
