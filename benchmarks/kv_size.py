"""KV size of a request, dense versus hybrid, and the KDA prefill forms' speed.

    .venv/bin/python benchmarks/kv_size.py [--check-tokens 256 1024 2048] [--threads N]

1. S_kv(l) at 1K, 8K, 32K and 128K tokens from ``kvcache.spec.kv_bytes`` (the function the
   planner and the engine share) for Kimi Linear 48B (hybrid, 20 KDA : 7 MLA), the same model
   with MLA in every layer, and Llama 3.1 70B (dense GQA), with the hybrid/dense ratios.
2. The check against real payloads: mini checkpoints with the real per-layer KV shapes of
   those models (MLA 512 + 64 latent, KDA 32 x 128 heads, GQA 8 x 128) but a small hidden
   size and few layers, saved with transformers and run by the engine in bfloat16. Their
   exported payload bytes must equal ``kv_bytes`` of their config at every length, and their
   layer specs equal the full models' (so the table's per-layer terms are the engine's).
3. KDA prefill tokens/s, chunked (WY) form versus the token-by-token recurrence (32 x 128).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from prfaas.config import EngineConfig
from prfaas.engine.engine import Engine
from prfaas.engine.sampling_params import SamplingParams
from prfaas.kvcache.spec import LayerSpec, kv_bytes, specs_from_hf_config
from prfaas.model.kda import kda_chunked, kda_recurrent
from prfaas.planner.presets import PRESETS

MIB = 2**20
LENGTHS = {"1K": 1024, "8K": 8192, "32K": 32768, "128K": 131072}


def _all_mla(config: dict[str, Any]) -> dict[str, Any]:
    """The same model with MLA in every layer (no linear_attn_config: all full attention)."""
    return {k: v for k, v in config.items() if k != "linear_attn_config"}


def size_table() -> dict[str, list[LayerSpec]]:
    hybrid = PRESETS["kimi-linear-48b"].config
    models = {
        "kimi-linear-48b (hybrid)": specs_from_hf_config(hybrid),
        "kimi-linear-48b all-MLA": specs_from_hf_config(_all_mla(hybrid)),
        "llama-3.1-70b (dense GQA)": specs_from_hf_config(PRESETS["llama-3.1-70b"].config),
    }
    print("S_kv per request (MiB), bf16 KV, float32 KDA states")
    print(f"{'model':<28}" + "".join(f"{name:>10}" for name in LENGTHS))
    for name, specs in models.items():
        row = "".join(f"{kv_bytes(specs, n) / MIB:>10.1f}" for n in LENGTHS.values())
        print(f"{name:<28}{row}")
    hyb = models["kimi-linear-48b (hybrid)"]
    for dense in list(models)[1:]:
        ratios = "".join(
            f"{kv_bytes(hyb, n) / kv_bytes(models[dense], n):>10.3f}" for n in LENGTHS.values()
        )
        print(f"{'hybrid / ' + dense.removesuffix(' (dense GQA)'):<28}{ratios}")
    return models


def _save_mini(folder: Path, kind: str) -> Path:
    import transformers

    torch.manual_seed(0)
    common = {"vocab_size": 512, "hidden_size": 256, "intermediate_size": 256}
    if kind == "hybrid":  # Kimi Linear 48B layer shapes, 3 KDA : 1 MLA, dense MLPs
        cfg = transformers.KimiLinearConfig(
            **common,
            num_hidden_layers=4,
            layer_types=["linear_attention"] * 3 + ["full_attention"],
            first_k_dense_replace=4,
            num_attention_heads=32,
            num_key_value_heads=32,
            kv_lora_rank=512,
            qk_rope_head_dim=64,
            qk_nope_head_dim=128,
            v_head_dim=128,
            linear_attn_config={"head_dim": 128, "num_heads": 32, "short_conv_kernel_size": 4},
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=0,
        )
        model = transformers.KimiLinearForCausalLM(cfg)
    else:  # Llama 3.1 70B layer shapes: 64 query heads, 8 KV heads of 128
        cfg = transformers.LlamaConfig(
            **common,
            num_hidden_layers=2,
            num_attention_heads=64,
            num_key_value_heads=8,
            head_dim=128,
            max_position_embeddings=8192,
        )
        model = transformers.LlamaForCausalLM(cfg)
    model.save_pretrained(folder)
    _save_tokenizer(folder, 512)
    return folder


def _save_tokenizer(folder: Path, vocab_size: int) -> None:
    """A word-level tokenizer over ids 0..vocab_size-1, so the mini models load like real ones."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2} | {f"w{i}": i for i in range(3, vocab_size)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )
    fast.save_pretrained(folder)


