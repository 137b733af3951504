#!/usr/bin/env bash
# scaling.sh - throughput and communication share of `moecluster score` on 1, 2
# and 4 ranks (a simulated cluster on this machine), on a synthetic checkpoint
# of about 1.5 GB (bench/scaling-moe.config.json: Qwen3-30B-A3B's layer width,
# 64 experts of 768, top-8, 2 layers, vocabulary 32000). Not a test: it prints
# a table (and keeps the raw --stats output in WORK/); docs/parallel.md records
# the numbers.
#
#   bench/scaling.sh [BUILD_DIR [WORK_DIR]]     defaults: build, /tmp/moecluster-scaling
#
# Environment: REPEAT=N runs N rounds over all cases and keeps each case's fastest
# (default 3);
# LAYOUTS overrides the list of "RANKS:OPTIONS" cases.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
work=${2:-/tmp/moecluster-scaling}
repeat=${REPEAT:-3}
exe=$build/coordinator/moecluster
[ -x "$exe" ] || { echo "scaling.sh: $exe not found (build first)" >&2; exit 1; }
mkdir -p "$work"

# 1. the synthetic checkpoint (random weights in the real on-disk format), once
ckpt=$work/ckpt
if [ ! -f "$ckpt/model.safetensors.index.json" ]; then
    "$exe" synth --config bench/scaling-moe.config.json --out "$ckpt" --seed 1
fi
size=$(du -sb "$ckpt" | cut -f1)

# 2. inputs: prefill (4 sequences of 128 tokens, one step each) and decode
#    (4 sequences of 33 tokens, 32 one-token steps each through the KV cache)
python3 - "$work" <<'EOF'
import json, random, struct, sys
random.seed(5)
def write(path, B, T):
    ids = [random.randrange(2, 32000) for _ in range(B * T)]
    h = json.dumps({"input_ids": {"dtype": "I64", "shape": [B, T],
                                  "data_offsets": [0, 8 * B * T]}}).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + struct.pack(f"<{B * T}q", *ids))
write(sys.argv[1] + "/prefill.safetensors", 4, 128)
write(sys.argv[1] + "/decode.safetensors", 4, 33)
EOF

mpirun_flags=(--oversubscribe --bind-to none)
[ "$(id -u)" -eq 0 ] && mpirun_flags+=(--allow-run-as-root)
export OMPI_MCA_btl_vader_single_copy_mechanism=none MC_LOG=info

# 3. the cases: ranks and options (default layout: experts over all ranks, dp = ranks)
if [ -n "${LAYOUTS:-}" ]; then
    read -r -a cases <<<"$LAYOUTS"
else
    cases=("1:" "2:" "4:" "4:--tp_2" "4:--pp_2")
fi

echo "moecluster scaling benchmark: $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')),"
echo "checkpoint $(awk -v b="$size" 'BEGIN{printf "%.2f GB", b/1e9}') ($ckpt), best of $repeat round(s), load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"

# one run: prints "tok/s comm% maxcomm% disp_MB/L comb_MB/L" from its --stats log
run_case() {
    local mode=$1 np=$2 opts=$3 log=$4 in=$work/$1.safetensors extra=()
    [ "$mode" = decode ] && extra=(--decode-from 1)
    if [ "$np" = 1 ]; then
        # shellcheck disable=SC2086
        "$exe" score --model "$ckpt" --input "$in" --output "$work/out.safetensors" \
            "${extra[@]}" $opts --stats 2>"$log"
    else
        # shellcheck disable=SC2086
        mpirun "${mpirun_flags[@]}" -np "$np" "$exe" score --model "$ckpt" --input "$in" \
            --output "$work/out.safetensors" "${extra[@]}" $opts --stats 2>"$log"
    fi
    # tok/s from the run log; comm share overall and of the busiest rank; dispatch /
    # combine megabytes per MoE layer summed over ranks
    awk -v layers=2 '
        /scored/ { for (i = 1; i <= NF; i++) if ($i ~ /^\(/) { sub(/\(/, "", $i); tps = $i } }
        $1 == "total" { c = $11 / ($10 + $11) * 100; if (c > mx) mx = c }
        $1 == "all" { comm = $12; disp = $5 / 1e6 / layers; comb = $7 / 1e6 / layers }
        END { printf "%s %.1f %.1f %.1f %.1f", tps, comm, mx, disp, comb }' "$log"
}

# rounds over all cases (so that load from elsewhere hits every case alike); keep the fastest
declare -A best
for ((i = 0; i < repeat; i++)); do
    for mode in prefill decode; do
        for c in "${cases[@]}"; do
            np=${c%%:*}
            opts=${c#*:}
            opts=${opts//_/ }
            key="$mode|$c"
            line=$(run_case "$mode" "$np" "$opts" "$work/$mode.np$np${opts// /}.$i.log")
            if [ -z "${best[$key]:-}" ] ||
                awk -v a="${line%% *}" -v b="${best[$key]%% *}" 'BEGIN{exit !(a > b)}'; then
                best[$key]=$line
            fi
        done
    done
done
printf "%-7s %-5s %-12s %9s %8s %8s %10s %10s\n" mode ranks layout "tok/s" "comm%" "maxcomm%" \
    "disp_MB/L" "comb_MB/L"
for mode in prefill decode; do
    for c in "${cases[@]}"; do
        np=${c%%:*}
        opts=${c#*:}
        opts=${opts//_/ }
        read -r tps comm mx disp comb <<<"${best[$mode|$c]}"
        printf "%-7s %-5s %-12s %9s %8s %8s %10s %10s\n" "$mode" "$np" "${opts:-ep $np}" "$tps" \
            "$comm" "$mx" "$disp" "$comb"
    done
done
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
