"""Does the engine's resident memory grow with the number of distinct batch shapes its
oneDNN matmuls have seen? oneDNN builds (JIT-compiles) a primitive per shape and keeps the
last ``ONEDNN_PRIMITIVE_CACHE_CAPACITY`` of them (1024 by default); a serving engine's steps
have ever new row counts (prefill chunks plus decode rows), so that cache fills slowly.

Each run is a fresh process: SmolLM2's six matmul kinds (qkv, o, gate with SiLU, up with
the product, down with the residual add, logits) through ``prfaas.model.layers`` on packed
weights, at row counts 1, 2, ... ``ROWS``, each once, then the same row counts again;
RssAnon after every 128 new shapes and after the repeat.

    .venv/bin/python dev/onednn_cache_memory.py [rows]         # default cache, then 64
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

HIDDEN, INTER, KV, VOCAB = 576, 1536, 192, 49152


def rss_anon_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no RssAnon")


def child(rows: int) -> None:
    import torch

    from prfaas.model.layers import GateUpLinear, Linear

    torch.set_num_threads(2)
    torch.manual_seed(0)
    with torch.no_grad():
        qkv, o = Linear(HIDDEN, HIDDEN + 2 * KV, bias=False), Linear(HIDDEN, HIDDEN, bias=False)
        gate_up, down = (
            GateUpLinear(HIDDEN, 2 * INTER, bias=False),
            Linear(INTER, HIDDEN, bias=False),
        )
        logits = Linear(HIDDEN, VOCAB, bias=False)
        x_all = torch.randn(rows, HIDDEN)

        def step(m: int) -> None:
            x = x_all[:m]
            qkv(x)
            o.forward_add(x, x)
            down.forward_add(gate_up(x), x)
            logits(x[-min(m, 64) :])

        step(1)
        print(f"after 1 shape: {rss_anon_mib():.0f} MiB", flush=True)
        for m in range(2, rows + 1):
            step(m)
            if m % 128 == 0:
                print(f"after {m} shapes: {rss_anon_mib():.0f} MiB", flush=True)
        for m in range(1, rows + 1):
            step(m)
        print(f"the same {rows} shapes again: {rss_anon_mib():.0f} MiB", flush=True)


def main() -> None:
    if sys.argv[1:2] == ["child"]:
        child(int(sys.argv[2]))
        return
    rows = int(sys.argv[1]) if len(sys.argv) > 1 else 1024
    for capacity in (None, "64"):
        env = dict(os.environ)
        if capacity is not None:
            env["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] = capacity
        print(f"ONEDNN_PRIMITIVE_CACHE_CAPACITY={capacity or 'unset (1024)'}", flush=True)
        subprocess.run([sys.executable, __file__, "child", str(rows)], env=env, check=True)


if __name__ == "__main__":
    main()
