#!/usr/bin/env python3
"""`moecluster plan` on the machines people own (cluster-configs/) and with
measured figures.

- every shipped cluster config parses and plans every seed model (the
  published configs in tests/fixtures/configs and bench/), and the last line
  of the text output is the `summary` verdict, the same as --json's; a
  DeepSeek-V4 model on a cluster of more than one device is refused with the
  one-rank-per-replica message instead (V4 runs tp = ep = pp = 1);
- the seed configs added for Qwen3-Coder-480B-A35B, Mistral Large 3 (its
  params.json) and DeepSeek-V4-Flash / -Pro give the published total
  parameter counts (480B, 673B text, 284B, 1.6T) to the published precision,
  and Qwen3-Coder-480B-A35B's BF16 weights and KV tokens per device on one
  8x H200 node are recomputed by hand from the layout rules of docs/plan.md;
- the verdict for Qwen3-30B-A3B on one RTX 4090 is recomputed here from
  config.json and the byte formulas of docs/plan.md alone: BF16 and Q8_0 do
  not fit in 24 GB, Q4_K does, with exactly N tokens of KV cache, and the
  one-sequence decode speed is memory bandwidth / bytes read per token;
- a `measured:` block replaces the datasheet figures, `plan` says which it
  used, and the speed moves with the measured bandwidth; bad measured values
  are refused with the field named;
- the communication per layer and step (estimate.comm_per_layer: EP
  dispatch + combine and the TP all-reduces) is recomputed by hand for EP
  and TP inside a node, across nodes and mixed, and Llama 4's extra exchange.

usage: test_plan_machines.py MOECLUSTER FIXTURES_DIR PROJECT_DIR
"""
import glob
import json
import math
import os
import shutil
import subprocess
import sys

failures = 0


def check(cond, what):
    global failures
    if not cond:
        failures += 1
        print(f"FAIL: {what}")
    else:
        print(f"ok: {what}")


def run(args, timeout=120):
    p = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                       timeout=timeout)
    return p.returncode, p.stdout, p.stderr


GIB = 1024.0 ** 3


def read_yaml_numbers(path, keys):
    """The few `key: number` figures this test needs from a cluster YAML (no
    YAML library: the shipped files write them one per line)."""
    out = {}
    for line in open(path):
        s = line.split("#", 1)[0].strip()
        for k in keys:
            if s.startswith(k + ":"):
                out[k] = float(s.split(":", 1)[1])
    return out


def qwen3_moe_bytes(cfg, fmt):
    """Weight bytes of a Qwen3-MoE text model in `fmt`, from docs/plan.md:
    projections, experts and the LM head take the format (bf16 2 B, q8_0
    34/32 B, q4_k 144/256 B per weight when the row splits into blocks),
    embedding, norms and router stay BF16."""
    H, L = cfg["hidden_size"], cfg["num_hidden_layers"]
    nh, nkv, hd = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]
    E, I, V = cfg["num_experts"], cfg["moe_intermediate_size"], cfg["vocab_size"]

    def mat(r, c):
        if fmt == "q4_k" and c % 256 == 0:
            return r * c * 144 / 256
        if fmt in ("q4_k", "q8_0") and c % 32 == 0:
            return r * c * 34 / 32
        return 2.0 * r * c

    per_layer = (mat(nh * hd, H) + 2 * mat(nkv * hd, H) + mat(H, nh * hd)  # q, k, v, o
                 + E * (2 * mat(I, H) + mat(H, I))                          # routed experts
                 + 2.0 * (2 * H + 2 * hd + E * H))                          # norms, q/k norm, router
    routed = L * E * (2 * mat(I, H) + mat(H, I))
    total = L * per_layer + 2.0 * V * H + mat(V, H) + 2.0 * H               # + embedding, head, norm
    return total, routed


