"""What the quantized codecs change on the embedded default (SmolLM2-135M, fp32): the
canary's |Δ logprob| and first divergence per path, with the remote link's codec raw, int8
and fp8, each in its own `prfaas serve`, on a larger prompt set than the canary's default.
The quantized codecs' default bounds (``canary/verdict.py``) are set against these figures.

    .venv/bin/python benchmarks/canary_bounds.py [--max-tokens 32]
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
import tempfile
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `benchmarks.` as a script too

from benchmarks.serve_process import start_serve, stop_serve

from prfaas.canary.config import DEFAULT_PROMPTS
from prfaas.deploy.config import default_config
from prfaas.deploy.launcher import free_port
from prfaas.messages import TOKEN_HEADER

EXTRA_PROMPTS = (
    "List three prime numbers and explain why each is prime.",
    "Translate to French: the weather is nice today and we are going to the park.",
    "def fibonacci(n):\n    # return the n-th Fibonacci number\n",
    "Once upon a time, in a village at the edge of a great forest, there lived",
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--codecs", default="raw,int8,fp8")
    parser.add_argument("--log-dir", type=Path, default=None, help="keep each serve's logs here")
    args = parser.parse_args()
    token = secrets.token_hex(8)
    os.environ["PRFAAS_CLUSTER_TOKEN"] = token
    rows = []
    with tempfile.TemporaryDirectory(prefix="canary-bounds-") as tmp:
        for codec in args.codecs.split(","):
            cfg = default_config().model_dump(mode="json", exclude_none=True)
            cfg["port"] = port = free_port()
            cfg["links"][0]["codec"] = codec
            # The canary forces each path: a pinned t skips start-up profiling (and its memory).
            cfg["policy"]["threshold_tokens"] = 1024
            cfg["canary"] = {
                "enabled": False,
                "max_tokens": args.max_tokens,
                "prompts": [*DEFAULT_PROMPTS, *EXTRA_PROMPTS],
            }
            logs = (args.log_dir or Path(tmp)) / codec
            logs.mkdir(parents=True, exist_ok=True)
            proc = start_serve(codec, cfg, logs, 600.0, "--log-dir", str(logs))
            try:
                r = httpx.post(
                    f"http://127.0.0.1:{port}/admin/canary",
                    headers={TOKEN_HEADER: token},
                    timeout=1800.0,
                )
                r.raise_for_status()
            finally:
                stop_serve(proc)
            for p in r.json()["paths"]:
                if "reference" not in p["path"]:
                    rows.append((codec, p))
    print(f"{'codec':<6} {'path':<44} {'max |Δ logprob|':>16} {'first divergence':>17}  ok")
    for codec, p in rows:
        first = "-" if p["first_divergence"] is None else str(p["first_divergence"])
        gap = "-" if p["max_abs_dlogprob"] is None else f"{p['max_abs_dlogprob']:.3e}"
        print(f"{codec:<6} {p['path']:<44} {gap:>16} {first:>17}  {p['ok']} {p['reason']}")


if __name__ == "__main__":
    main()
