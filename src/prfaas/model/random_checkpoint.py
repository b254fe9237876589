"""A random-weight Llama checkpoint written with transformers, for throughput benchmarks.

Weights do not matter when only time is measured, so a machine without the embedded model
or a registry can make its own: ``write_random_llama(folder, LLAMA_SIZES["1b"])``. The
tokenizer is a word-level one over ``vocab_size`` entries (``<unk>``, ``<s>``, ``</s>``,
the caller's words, e.g. those the benchmark's prompts are made of, then fillers ``w<i>``):
one such word is one token, and every id the model can sample decodes to visible text.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

SPECIALS = ("<unk>", "<s>", "</s>")
DONE_FILE = "random_llama.json"  # written last: a folder without it is incomplete


@dataclass(frozen=True)
class LlamaSize:
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    vocab_size: int
    max_position_embeddings: int

    def num_params(self) -> int:
        head_dim = self.hidden_size // self.num_heads
        attn = self.hidden_size * head_dim * (2 * self.num_heads + 2 * self.num_kv_heads)
        mlp = 3 * self.hidden_size * self.intermediate_size
        norms = 2 * self.hidden_size
        embed = 2 * self.vocab_size * self.hidden_size  # untied input and output
        return self.num_layers * (attn + mlp + norms) + embed + self.hidden_size


LLAMA_SIZES = {
    # Loads in well under a second; the CPU tests' size.
    "tiny": LlamaSize(64, 2, 4, 2, 128, 512, 2048),
    # About 1.1e9 parameters (Llama-3.2-1B's shape with a 32k vocabulary): the GPU run's size.
    "1b": LlamaSize(2048, 16, 32, 8, 8192, 32000, 4096),
}


def _tokenizer(vocab_size: int, words: Sequence[str]):  # type: ignore[no-untyped-def]
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    entries = [*SPECIALS, *(w for w in dict.fromkeys(words) if w not in SPECIALS)]
    if len(entries) > vocab_size:
        raise ValueError(f"vocab_size {vocab_size} < the {len(entries)} words needed")
    entries += [f"w{i}" for i in range(vocab_size - len(entries))]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(entries)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    # Word-level decoding joins tokens with a space; an incremental detokenizer then sees
    # each new token as " word".
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )


def write_random_llama(
    folder: Path, size: LlamaSize, words: Sequence[str] = (), seed: int = 0
) -> Path:
    """Write config.json, safetensors weights (float32 for tiny, bfloat16 otherwise) and a
    tokenizer knowing ``words`` (whitespace-free) to ``folder``; reuse a complete folder
    written with the same arguments."""
    if any(not w or w.split() != [w] for w in words):
        raise ValueError("words must be non-empty and without whitespace")
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    stamp = {"size": asdict(size), "seed": seed, "words": list(words)}
    done = folder / DONE_FILE
    if done.is_file() and json.loads(done.read_text()) == stamp:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    config = LlamaConfig(
        hidden_size=size.hidden_size,
        num_hidden_layers=size.num_layers,
        num_attention_heads=size.num_heads,
        num_key_value_heads=size.num_kv_heads,
        intermediate_size=size.intermediate_size,
        vocab_size=size.vocab_size,
        max_position_embeddings=size.max_position_embeddings,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
    )
    dtype = torch.float32 if size.hidden_size < 512 else torch.bfloat16
    torch.manual_seed(seed)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = LlamaForCausalLM(config)
        torch.nn.Module.to(model, dtype=dtype)
    model.save_pretrained(folder, safe_serialization=True)
    _tokenizer(size.vocab_size, words).save_pretrained(folder)
    done.write_text(json.dumps(stamp))
    return folder