def main():
    exe, fx, root = sys.argv[1], sys.argv[2], sys.argv[3]
    configs = sorted(glob.glob(os.path.join(root, "cluster-configs", "*.yaml")))
    models = sorted(glob.glob(os.path.join(fx, "configs", "*.config.json")))
    models.append(os.path.join(root, "bench", "qwen3-30b-a3b.config.json"))
    new = ["1x1-rtx4090-24gb", "1x1-rtx5090-32gb", "1x2-rtx3090-24gb-pcie", "1x8-b200-180gb",
           "cpu-desktop-64gb", "cpu-server-128gb", "cpu-server-256gb"]
    names = [os.path.basename(c)[:-5] for c in configs]
    check(all(n in names for n in new), f"the machines people own are shipped: {new}")

    # 1. every config x every seed model: plans, and the summary is the last line
    #    (DeepSeek-V4 on more than one device: refused, as the workers refuse it)
    bad = []
    v4 = {m for m in models if json.load(open(m)).get("model_type") == "deepseek_v4"}
    check(len(v4) >= 2, f"DeepSeek-V4 seed configs present: {sorted(os.path.basename(m) for m in v4)}")
    refused = 0
    for c in configs:
        y = read_yaml_numbers(c, ["nodes", "devices_per_node"])
        multi = y.get("nodes", 1) * y.get("devices_per_node", 1) > 1
        for m in models:
            rc, out, err = run([exe, "plan", "--model", m, "--cluster", c, "--json"])
            if m in v4 and multi:
                if rc != 1 or "DeepSeek-V4 runs on one rank per replica" not in err or out:
                    bad.append(f"{os.path.basename(c)} x {os.path.basename(m)}: expected the "
                               f"V4 one-rank refusal, got rc {rc}: {err.strip()}")
                refused += 1
                continue
            if rc != 0:
                bad.append(f"{os.path.basename(c)} x {os.path.basename(m)}: rc {rc}: {err.strip()}")
                continue
            s = json.loads(out).get("summary", {})
            line = s.get("line", "")
            if not (line.startswith("FITS at ") or line.startswith("DOES NOT FIT")) or \
                    s.get("fits") != line.startswith("FITS"):
                bad.append(f"{os.path.basename(c)} x {os.path.basename(m)}: summary {s}")
        rc, out, err = run([exe, "plan", "--model", models[-1], "--cluster", c])
        last = out.rstrip("\n").split("\n")[-1] if rc == 0 else ""
        if not last.startswith("summary    "):
            bad.append(f"{os.path.basename(c)}: text output ends with '{last}' (rc {rc} {err})")
    for b in bad[:5]:
        print("   ", b)
    check(not bad, f"{len(configs)} cluster configs x {len(models)} seed models plan, "
                   f"each with a summary verdict as the last line ({refused} V4 x multi-device "
                   "pairs refused as expected)")

    # 1b. the added seed configs against the published totals (model cards:
    #     Qwen3-Coder-480B-A35B 480B; Mistral Large 3 "673B" for the language
    #     model without its 2.5B vision encoder; DeepSeek-V4-Flash 284B,
    #     DeepSeek-V4-Pro 1.6T), each to half a unit of its last published digit
    published = [("qwen3-coder-480b-a35b", 480e9, 0.5e9), ("mistral-large-3", 673e9, 0.5e9),
                 ("deepseek-v4-flash", 284e9, 0.5e9), ("deepseek-v4-pro", 1.6e12, 0.05e12)]
    cpu1 = os.path.join(root, "cluster-configs", "cpu-server-256gb.yaml")
    for name, total, half in published:
        path = os.path.join(fx, "configs", name + ".config.json")
        rc, out, err = run([exe, "plan", "--model", path, "--cluster", cpu1, "--json"])
        got = json.loads(out)["params_total"] if rc == 0 else -1
        check(abs(got - total) <= half,
              f"{name}: {got / 1e9:.1f} B parameters, published {total / 1e9:.0f} B"
              + (f" (rc {rc} {err.strip()})" if rc else ""))

    # 1c. Qwen3-Coder-480B-A35B on 8x H200 at BF16, by hand (docs/plan.md Layout
    #     and Memory per rank): tp 8 = ep 8; rank 0 holds 1/8 of the vocabulary
    #     rows of embedding and LM head, 12 of 96 query heads, 1 of 8 KV heads,
    #     o row-split, 20 of 160 experts per layer, the whole router and norms
    ccfg = json.load(open(os.path.join(fx, "configs", "qwen3-coder-480b-a35b.config.json")))
    H, L, V = ccfg["hidden_size"], ccfg["num_hidden_layers"], ccfg["vocab_size"]
    E, I, hd = ccfg["num_experts"], ccfg["moe_intermediate_size"], ccfg["head_dim"]
    nh, nkv, tp = ccfg["num_attention_heads"], ccfg["num_key_value_heads"], 8
    per_layer = (nh // tp * hd * H + 2 * (nkv // tp) * hd * H + H * (nh // tp) * hd
                 + E // tp * 3 * H * I + E * H + 2 * H + 2 * hd)
    w_hand = 2 * (2 * (V // tp) * H + L * per_layer + H)
    h200 = os.path.join(root, "cluster-configs", "1x8-h200-141gb.yaml")
    y = read_yaml_numbers(h200, ["memory_gib", "workspace_gib"])
    kv_tok = 2 * (nkv // tp) * hd * 2 * L
    kv_hand = math.floor((y["memory_gib"] * GIB - y["workspace_gib"] * GIB - w_hand) / kv_tok)
    rc, out, err = run([exe, "plan", "--model", os.path.join(fx, "configs",
                        "qwen3-coder-480b-a35b.config.json"), "--cluster", h200, "--json"])
    d = json.loads(out) if rc == 0 else {}
    r0 = (d.get("ranks") or [{}])[0]
    sm = d.get("summary", {})
    # weight_bytes is printed with 10 significant digits (JSON real): equal to that
    # resolution; the KV tokens, an integer derived from it, must match exactly
    check(abs(r0.get("weight_bytes", -1) - w_hand) <= 5e-10 * w_hand and
          r0.get("kv_tokens") == kv_hand and
          sm.get("weights") == "bf16" and sm.get("kv_tokens") == kv_hand,
          f"Qwen3-Coder-480B-A35B on 8x H200: rank 0 {r0.get('weight_bytes')} B of BF16 weights "
          f"(by hand {w_hand}, {w_hand / GIB:.3f} GiB), {r0.get('kv_tokens')} KV tokens (by hand "
          f"{kv_hand}), summary at {sm.get('weights')}")

    # 2. the verdict against hand arithmetic: Qwen3-30B-A3B on one RTX 4090
    qcfg_path = os.path.join(root, "bench", "qwen3-30b-a3b.config.json")
    cfg = json.load(open(qcfg_path))
    gpu = os.path.join(root, "cluster-configs", "1x1-rtx4090-24gb.yaml")
    y = read_yaml_numbers(gpu, ["memory_gib", "memory_bandwidth_gbs", "workspace_gib"])
    mem, ws, bw = y["memory_gib"] * GIB, y["workspace_gib"] * GIB, y["memory_bandwidth_gbs"] * 1e9
    kv_per_tok = cfg["num_hidden_layers"] * 2 * cfg["num_key_value_heads"] * cfg["head_dim"] * 2
    ctx = 8192  # min(max_position_embeddings 40960, 8192)
    fit = {}
    for f in ("bf16", "q8_0", "q4_k"):
        w, _ = qwen3_moe_bytes(cfg, f)
        fit[f] = (mem - ws - w) / kv_per_tok >= ctx
    w4, routed4 = qwen3_moe_bytes(cfg, "q4_k")
    n_tokens = math.floor((mem - ws - w4) / kv_per_tok)
    k, E = cfg["num_experts_per_tok"], cfg["num_experts"]
    # one token at context 4096: every non-routed weight but the embedding table (a row
    # lookup), k of E experts, the KV cache of the context
    embed = 2.0 * cfg["vocab_size"] * cfg["hidden_size"]
    bytes_one = w4 - embed - routed4 + routed4 * k / E + (ctx // 2) * kv_per_tok
    tok_s = bw / bytes_one
    print(f"    by hand: bf16 {qwen3_moe_bytes(cfg, 'bf16')[0] / GIB:.2f} GiB, q8_0 "
          f"{qwen3_moe_bytes(cfg, 'q8_0')[0] / GIB:.2f} GiB, q4_k {w4 / GIB:.3f} GiB -> "
          f"{n_tokens} KV tokens, {tok_s:.1f} tok/s for one sequence")
    check(not fit["bf16"] and not fit["q8_0"] and fit["q4_k"],
          "by hand: Qwen3-30B-A3B fits one RTX 4090 at q4_k only")
    rc, out, err = run([exe, "plan", "--model", qcfg_path, "--cluster", gpu, "--json"])
    s = json.loads(out)["summary"] if rc == 0 else {}
    print(f"    plan:    {s.get('line')}")
    check(s.get("fits") is True and s.get("weights") == "q4_k",
          "plan: the best format that fits is q4_k")
    check(s.get("kv_tokens") == n_tokens,
          f"plan: KV cache for {s.get('kv_tokens')} tokens, by hand {n_tokens}")
    got = s.get("decode_tok_s_one_sequence", 0)
    check(abs(got - tok_s) <= 1e-3 * tok_s,
          f"plan: one-sequence decode {got:.2f} tok/s, by hand {tok_s:.2f} (memory bound)")
    rc, text, _ = run([exe, "plan", "--model", qcfg_path, "--cluster", gpu])
    last = text.rstrip("\n").split("\n")[-1]
    check(f"KV cache for {n_tokens} tokens" in last and "FITS at q4_k" in last and
          "(datasheet figures)" in last, f"text summary line: '{last}'")

    # 3. measured figures: used in place of the datasheet ones, and said so
    meas = os.path.join(fx, "clusters", "measured-rtx4090.yaml")
    rc, text, err = run([exe, "plan", "--model", qcfg_path, "--cluster", meas, "--weights", "q4_k"])
    fig = [l for l in text.split("\n") if l.startswith("figures")]
    check(rc == 0 and fig and "memory bandwidth 806.4 GB/s (measured, bench 2026-11-30)" in fig[0]
          and "compute 120 TFLOP/s bf16 (measured, bench 2026-11-30)" in fig[0]
          and "31.5 GB/s (datasheet)" in fig[0], f"figures line: {fig}")
    rc, out, err = run([exe, "plan", "--model", qcfg_path, "--cluster", meas, "--json"])
    sm = json.loads(out)["summary"] if rc == 0 else {}
    ratio = sm.get("decode_tok_s_one_sequence", 0) / got if got else 0
    check(abs(ratio - 806.4 / 1008) < 1e-6 and sm.get("figures") == "measured" and
          sm.get("kv_tokens") == n_tokens,
          f"measured bandwidth 806.4 of 1008 GB/s: decode x{ratio:.6f} (expected x0.8), same KV")
    check("measured figures from bench 2026-11-30" in sm.get("line", ""),
          f"summary names the measured figures: {sm.get('line')}")
    cpu = os.path.join(fx, "clusters", "measured-cpu-2ranks.yaml")
    rc, text, err = run([exe, "plan", "--model", qcfg_path, "--cluster", cpu])
    fig = [l for l in text.split("\n") if l.startswith("figures")]
    check(rc == 0 and fig and "between nodes tcp-10g 1.1 GB/s (measured, scaling benchmark "
          "2026-11-30)" in fig[0] and "link shared-memory 8 GB/s (datasheet)" in fig[0],
          f"measured link figures: {fig}")
    for f, needle in (("bad-measured-date.yaml", "measured.date"),
                      ("bad-measured-zero.yaml", "measured.memory_bandwidth_gbs"),
                      ("bad-measured-empty.yaml", "measured: no figures")):
        rc, out, err = run([exe, "plan", "--model", qcfg_path, "--cluster",
                            os.path.join(fx, "clusters", f)])
        check(rc == 1 and needle in err and f in err and "Traceback" not in err,
              f"{f} refused: {err.strip()}")

    # 4. communication per layer and step (estimate.comm_per_layer), by hand from
    #    docs/plan.md: f32 activations on the wire; each TP rank dispatches its
    #    ceil(B/tp) tokens' k pairs (the busiest), (ep-1)/ep of them to other ranks,
    #    split between the links by where the peer is; three exchanges (four for Llama 4); all-reduce
    #    2 (n-1)/n bytes / bw + 2 (n-1) latency, twice per layer
    import tempfile
    tmp = tempfile.mkdtemp(prefix="mc-plan-comm-")
    mcfg = json.load(open(os.path.join(fx, "configs", "llama4-maverick.config.json")))
    cases = [  # name, model, nodes, per node, tp, dp, ep, intra (GB/s, us), inter, B, memory GiB
        ("tp2-ep4-2nodes", qcfg_path, cfg, 2, 2, 2, 2, 4, (8, 2), (0.125, 10), 16, 40),
        ("tp2-across-nodes", qcfg_path, cfg, 2, 1, 2, 1, 1, (8, 2), (0.125, 10), 16, 60),
        ("ep2-across-nodes", qcfg_path, cfg, 2, 1, 1, 2, 2, (8, 2), (0.625, 25), 256, 60),
        ("ep2-shm", qcfg_path, cfg, 1, 2, 1, 2, 2, (8, 2), None, 256, 60),
        ("llama4-tp8-ep8", os.path.join(fx, "configs", "llama4-maverick.config.json"),
         mcfg["text_config"], 1, 8, 8, 1, 8, (450, 3), None, 60, 200),
    ]
    for name, model, mc, nodes, per, tp, dp, ep, intra, inter, B, memg in cases:
        path = os.path.join(tmp, name + ".yaml")
        lines = [f"name: {name}", "backend: cpu", f"nodes: {nodes}", f"devices_per_node: {per}",
                 "device:", "  name: x", f"  memory_gib: {memg}", "  memory_bandwidth_gbs: 100",
                 "  tflops: {bf16: 1}", "links:",
                 f"  intra_node: {{kind: intra-x, bandwidth_gbs: {intra[0]}, latency_us: {intra[1]}}}"]
        if inter:
            lines.append(f"  inter_node: {{kind: inter-x, bandwidth_gbs: {inter[0]}, "
                         f"latency_us: {inter[1]}}}")
        lines += [f"parallel: {{tp: {tp}, pp: 1, dp: {dp}, ep: {ep}}}", "workspace_gib: 1"]
        with open(path, "w") as f:
            f.write("\n".join(lines) + "\n")
        H, k = mc["hidden_size"], mc["num_experts_per_tok"]
        bi, li = intra[0] * 1e9, intra[1] * 1e-6
        bo, lo = (inter[0] * 1e9, inter[1] * 1e-6) if inter else (bi, li)
        a2a = 0.0
        if ep > 1:
            pairs, g = math.ceil(B / tp) * k, min(ep, per)
            if ep > per:
                a2a = max(2 * pairs * H * 4 * (g - 1) / ep / bi, 2 * pairs * H * 4 * (ep - g) / ep / bo)
            else:
                a2a = 2 * pairs * H * 4 * (ep - 1) / ep / bi
            a2a += (4 if "llama4" in name else 3) * (lo if ep > per else li)
        ar = 0.0
        if tp > 1:
            bw_, lat_ = (bo, lo) if tp > per else (bi, li)
            ar = 2 * (2 * (tp - 1) / tp * B * H * 4 / bw_ + 2 * (tp - 1) * lat_)
        rc, out, err = run([exe, "plan", "--model", model, "--cluster", path, "--max-model-len",
                            "256", "--max-num-seqs", str(B), "--json"])
        e = json.loads(out)["estimate"] if rc == 0 else {}
        c = e.get("comm_per_layer", {})
        got_a2a, got_ar = c.get("dispatch_combine_s", -1), c.get("allreduce_s", -1)
        check(rc == 0 and e.get("batch_per_replica") == B and
              abs(got_a2a - a2a) <= 1e-9 * a2a and abs(got_ar - ar) <= 1e-9 * ar,
              f"{name}: batch {e.get('batch_per_replica')}, dispatch+combine {got_a2a * 1e3:.6f} ms "
              f"(by hand {a2a * 1e3:.6f}), all-reduce {got_ar * 1e3:.6f} ms (by hand {ar * 1e3:.6f})"
              + (f" rc {rc} {err.strip()}" if rc else ""))
        if name == "tp2-ep4-2nodes":
            check(c.get("ep_link") == "inter-x" and c.get("tp_link") == "intra-x",
                  f"{name}: links named {c.get('ep_link')}, {c.get('tp_link')}")
            rc, text, err = run([exe, "plan", "--model", model, "--cluster", path,
                                 "--max-model-len", "256", "--max-num-seqs", str(B)])
            want = (f"communication per layer and step: dispatch + combine {a2a * 1e3:.3f} ms per "
                    f"MoE layer over inter-x; TP all-reduce {ar * 1e3:.3f} ms per layer over intra-x")
            check(want in text, f"{name}: text line '{want}'")

    shutil.rmtree(tmp, ignore_errors=True)

    print(f"{failures} failures")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
