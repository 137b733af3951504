#!/usr/bin/env python3
"""netns-scaling.py - the communication of `moecluster score --stats` across
emulated nodes (network namespaces joined by tbf-shaped links, `moecluster
cluster-sim`) and in shared memory (ranks on one node), next to the
prediction of `moecluster plan --json` for the same cluster description.

    sudo bench/netns-scaling.py [--build DIR] [--work DIR] [--rates 0,1,5]
                                [--nodes 2,4] [--repeat 2] [--modes prefill,decode]
                                [--layouts ep,tp] [--no-shm] [--nice N]

What it does:
  1. writes a small synthetic checkpoint (Qwen3-MoE layout: hidden 2048 as
     Qwen3-30B-A3B, 32 experts of 256, top-8, 4 layers, vocabulary 1024; the
     narrow experts and small vocabulary keep the compute small next to the
     traffic on 2 cores) and two inputs: prefill (4 x 128 tokens, one step)
     and decode (4 x 33 tokens, --decode-from 1: 33 steps of one token per
     sequence);
  2. measures what each link setting really carries (rate 0: unshaped): one
     TCP stream (about 1 s of data) and a 64-byte ping-pong between two
     namespaces; rates where the stream reaches less than 85% of the setting
     are marked untrustworthy (on a small machine tbf is CPU-limited at high
     rates);
  3. per setting (shared memory; N nodes x 1 rank at each rate) and layout
     (EP across the ranks: --ep N; TP across the ranks: --tp N --ep 1) and
     input, runs score --stats REPEAT times, takes per MoE layer the smallest
     comm_ms over ranks (the rank that arrives last waits least: its time is
     the closest to the transfer itself), the median over layers and the best
     over repeats, divided by the steps;
  4. writes a cluster YAML for the same setting (nodes, 1 rank per node, link
     GB/s = the tbf rate / 8, latency = the measured one-way ping-pong time)
     and asks `plan --json` for estimate.comm_per_layer at the same tokens
     per replica and step (--max-num-seqs), and prints both with the ratio;
     again with the stream's rate in the config's `measured:` block;
  5. per setting and layout, fits time = bytes / bandwidth + fixed cost
     through the prefill and decode points and prints the result as
     `measured:` link figures for a cluster config.

Ranks run with MC_THREADS=1 and Open MPI's mpi_yield_when_idle, so that a
rank waiting in a collective does not take the core its peer needs.
Results also go to WORK/results.json. Takes about 5 minutes for
--rates 0,1,5 --repeat 3 on 2 cores.

Not a test: it prints a table; docs/plan.md records it. Needs root (network
namespaces) for the emulated nodes; without it only the shared-memory rows
are measured.
"""
import argparse
import json
import os
import re
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

MODEL = {
    "architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe",
    "vocab_size": 1024, "hidden_size": 2048, "intermediate_size": 6144,
    "moe_intermediate_size": 256, "num_hidden_layers": 4, "num_attention_heads": 32,
    "num_key_value_heads": 4, "head_dim": 128, "num_experts": 32, "num_experts_per_tok": 8,
    "norm_topk_prob": True, "decoder_sparse_step": 1, "mlp_only_layers": [],
    "hidden_act": "silu", "max_position_embeddings": 4096, "rms_norm_eps": 1e-06,
    "rope_theta": 1000000.0, "tie_word_embeddings": False, "attention_bias": False,
    "bos_token_id": 0, "eos_token_id": 1, "torch_dtype": "bfloat16",
    "sliding_window": None, "use_sliding_window": False,
}
INPUTS = {"prefill": (4, 128, None), "decode": (4, 33, 1)}  # B, T, --decode-from
SUBNET = "10.79.0.0/24"  # private test subnet, only inside the namespaces
PORT = 5399
NICE = 0  # --nice: niceness of the runs (negative: ahead of other jobs; root only)


def write_ids(path, B, T, seed):
    import random
    rnd = random.Random(seed)
    ids = [rnd.randrange(2, MODEL["vocab_size"]) for _ in range(B * T)]
    h = json.dumps({"input_ids": {"dtype": "I64", "shape": [B, T],
                                  "data_offsets": [0, 8 * B * T]}}).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + struct.pack(f"<{B * T}q", *ids))


