"""Peak host memory while the engine's loader reads a bf16 model on the CPU.

    .venv/bin/python benchmarks/load_memory.py [--layers 12] [--hidden 1024] [--folder DIR]

Writes (once, into ``--folder``, default a temporary folder) a seeded random-weight Llama saved
by transformers in bfloat16 (~220M parameters at the defaults), then loads it with
``prfaas.model.loader.load_model(..., device=cpu, dtype=bfloat16)`` in a fresh subprocess and
reads that process's ``VmRSS`` just before the load and ``VmHWM`` (the resident-set high-water
mark, file-backed pages included) just after it. The figure that matters is the load's
increment over the pre-load RSS, compared with the bytes of one bf16 copy of the weights.

Measured on the 2-core CPU dev machine, defaults (200.8M parameters, 383 MiB in bf16):

| loader | increment over pre-load RSS | × one bf16 copy |
|---|---|---|
| fp32 build, load, then cast; safetensors memory-mapped (before) | 1225 MiB | 3.20 |
| built on meta in bf16, allocated once, tensors read one by one | 455 MiB | 1.19 |

The remainder over 1.0 is the largest tensor held while it is copied (the 62.5 MiB embedding)
and allocator slack.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

VOCAB = 32000


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def write_checkpoint(folder: Path, layers: int, hidden: int) -> None:
    import torch
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers

    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=hidden,
        intermediate_size=hidden * 11 // 4,
        num_hidden_layers=layers,
        num_attention_heads=hidden // 64,
        num_key_value_heads=hidden // 256,
        max_position_embeddings=4096,
        tie_word_embeddings=False,
    )
    model = transformers.LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(folder)
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2} | {f"w{i}": i for i in range(3, VOCAB)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    ).save_pretrained(folder)


def child(folder: Path, cache_dir: Path) -> dict[str, Any]:
    """Runs in the measured subprocess: imports first, then RSS, then the load, then HWM."""
    import torch
    from transformers import AutoConfig, AutoTokenizer

    from prfaas.model.loader import load_model

    # transformers imports its config and tokenizer modules lazily: do that (and read the
    # tokenizer once) before the baseline, so the increment is the weights' alone.
    AutoConfig.from_pretrained(folder, local_files_only=True)
    AutoTokenizer.from_pretrained(folder, local_files_only=True)
    rss_before_kb = _status_kb("VmRSS")
    hwm_before_kb = _status_kb("VmHWM")
    loaded = load_model(str(folder), torch.device("cpu"), torch.bfloat16, cache_dir)
    weights = sum(p.numel() * p.element_size() for p in loaded.model.parameters())
    return {
        "params_m": sum(p.numel() for p in loaded.model.parameters()) / 1e6,
        "weight_mb": weights / 2**20,
        "dtype": str(next(loaded.model.parameters()).dtype),
        "rss_before_load_mb": rss_before_kb / 1024,
        "hwm_before_load_mb": hwm_before_kb / 1024,
        "hwm_after_load_mb": _status_kb("VmHWM") / 1024,
        "rss_after_load_mb": _status_kb("VmRSS") / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--folder", type=Path, help="checkpoint folder (written if empty)")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        with tempfile.TemporaryDirectory() as cache:
            print(json.dumps(child(args.child, Path(cache))))
        return
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.folder or Path(tmp) / "llama-bf16"
        if not (folder / "config.json").is_file():
            folder.mkdir(parents=True, exist_ok=True)
            write_checkpoint(folder, args.layers, args.hidden)
        out = subprocess.run(
            [sys.executable, __file__, "--child", str(folder)],
            check=True,
            capture_output=True,
            text=True,
            timeout=600,
        )
        result = json.loads(out.stdout.strip().splitlines()[-1])
    increment = result["hwm_after_load_mb"] - result["rss_before_load_mb"]
    result["load_increment_mb"] = increment
    result["increment_over_weights"] = increment / result["weight_mb"]
    for key, value in result.items():
        print(f"{key:24s} {value:.2f}" if isinstance(value, float) else f"{key:24s} {value}")


if __name__ == "__main__":
    main()
