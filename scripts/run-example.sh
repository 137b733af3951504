#!/usr/bin/env bash
# run-example.sh - build, then generate 16 tokens from the bundled tiny Qwen3-MoE model
# in one process (no mpirun).
set -euo pipefail
cd "$(dirname "$0")/.."

# Installs the Debian packages the build needs (a no-op when they are there).
[ "${MC_SKIP_SETUP:-0}" = 1 ] || scripts/setup.sh

jobs=$(nproc)
set -x
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo
cmake --build build -j"$jobs"
build/coordinator/moecluster generate --model tests/fixtures/models/qwen3-moe-tiny \
    --prompt-ids 1,2,3,4 -n 16