# ---- link check: one TCP stream and a ping-pong between two namespaces ----

PEER = r"""
import socket, sys, time
mode, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
if mode == "server":
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, port)); s.listen(1)
    for _ in range(2):
        c, _ = s.accept(); c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        kind = c.recv(1)
        if kind == b"s":
            while c.recv(1 << 20):
                pass
            c.sendall(b"x")
        else:
            while True:
                b = c.recv(64)
                if not b: break
                c.sendall(b)
        c.close()
else:
    nbytes = int(float(sys.argv[4]))
    c = socket.create_connection((host, port)); c.sendall(b"s")
    buf = b"\0" * (1 << 20); sent = 0; t = time.perf_counter()
    while sent < nbytes:
        c.sendall(buf); sent += len(buf)
    c.shutdown(socket.SHUT_WR); c.recv(1); dt = time.perf_counter() - t; c.close()
    time.sleep(0.2)
    c = socket.create_connection((host, port)); c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    c.sendall(b"p"); rt = []
    for i in range(300):
        t0 = time.perf_counter(); c.sendall(b"y" * 64); got = 0
        while got < 64:
            got += len(c.recv(64 - got))
        rt.append(time.perf_counter() - t0)
    rt.sort()
    print(f"{sent * 8 / dt / 1e9:.4f} {rt[len(rt) // 2] / 2 * 1e6:.1f}")
"""


def sim(exe, args, check=True):
    r = subprocess.run([exe, "cluster-sim"] + args, capture_output=True, text=True)
    if check and r.returncode != 0:
        sys.exit(f"netns-scaling: cluster-sim {' '.join(args)} failed: {r.stderr.strip()}")
    return r


def link_check(exe, work, rate):
    """(Gbit/s one stream reached, one-way latency in us) over a 2-node link."""
    name = f"nsl{os.getpid() % 10000}"
    args = ["--nodes", "2", "--name", name, "--subnet", SUBNET, "--state-dir", f"{work}/sim-{name}"]
    if rate:
        args += ["--link-gbps", str(rate)]
    sim(exe, ["up"] + args)
    try:
        peer = f"{work}/peer.py"
        with open(peer, "w") as f:
            f.write(PEER)
        host = SUBNET.rsplit(".", 1)[0] + ".2"
        srv = subprocess.Popen(["ip", "netns", "exec", f"{name}-node2", sys.executable, peer,
                                "server", host, str(PORT)])
        time.sleep(0.5)
        nbytes = (rate or 10) * 125e6  # about one second of data
        out = subprocess.run(["ip", "netns", "exec", f"{name}-node1", sys.executable, peer,
                              "client", host, str(PORT), str(nbytes)],
                             capture_output=True, text=True, timeout=120)
        srv.wait(timeout=30)
        gbps, lat = (float(x) for x in out.stdout.split())
        return gbps, lat
    finally:
        sim(exe, ["down", "--name", name, "--state-dir", f"{work}/sim-{name}"], check=False)


# ---- one score run and its statistics ----

def parse_stats(text, layers):
    """{layer: [comm_ms per rank]} and {layer: [disp_bytes + comb_bytes per rank]} and allred."""
    comm, a2a, ar = {}, {}, {}
    for line in text.splitlines():
        f = line.split()
        if len(f) == 12 and re.fullmatch(r"\d+", f[0]) and int(f[0]) < layers:
            L = int(f[0])
            comm.setdefault(L, []).append(float(f[10]))
            a2a.setdefault(L, []).append(float(f[4]) + float(f[6]))
            ar.setdefault(L, []).append(float(f[7]))
    return comm, a2a, ar


