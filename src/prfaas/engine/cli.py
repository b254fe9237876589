"""`prfaas generate`: offline generation with the engine (the demo before `prfaas serve`)."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from prfaas.cli import Commands


def register(commands: Commands) -> None:
    p = commands.top.add_parser("generate", help="generate text offline with one engine")
    p.add_argument("prompt", nargs="*", help="prompt text (raw completion unless --chat)")
    p.add_argument("--chat", metavar="MESSAGE", help="a user message, formatted by chat template")
    p.add_argument("--model", default=None, help="HF folder or .gguf file (default: embedded)")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--dtype", default="auto", help="auto, float32, bfloat16 or float16")
    p.set_defaults(handler=_generate)


def _generate(args: argparse.Namespace) -> int:
    from prfaas.engine.llm import LLM
    from prfaas.engine.sampling_params import SamplingParams

    if not args.chat and not args.prompt:
        print("prfaas generate: give a prompt or --chat MESSAGE", file=sys.stderr)
        return 2
    llm = LLM(model=args.model, device=args.device, dtype=args.dtype, show_progress=True)
    params = SamplingParams(
        max_tokens=args.max_tokens, temperature=args.temperature, seed=args.seed
    )
    if args.chat:
        print(f"user: {args.chat}")
        outputs = llm.chat([{"role": "user", "content": args.chat}], params)
        print(f"assistant: {outputs[0].outputs[0].text.strip()}")
    else:
        outputs = llm.generate([" ".join(args.prompt)], params)
        print(outputs[0].outputs[0].text)
    return 0
