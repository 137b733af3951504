#!/usr/bin/env python3
"""Cross-namespace tests: `moecluster cluster-sim` emulated nodes (network
namespaces on a bridge, Open MPI over TCP between them; docs/cluster-sim.md).

usage: run_netns.py --moecluster EXE --compare COMPARE_LOGITS --fixtures DIR --work DIR
                    COMMAND ...

commands:
  score MODEL NODES RPN [OPT...]  `score` with OPT on NODES emulated nodes of RPN ranks
                                  each (--decode = --decode-from T/2); the ranks land
                                  on the nodes the hostfile says, the logits equal the
                                  single-process `score` output within 1e-5 and the
                                  fixture's reference within 1e-4 / 99% argmax; nothing
                                  of the cluster is left afterwards
  sim                             cluster-sim itself: up / down (idempotent), refusals
                                  (names taken, a subnet overlapping a route, not root),
                                  cleanup after a failed run and after SIGINT / SIGTERM,
                                  and a link shaped to 0.2 Gbit/s carrying 0.2 Gbit/s

Exit status 77 (CTest SKIP_RETURN_CODE) with "skipped: cannot create network
namespaces (...)" when this machine cannot (not root, no CAP_NET_ADMIN, no
iproute2, namespaces not allowed in this container).
"""
import argparse
import json
import os
import re
import signal
import struct
import subprocess
import sys
import time

failures = 0
SKIP = 77


def check(cond, what, detail=""):
    global failures
    print(("ok: " if cond else "FAIL: ") + what)
    if not cond:
        failures += 1
        if detail:
            print("   " + detail.strip().replace("\n", "\n   ")[-3000:])


def run(cmd, env=None, timeout=240):
    t = time.monotonic()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
        rc, out, err = p.returncode, p.stdout, p.stderr
    except subprocess.TimeoutExpired as e:
        rc = -999
        out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        err = (e.stderr.decode() if isinstance(e.stderr, bytes) else (e.stderr or "")) + "\n(timed out)"
    return rc, out, err, time.monotonic() - t


def env():
    e = dict(os.environ)
    e.setdefault("MC_LOG", "warn")
    e.setdefault("ASAN_OPTIONS", "detect_leaks=0")
    return e


def sim_name(tag):
    """A cluster name of its own per test process (ctest -j runs several)."""
    return f"{tag}{os.getpid() % 100000:05d}"


def left_over(name):
    """Namespaces and links named NAME-* that still exist."""
    ns = [l.split()[0] for l in subprocess.run(["ip", "netns", "list"], capture_output=True,
                                                text=True).stdout.splitlines() if l.strip()]
    links = os.listdir("/sys/class/net")
    return sorted(x for x in ns + links if x.startswith(name + "-"))


def running(pid):
    """A process that exists and is not a zombie waiting for its parent."""
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def cannot_skip(se):
    print("skipped: cannot create network namespaces (" +
          (se.strip().splitlines() or ["?"])[-1].replace("moecluster cluster-sim: ", "")
          .replace("cannot create network namespaces: ", "") + ")")
    sys.exit(SKIP)


def sim(a, action, name, nodes, rpn=1, extra=(), cmd=(), timeout=240):
    args = [a.moecluster, "cluster-sim", action, "--nodes", str(nodes), "--ranks-per-node",
            str(rpn), "--name", name] + list(extra)
    if cmd:
        args += ["--"] + list(cmd)
    return run(args, env=env(), timeout=timeout)


def probe(a):
    """Skips the test (exit 77) when cluster-sim says namespaces cannot be made."""
    name = sim_name("pr")
    rc, so, se, dt = sim(a, "run", name, 1, cmd=["true"], timeout=60)
    if rc == 3:
        cannot_skip(se)
    check(rc == 0 and not left_over(name), f"cluster-sim run -- true on 1 node ({dt:.1f} s)", se)


def seq_len(path):
    blob = open(path, "rb").read()
    (n,) = struct.unpack("<Q", blob[:8])
    return json.loads(blob[8:8 + n])["input_ids"]["shape"][1]


def compare(a, out, ref, rel, what):
    p = subprocess.run([a.compare, out, ref, rel, "0.99"], capture_output=True, text=True)
    sys.stdout.write(p.stdout)
    rels = [float(x) for x in re.findall(r"rel err ([0-9.e+-]+)", p.stdout)]
    check(p.returncode == 0, f"{what} (max rel err {max(rels) if rels else float('nan'):.3g}, "
          f"bound {rel})", p.stderr)