def run_score(exe, work, mode, ranks, par, net):
    B, T, dfrom = INPUTS[mode]
    cmd = [exe, "score", "--model", f"{work}/ckpt", "--input", f"{work}/{mode}.safetensors",
           "--output", f"{work}/out.safetensors", "--stats"] + par
    if dfrom is not None:
        cmd += ["--decode-from", str(dfrom)]
    # one kernel thread per rank (the ranks share the cores) and ranks that yield
    # the CPU while they wait, so that a waiting rank does not starve its peer
    env = dict(os.environ, MC_LOG="warn", MC_THREADS="1", OMPI_MCA_mpi_yield_when_idle="1")
    if net is None:
        full = ["mpirun", "--oversubscribe", "--bind-to", "none", "-np", str(ranks)]
        if os.geteuid() == 0:
            full.append("--allow-run-as-root")
        env["OMPI_MCA_btl_vader_single_copy_mechanism"] = "none"
        full += cmd
    else:
        nodes, rate = net
        name = f"nsr{os.getpid() % 10000}"
        full = [exe, "cluster-sim", "run", "--nodes", str(nodes), "--ranks-per-node", "1",
                "--name", name, "--subnet", SUBNET, "--state-dir", f"{work}/sim-{name}"]
        if rate:
            full += ["--link-gbps", str(rate)]
        full += ["--"] + cmd
    if NICE:
        full = ["nice", "-n", str(NICE)] + full
    r = subprocess.run(full, capture_output=True, text=True, env=env, timeout=900)
    if r.returncode != 0:
        sys.exit(f"netns-scaling: {' '.join(full)} failed ({r.returncode}): {r.stderr[-2000:]}")
    return r.stderr


def steps_of(mode, dp):
    B, T, dfrom = INPUTS[mode]
    seqs = B // dp  # sequences per replica
    if dfrom is None:
        return 1, seqs * T  # one step of every token of the replica (<= 2048)
    return 1 + (T - dfrom), seqs  # the first token, then one per step


# ---- the plan's prediction ----

def cluster_yaml(path, nodes, ranks, layout, link_gbs, lat_us, shm, measured_gbs=None):
    tp = ranks if layout == "tp" else 1
    ep = 1 if layout == "tp" else ranks
    dp = ranks // tp
    per_node = ranks if shm else 1
    lines = [
        f"name: emulated-{'shm' if shm else f'{nodes}x1'}",
        "backend: cpu",
        f"nodes: {1 if shm else nodes}",
        f"devices_per_node: {per_node}",
        "device:",
        "  name: cpu-rank",
        "  memory_gib: 10",
        "  memory_bandwidth_gbs: 10",
        "  tflops: {bf16: 0.1}",
        "links:",
    ]
    if shm:
        lines.append(f"  intra_node: {{kind: shared-memory, bandwidth_gbs: {link_gbs:g}, "
                     f"latency_us: {lat_us:g}}}")
    else:
        lines.append("  intra_node: {kind: loopback, bandwidth_gbs: 8, latency_us: 2}")
        lines.append(f"  inter_node: {{kind: veth-tbf, bandwidth_gbs: {link_gbs:g}, "
                     f"latency_us: {lat_us:g}}}")
    lines += [f"parallel: {{tp: {tp}, pp: 1, dp: {dp}, ep: {ep}}}", "workspace_gib: 0.5"]
    if measured_gbs:  # what one TCP stream carried over the shaped link
        lines += ["measured:", "  source: netns-scaling",
                  f"  date: {time.strftime('%Y-%m-%d', time.gmtime())}", "  links:",
                  f"    inter_node: {{bandwidth_gbs: {measured_gbs:.6g}}}"]
    lines.append("")
    with open(path, "w") as f:
        f.write("\n".join(lines))