def check_payloads(full: dict[str, list[LayerSpec]], lengths: list[int]) -> None:
    params = SamplingParams(max_tokens=1, temperature=0.0, ignore_eos=True)
    full_specs = {
        "hybrid": full["kimi-linear-48b (hybrid)"],
        "dense": full["llama-3.1-70b (dense GQA)"],
    }
    print("\nexported payloads of mini checkpoints (real per-layer shapes) vs kv_bytes")
    print(f"{'model':<8}{'tokens':>8}{'payload MiB':>14}{'kv_bytes MiB':>14}")
    with tempfile.TemporaryDirectory() as tmp:
        for kind in ("hybrid", "dense"):
            folder = _save_mini(Path(tmp) / kind, kind)
            config = json.loads((folder / "config.json").read_text())
            specs = specs_from_hf_config(config, kv_dtype_bytes=2)
            assert set(specs) <= set(full_specs[kind]), f"{kind}: layer specs differ"
            engine = Engine(
                EngineConfig(
                    model=str(folder),
                    cache_dir=Path(tmp) / "cache",
                    dtype="bfloat16",
                    device="cpu",
                    num_kv_blocks=max(lengths) // 16 + 2,
                    max_num_batched_tokens=max(lengths),
                    max_model_len=max(lengths) + 1,
                )
            )
            for n in lengths:
                req = engine.add_request([3 + i % 500 for i in range(n)], params, prefill_only=True)
                while req.status.value != "sending_kv":
                    engine.step()
                payload = engine.export_kv(req.request_id)
                engine.release(req.request_id)
                expected = kv_bytes(specs, n)
                assert payload.kv_bytes == expected, (kind, n, payload.kv_bytes, expected)
                print(f"{kind:<8}{n:>8}{payload.kv_bytes / MIB:>14.3f}{expected / MIB:>14.3f}")
    print("all payloads equal kv_bytes; mini layer specs equal the full models'")


def kda_speed(num_tokens: int, recurrent_tokens: int) -> None:
    gen = torch.Generator().manual_seed(0)
    shape = (num_tokens, 32, 128)
    q, k, v = (torch.randn(shape, generator=gen) for _ in range(3))
    g = -torch.rand(shape, generator=gen)
    beta = torch.rand(num_tokens, 32, generator=gen)
    with torch.inference_mode():
        start = time.perf_counter()
        kda_chunked(q, k, v, g, beta)
        chunked = num_tokens / (time.perf_counter() - start)
        r = slice(0, recurrent_tokens)
        start = time.perf_counter()
        kda_recurrent(q[r], k[r], v[r], g[r], beta[r])
        recurrent = recurrent_tokens / (time.perf_counter() - start)
    print(f"\nKDA prefill, 32 heads x 128, {num_tokens} tokens, {torch.get_num_threads()} threads")
    print(
        f"chunked {chunked:,.0f} tok/s   recurrence {recurrent:,.0f} tok/s   "
        f"speedup {chunked / recurrent:.1f}x"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check-tokens", type=int, nargs="+", default=[256, 1024, 2048])
    parser.add_argument("--kda-tokens", type=int, default=4096)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    full = size_table()
    check_payloads(full, args.check_tokens)
    kda_speed(args.kda_tokens, recurrent_tokens=256)


if __name__ == "__main__":
    main()