def cmd_score(a, rest):
    model, nodes, rpn, opts = rest[0], int(rest[1]), int(rest[2]), list(rest[3:])
    probe(a)
    d = os.path.join(a.fixtures, "models", model)
    golden = os.path.join(d, "golden.safetensors")
    if "--decode" in opts:
        i = opts.index("--decode")
        opts[i:i + 1] = ["--decode-from", str(seq_len(golden) // 2)]
    tag = "_".join([model, f"{nodes}x{rpn}"] + [o.strip("-") for o in opts])
    single = os.path.join(a.work, tag + ".single.safetensors")
    out = os.path.join(a.work, tag + ".netns.safetensors")
    for f in (single, out):
        if os.path.exists(f):
            os.remove(f)
    base = [a.moecluster, "score", "--model", d, "--input", golden]
    single_opts = []
    if "--decode-from" in opts:
        i = opts.index("--decode-from")
        single_opts = opts[i:i + 2]
    rc, so, se, dt = run(base + ["--output", single] + single_opts, env=env())
    check(rc == 0, f"single-process score ({dt:.1f} s)", se)
    name = sim_name("ns")
    # where the ranks land: RPN on each node, in order
    rc, so, se, dt = sim(a, "run", name, nodes, rpn,
                         cmd=["sh", "-c", 'echo "$OMPI_COMM_WORLD_RANK $(hostname)"'])
    got = sorted((int(r), h) for r, h in re.findall(r"^(\d+) (\S+)$", so, re.M))
    want = [(r, f"{name}-node{r // rpn + 1}") for r in range(nodes * rpn)]
    check(rc == 0 and got == want, f"{nodes * rpn} ranks on {nodes} nodes as the hostfile says",
          f"{got} vs {want}\n{se}")
    rc, so, se, dt = sim(a, "run", name, nodes, rpn, cmd=base + ["--output", out] + opts)
    check(rc == 0, f"cluster-sim run --nodes {nodes} --ranks-per-node {rpn} -- score "
          f"{' '.join(opts)}: exit 0 ({dt:.1f} s)", se)
    check(not left_over(name), f"nothing of '{name}' left ({left_over(name)})")
    if rc != 0 or not os.path.exists(single):
        return
    what = f"{model} on {nodes} nodes x {rpn} {' '.join(opts)}"
    compare(a, out, single, "1e-5", what + ": logits equal the single process's")
    compare(a, out, golden, "1e-4", what + ": logits match the reference")


def shaped_rate(a, gbps):
    """Bytes/s of one TCP stream from node 2 to node 1 over links shaped to gbps."""
    name = sim_name("sh")
    mb = max(2, int(gbps * 40))  # about 0.3 s of traffic at the shaped rate
    prog = (
        "import os, socket, time\n"
        f"n = {mb} << 20\n"
        "r = int(os.environ['OMPI_COMM_WORLD_RANK'])\n"
        "if r == 0:\n"
        "    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
        "    s.bind(('10.77.0.1', 47011)); s.listen(1); c, _ = s.accept()\n"
        "    got = 0; t = None\n"
        "    while got < n:\n"
        "        b = c.recv(1 << 20)\n"
        "        if not b: break\n"
        "        t = t or time.monotonic(); got += len(b)\n"
        "    print('rate', got / (time.monotonic() - t), got, flush=True)\n"
        "else:\n"
        "    for i in range(100):\n"
        "        try:\n"
        "            c = socket.create_connection(('10.77.0.1', 47011)); break\n"
        "        except OSError: time.sleep(0.05)\n"
        "    c.sendall(b'x' * n); c.close()\n")
    extra = ["--link-gbps", str(gbps)] if gbps else []
    rc, so, se, dt = sim(a, "run", name, 2, extra=extra, cmd=[sys.executable, "-c", prog])
    m = re.search(r"rate ([0-9.e+]+) (\d+)", so)
    return (float(m.group(1)) if m and rc == 0 else None), se


def cmd_sim(a, rest):
    probe(a)
    name = sim_name("cs")
    rc, so, se, dt = sim(a, "up", name, 2, 2)
    check(rc == 0 and len(left_over(name)) == 5, f"up: 2 namespaces, 2 veths and a bridge ({dt:.1f} s)", se)
    # the names are taken: refused, and what exists is left alone
    rc, so, se, dt = sim(a, "up", name, 2)
    check(rc == 1 and "is up" in se and len(left_over(name)) == 5, "a second up is refused", se)
    rc, so, se, dt = sim(a, "down", name, 2)
    check(rc == 0 and not left_over(name), "down removes everything", se)
    rc, so, se, dt = sim(a, "down", name, 2)
    check(rc == 0 and "nothing to do" in se, "down again: nothing to do, exit 0", se)
    # a subnet overlapping a route: refused before anything is made (run inside a
    # throwaway namespace holding a blackhole route, so the host's routes stay as they are)
    rt = name + "-rt"
    if subprocess.run(["ip", "netns", "add", rt]).returncode == 0:
        subprocess.run(["ip", "-n", rt, "route", "add", "blackhole", "10.77.0.0/16"])
        rc, so, se, dt = run(["ip", "netns", "exec", rt, a.moecluster, "cluster-sim", "up",
                              "--nodes", "2", "--name", name, "--subnet", "10.77.3.0/24"])
        subprocess.run(["ip", "netns", "del", rt])
        check(rc == 1 and "overlaps the existing route 'blackhole 10.77.0.0/16'" in se and
              not left_over(name), "a --subnet inside an existing route is refused", se)
    rc, so, se, dt = sim(a, "up", name, 2, extra=["--subnet", "8.8.8.0/24"])
    check(rc == 2 and "not in a private range" in se, "a public --subnet refused", se)
    # an existing interface of the same name is refused and left alone
    rc1 = subprocess.run(["ip", "link", "add", name + "-br0", "type", "bridge"]).returncode
    if rc1 == 0:
        rc, so, se, dt = sim(a, "up", name, 2)
        check(rc == 1 and f"{name}-br0 exists already" in se and left_over(name) == [name + "-br0"],
              "an interface named like the bridge: refused, untouched", se)
        subprocess.run(["ip", "link", "del", name + "-br0"])
    # not root: refused with exit 3 and one line
    rc, so, se, dt = run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                          a.moecluster, "cluster-sim", "up", "--nodes", "2", "--name", name])
    check(rc == 3 and "not root" in se and len(se.strip().splitlines()) == 1,
          "not root: exit 3, one line", se)
    # a failed run is cleaned up, with the command's status
    rc, so, se, dt = sim(a, "run", name, 2, cmd=["sh", "-c", "exit 5"])
    check(rc != 0 and not left_over(name), f"a failed run (exit {rc}) is cleaned up", se)
    # Ctrl-C / SIGTERM in the middle of a run: mpirun and the ranks end, all is removed
    for sig in (signal.SIGINT, signal.SIGTERM):
        p = subprocess.Popen([a.moecluster, "cluster-sim", "run", "--nodes", "2", "--name", name,
                              "--", "sleep", "60"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=env())
        pids = []
        for _ in range(100):
            if len(left_over(name)) == 5:
                pids = [int(x) for n in (1, 2) for x in subprocess.run(
                    ["ip", "netns", "pids", f"{name}-node{n}"], capture_output=True,
                    text=True).stdout.split()]
                if len(pids) >= 4:  # mpirun, an orted and the two sleeps
                    break
            time.sleep(0.1)
        time.sleep(0.3)
        t = time.monotonic()
        p.send_signal(sig)
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        dt = time.monotonic() - t
        alive = [q for q in pids if running(q)]
        check(len(pids) >= 4 and p.returncode == 128 + sig and dt < 20 and not left_over(name) and
              not alive, f"{signal.Signals(sig).name} during a run: exit {p.returncode} in "
              f"{dt:.1f} s; of its {len(pids)} processes {len(alive)} left; nothing left",
              p.stderr.read())
    # shaping: one TCP stream across a 0.2 Gbit/s link, and unshaped
    rate, se = shaped_rate(a, 0.2)
    free, se2 = shaped_rate(a, 0)
    check(rate is not None and 0.7 * 0.2e9 / 8 < rate < 1.1 * 0.2e9 / 8,
          f"a link shaped to 0.2 Gbit/s carries {(rate or 0) * 8 / 1e9:.3f} Gbit/s "
          f"(unshaped: {(free or 0) * 8 / 1e9:.2f} Gbit/s)", se + se2)
    check(not left_over(name) and not left_over(sim_name("sh")), "nothing left at the end")


def main():
    ap = argparse.ArgumentParser()
    for f in ("moecluster", "compare", "fixtures", "work"):
        ap.add_argument("--" + f, required=True)
    ap.add_argument("command")
    ap.add_argument("rest", nargs=argparse.REMAINDER)
    a = ap.parse_args()
    os.makedirs(a.work, exist_ok=True)
    if os.geteuid() != 0:
        print("skipped: cannot create network namespaces (not root: ip netns needs root / "
              "CAP_NET_ADMIN)")
        return SKIP
    {"score": cmd_score, "sim": cmd_sim}[a.command](a, a.rest)
    print(f"{failures} failure(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