def plan_comm(exe, work, yaml, tokens):
    r = subprocess.run([exe, "plan", "--model", f"{work}/ckpt/config.json", "--cluster", yaml,
                        "--max-model-len", "256", "--max-num-seqs", str(tokens), "--json"],
                       capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"netns-scaling: plan failed: {r.stderr.strip()}")
    e = json.loads(r.stdout)["estimate"]
    if e["batch_per_replica"] != tokens:
        sys.exit(f"netns-scaling: plan's batch is {e['batch_per_replica']}, not {tokens}")
    return e["comm_per_layer"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--build", default="build")
    ap.add_argument("--work", default="/tmp/moecluster-netns-scaling")
    ap.add_argument("--rates", default="1,5", help="link Gbit/s settings, comma-separated")
    ap.add_argument("--nodes", default="2", help="emulated node counts, comma-separated")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--modes", default="prefill,decode")
    ap.add_argument("--layouts", default="ep,tp")
    ap.add_argument("--shm-bw", type=float, default=8.0, help="GB/s of the shared-memory link")
    ap.add_argument("--shm-lat", type=float, default=2.0, help="us of the shared-memory link")
    ap.add_argument("--no-shm", action="store_true")
    ap.add_argument("--nice", type=int, default=0,
                    help="niceness of the runs (e.g. -10 on a machine shared with other jobs)")
    a = ap.parse_args()
    global NICE
    NICE = a.nice
    exe = os.path.join(a.build, "coordinator", "moecluster")
    if not os.access(exe, os.X_OK):
        sys.exit(f"netns-scaling: {exe} not found (build first)")
    exe = os.path.abspath(exe)
    os.makedirs(a.work, exist_ok=True)
    work = os.path.abspath(a.work)
    ck = f"{work}/ckpt"
    if not os.path.exists(f"{ck}/model.safetensors.index.json") and \
            not os.path.exists(f"{ck}/model.safetensors"):
        with open(f"{work}/model.config.json", "w") as f:
            json.dump(MODEL, f)
        subprocess.run([exe, "synth", "--config", f"{work}/model.config.json", "--out", ck,
                        "--seed", "1"], check=True, capture_output=True)
    for i, (mode, (B, T, _)) in enumerate(INPUTS.items()):
        write_ids(f"{work}/{mode}.safetensors", B, T, 5 + i)
    layers = MODEL["num_hidden_layers"]
    rates = [float(x) if "." in x else int(x) for x in a.rates.split(",") if x]  # 0: unshaped
    nodes_list = [int(x) for x in a.nodes.split(",") if x]
    root = os.geteuid() == 0 and shutil.which("ip")
    load0 = open("/proc/loadavg").read().split()[:3]
    print(f"netns-scaling: {os.cpu_count()} cores, load average {' '.join(load0)} at the start, "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")

    links = {}
    if root:
        for rate in sorted(set(rates) | {0}):
            gbps, lat = link_check(exe, work, rate)
            if rate == 0:
                links[0] = (gbps, lat, True)
                print(f"link unshaped: one TCP stream {gbps:.3f} Gbit/s, one-way latency "
                      f"{lat:.0f} us (the ceiling of this machine's TCP over veth)")
                continue
            ok = gbps >= 0.85 * rate and gbps <= 1.02 * rate
            links[rate] = (gbps, lat, ok)
            print(f"link {rate:g} Gbit/s: one TCP stream {gbps:.3f} Gbit/s ({100 * gbps / rate:.0f}%), "
                  f"one-way latency {lat:.0f} us (64-byte ping-pong, median) -> "
                  f"{'trustworthy' if ok else 'NOT trustworthy (tbf CPU-limited)'}")
    else:
        print("netns-scaling: not root (or no iproute2): emulated nodes skipped, shared memory only")

    settings = []  # (label, ranks, net, link GB/s, latency us, shm, measured GB/s)
    if not a.no_shm:
        for n in nodes_list:
            settings.append((f"shm {n} ranks", n, None, a.shm_bw, a.shm_lat, True, None))
    if root:
        for n in nodes_list:
            for rate in rates:
                gbps, lat, ok = links[rate]
                if rate == 0:  # no datasheet rate: the stream's rate is the description
                    settings.append((f"{n} nodes unshaped", n, (n, 0), gbps / 8.0, lat, False, None))
                    continue
                label = f"{n} nodes {rate:g}G" + ("" if ok else " (untrusted)")
                settings.append((label, n, (n, rate), rate / 8.0, lat, False, gbps / 8.0))

    hdr = (f"{'setting':<22} {'layout':<6} {'mode':<8} {'tok/step':>8} {'MB/layer':>9} "
           f"{'measured ms':>12} {'(max rank)':>11} {'plan ms':>9} {'meas/plan':>9} "
           f"{'plan(meas) ms':>13} {'meas/plan(meas)':>15}")
    print(hdr)
    rows, row_ranks = [], []
    for label, ranks, net, bw, lat, shm, mgbs in settings:
        for layout in a.layouts.split(","):
            par = ["--tp", str(ranks), "--ep", "1"] if layout == "tp" else ["--ep", str(ranks)]
            dp = 1 if layout == "tp" else ranks
            yaml = f"{work}/cluster-{label.split(' (')[0].replace(' ', '-')}-{layout}.yaml"
            cluster_yaml(yaml, ranks, ranks, layout, bw, lat, shm)
            myaml = yaml.replace(".yaml", "-measured.yaml")
            cluster_yaml(myaml, ranks, ranks, layout, bw, lat, shm, mgbs)
            for mode in a.modes.split(","):
                steps, tokens = steps_of(mode, dp)
                best = None
                for _ in range(a.repeat):
                    comm, a2a, ar = parse_stats(run_score(exe, work, mode, ranks, par, net), layers)
                    if len(comm) != layers:
                        sys.exit(f"netns-scaling: no --stats rows for every layer ({label} {layout})")
                    lo = statistics.median(min(comm[L]) for L in comm) / steps
                    hi = statistics.median(max(comm[L]) for L in comm) / steps
                    mb = statistics.median(max((a2a if layout == "ep" else ar)[L]) for L in comm)
                    if layout == "tp":  # all-reduce payload -> bytes a rank sends
                        mb *= 2.0 * (ranks - 1) / ranks
                    if best is None or lo < best[0]:
                        best = (lo, hi, mb / steps / 1e6)
                key = "dispatch_combine_s" if layout == "ep" else "allreduce_s"
                pred = plan_comm(exe, work, yaml, tokens)[key] * 1e3
                mpred = plan_comm(exe, work, myaml, tokens)[key] * 1e3 if mgbs else pred
                ratio, mratio = best[0] / pred, best[0] / mpred
                row = (label, layout, mode, tokens, best[2], best[0], best[1], pred, ratio, mpred,
                       mratio)
                rows.append(row)
                row_ranks.append(ranks)
                print(f"{label:<22} {layout:<6} {mode:<8} {tokens:>8} {best[2]:>9.3f} "
                      f"{best[0]:>12.3f} {best[1]:>11.3f} {pred:>9.3f} {ratio:>9.2f} "
                      f"{mpred:>13.3f} {mratio:>15.2f}", flush=True)
    # per setting and layout, prefill and decode give two points of time against
    # bytes: the slope is the bandwidth the exchange really gets, the intercept a
    # fixed cost per layer and step, shown per message round as the plan counts them
    # (EP: 3 exchanges; TP: 2 all-reduces of 2 (n-1) rounds)
    fits = {}
    for r, n in zip(rows, row_ranks):
        fits.setdefault((r[0], r[1], n), []).append((r[4], r[5]))
    for (label, layout, n), pts in fits.items():
        if len(pts) != 2 or abs(pts[0][0] - pts[1][0]) < 1e-9:
            continue
        (x0, y0), (x1, y1) = sorted(pts)
        slope = (y1 - y0) / (x1 - x0)  # ms per MB
        icpt = y0 - slope * x0
        rounds = 3 if layout == "ep" else 4 * (n - 1)
        bw = 1.0 / slope if slope > 0 else float("inf")
        print(f"fit {label:<22} {layout}: {bw:.3f} GB/s effective, {icpt:.3f} ms fixed per layer "
              f"and step = {icpt * 1e3 / rounds:.0f} us per message round ({rounds} rounds); as "
              f"measured figures: {{bandwidth_gbs: {bw:.3g}, latency_us: "
              f"{max(icpt * 1e3 / rounds, 0.1):.3g}}}")
    print(f"load average at the end: {' '.join(open('/proc/loadavg').read().split()[:3])}")
    print("measured: per MoE layer and step, median over layers of the smallest comm_ms over ranks "
          "(EP: dispatch + combine; TP: both all-reduces); MB/layer: bytes one rank sends per "
          "layer and step; plan: estimate.comm_per_layer at the same tokens per replica and step "
          "for the cluster described with the link's nominal rate; plan(meas): with the measured "
          "TCP stream rate in the config's measured: block")
    with open(f"{work}/results.json", "w") as f:
        json.dump([dict(zip(["setting", "layout", "mode", "tokens_per_step", "mb_per_layer",
                             "measured_ms", "measured_max_rank_ms", "plan_ms", "ratio",
                             "plan_measured_ms", "ratio_measured"], r))
                   for r in rows], f, indent=1)


if __name__ == "__main__":
    main()
