#!/usr/bin/env bash
# The engine on a GPU as one command (issue: the engine, ready for a GPU): the oracle tests
# (our models against transformers, logits and greedy tokens), the hand-off tests (KV exported
# by one engine, decoded by another) and benchmarks/engine.py against transformers, with the
# engine on the GPU; on a machine with a CUDA GPU and its own PyTorch but no package registry
# (the wheels it may need: gpu_env.sh; pytest among them where the machine has none).
# Writes engine_gpu.txt, engine_gpu.json (float32) and engine_gpu_bfloat16.json to $OUT (or .).
# Budget: under 8 minutes with setup (tests ~2, each benchmark ~1 on an H100-class card).
# DEVICE=cpu runs the same steps on a CPU (how the script itself is checked without a GPU;
# with NUM_REQUESTS=4 DTYPES=float32 BENCH_TIMEOUT_S=600 there).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-.}
device=${DEVICE:-cuda}
source benchmarks/gpu_env.sh
log="$out/engine_gpu.txt"
gpu_banner | tee "$log"
if [ "$device" != cpu ] && ! python3 -c 'import sys, torch; sys.exit(not torch.cuda.is_available())'; then
    echo "no CUDA device: nothing measured (DEVICE=cpu runs the steps on the CPU)" | tee -a "$log"
    exit 1
fi
# The tests' engines on the device (tests/engine/helpers.py); their oracle, transformers,
# stays on the host, and they compare there.
status=0
PRFAAS_TEST_DEVICE=$device timeout 300 python3 -m pytest -q -p no:cacheprovider \
    -o addopts="-ra --import-mode=importlib" \
    tests/engine/test_oracle.py tests/engine/test_hybrid_oracle.py \
    tests/engine/test_handoff.py tests/engine/test_hybrid_handoff.py 2>&1 | tee -a "$log" \
    || status=1
for dtype in ${DTYPES:-float32 bfloat16}; do
    json="$out/engine_gpu$([ $dtype = float32 ] || echo _$dtype).json"
    if timeout "${BENCH_TIMEOUT_S:-150}" python3 benchmarks/engine.py --device "$device" \
        --dtype $dtype --peers transformers --kv-cache-gb 4 \
        --num-requests "${NUM_REQUESTS:-64}" --json > "$json" 2>> "$log"; then
        echo "== $dtype: $(python3 -c 'import json, sys; r = json.load(open(sys.argv[1]));
print(", ".join(f"{k} {v:.3g}" for k, v in r.items()))' "$json")" | tee -a "$log"
    else
        echo "== $dtype: benchmarks/engine.py failed or ran out of time (exit $?)" | tee -a "$log"
        status=1
    fi
done
exit $status
