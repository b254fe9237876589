#!/usr/bin/env bash
# The GPU run of benchmarks/hetero.py as one command, on a machine with a CUDA GPU and its own
# PyTorch but no package registry (docs/heterogeneous.md; the wheels it may need: gpu_env.sh).
# Writes hetero.txt, hetero.json and the serve logs to $OUT (or .).
# Extra arguments go to benchmarks/hetero.py (e.g. --num-prompts 16 to fit a tighter budget).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-.}
source benchmarks/gpu_env.sh
gpu_banner | tee "$out/hetero.txt"
timeout 570 python3 benchmarks/hetero.py --remote-device cuda --json "$out/hetero.json" \
    --log-dir "$out/logs" "$@" 2>&1 | tee -a "$out/hetero.txt"
