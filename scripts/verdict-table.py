#!/usr/bin/env python3
"""The "will it run on my machine?" table: `moecluster plan --json` for each
seed model (the published configs the repository carries) on each machine
of cluster-configs/, one cell per pair from plan's `summary`: the best
weight format that fits (bf16, fp8, q8_0, q4_k in that order), the tokens of
KV cache beside the weights and the decode speed of one sequence. Where plan
refuses the pair (DeepSeek-V4 runs on one rank per replica, so every
multi-device machine is refused), the cell says so. The models come in two
tables of at most five columns each.

usage: scripts/verdict-table.py [--moecluster PATH] [--max-model-len N]
       (run from the repository root; prints Markdown)
"""
import argparse
import json
import os
import subprocess
import sys

FX = "tests/fixtures/configs/"
MODELS = [  # tables of (column title, config file relative to the repository root)
    [
        ("Qwen3-30B-A3B", "bench/qwen3-30b-a3b.config.json"),
        ("Qwen3-235B-A22B", FX + "qwen3-235b-a22b.config.json"),
        ("Llama 4 Maverick", FX + "llama4-maverick.config.json"),
        ("DeepSeek-V3", FX + "deepseek-v3.config.json"),
        ("DeepSeek-V3.2", FX + "deepseek-v3.2.config.json"),
    ],
    [
        ("Qwen3-Coder-480B-A35B", FX + "qwen3-coder-480b-a35b.config.json"),
        ("Mistral Large 3", FX + "mistral-large-3.config.json"),  # its params.json
        ("DeepSeek-V4-Flash", FX + "deepseek-v4-flash.config.json"),
        ("DeepSeek-V4-Pro", FX + "deepseek-v4-pro.config.json"),
    ],
]

MACHINES = [  # (row title, cluster config)
    ("1x RTX 4090 24 GB", "1x1-rtx4090-24gb"),
    ("1x RTX 5090 32 GB", "1x1-rtx5090-32gb"),
    ("2x RTX 3090 24 GB, PCIe", "1x2-rtx3090-24gb-pcie"),
    ("desktop, 64 GB DDR5, CPU", "cpu-desktop-64gb"),
    ("server, 128 GB DDR4, CPU", "cpu-server-128gb"),
    ("server, 256 GB DDR5, CPU", "cpu-server-256gb"),
    ("8x H100 80 GB", "1x8-h100-80gb"),
    ("8x H200 141 GB", "1x8-h200-141gb"),
    ("8x B200 180 GB", "1x8-b200-180gb"),
]


def tokens(n):
    if n >= 1_000_000:
        return f"{n / 1e6:.1f}M"
    if n >= 1000:
        return f"{n / 1e3:.0f}k"
    return str(n)


def rate(t):
    return f"{t:.1f}" if t < 10 else f"{t:.0f}"


def cell(exe, model, cluster, max_len):
    args = [exe, "plan", "--model", model, "--cluster", cluster, "--json"]
    if max_len:
        args += ["--max-model-len", str(max_len)]
    p = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                       timeout=300)
    if p.returncode != 0:  # the first clause of plan's one-line refusal
        why = p.stderr.strip().split("\n")[0]
        why = why.removeprefix("moecluster plan: ").split(" (")[0].split(": ")[-1]
        return "refused: " + why.replace("|", "/")
    s = json.loads(p.stdout)["summary"]
    if s["fits"]:
        return (f"**{s['weights']}**, {tokens(s['kv_tokens'])} tok KV, "
                f"{rate(s['decode_tok_s_one_sequence'])} tok/s")
    if s["kv_tokens"] > 0:  # the weights fit, a full context does not
        return f"no ({s['tried_weights']}: {tokens(s['kv_tokens'])} tok KV only)"
    return f"no ({s['tried_weights']}: {s['weight_gib_per_device']:.0f} GiB/device)"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--moecluster", default="build/coordinator/moecluster")
    ap.add_argument("--max-model-len", type=int, default=0)
    a = ap.parse_args()
    if not os.path.isfile(a.moecluster):
        sys.exit(f"verdict-table: {a.moecluster}: no such binary (build first, or --moecluster)")
    for i, models in enumerate(MODELS):
        if i:
            print()
        print("| machine | " + " | ".join(t for t, _ in models) + " |")
        print("| --- " * (len(models) + 1) + "|")
        for title, name in MACHINES:
            cluster = os.path.join("cluster-configs", name + ".yaml")
            cells = [cell(a.moecluster, m, cluster, a.max_model_len) for _, m in models]
            print(f"| {title} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
