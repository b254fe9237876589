#!/usr/bin/env bash
# The GPU run of benchmarks/hetero.py as one command, on a machine with a CUDA GPU and its own
# PyTorch but no package registry (docs/heterogeneous.md). Dependencies prfaas needs and the
# machine lacks travel as wheels in .whl/ (installed to /tmp/site); prfaas itself runs from
# src/ without installing. Writes hetero.txt, hetero.json and the serve logs to $OUT (or .).
# Extra arguments go to benchmarks/hetero.py (e.g. --num-prompts 16 to fit a tighter budget).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-.}
if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export PRFAAS_CACHE_DIR=/tmp/prfaas-cache
{
    nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
    echo "cpu cores: $(nproc)"
    python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available())'
} | tee "$out/hetero.txt"
timeout 570 python3 benchmarks/hetero.py --remote-device cuda --json "$out/hetero.json" \
    --log-dir "$out/logs" "$@" 2>&1 | tee -a "$out/hetero.txt"
