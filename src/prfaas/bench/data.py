"""Workloads for `prfaas bench serve`: random prompts, or a Mooncake-format trace.

Prompts are text built from a fixed word list (about one token per word for BPE tokenizers),
so the client needs no tokenizer. In a trace, each ``hash_id`` names one 512-token block:
equal ids become equal text, so prefix sharing in the trace becomes prefix sharing here.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

TRACE_BLOCK_TOKENS = 512
_WORDS = (
    "time",
    "year",
    "people",
    "way",
    "day",
    "man",
    "thing",
    "woman",
    "life",
    "child",
    "world",
    "school",
    "state",
    "family",
    "student",
    "group",
    "country",
    "problem",
    "hand",
    "part",
    "place",
    "case",
    "week",
    "company",
    "system",
    "program",
    "question",
    "work",
    "government",
    "number",
    "night",
    "point",
    "home",
    "water",
    "room",
    "mother",
    "area",
    "money",
    "story",
    "fact",
    "month",
    "lot",
    "right",
    "study",
    "book",
    "eye",
    "job",
    "word",
    "business",
    "issue",
    "side",
    "kind",
    "head",
    "house",
    "service",
    "friend",
    "father",
    "power",
    "hour",
    "game",
    "line",
    "end",
    "member",
    "law",
    "car",
    "city",
    "community",
    "name",
    "president",
    "team",
    "minute",
    "idea",
)


@dataclass(frozen=True)
class BenchRequest:
    prompt: str
    prompt_len: int  # nominal, in words (the server reports the real token count)
    output_len: int
    arrival_s: float | None = None  # from a trace's timestamps; None: drawn from the rate


def _words(rng: random.Random, n: int) -> list[str]:
    return [rng.choice(_WORDS) for _ in range(n)]


def random_dataset(
    num_prompts: int, input_len: int, output_len: int, range_ratio: float, seed: int
) -> list[BenchRequest]:
    """Lengths uniform in [len * (1 - range_ratio), len * (1 + range_ratio)], as vLLM's."""
    rng = random.Random(seed)

    def draw(n: int) -> int:
        return max(1, rng.randint(int(n * (1 - range_ratio)), int(n * (1 + range_ratio))))

    out = []
    for _ in range(num_prompts):
        n_in, n_out = draw(input_len), draw(output_len)
        out.append(BenchRequest(" ".join(_words(rng, n_in)), n_in, n_out))
    return out


def trace_dataset(
    path: Path, num_prompts: int, length_scale: float = 1.0, time_scale: float = 1.0
) -> list[BenchRequest]:
    """The first ``num_prompts`` records of a Mooncake trace (JSON lines with ``timestamp``
    in ms, ``input_length``, ``output_length``, ``hash_ids``), lengths times ``length_scale``,
    arrival times times ``time_scale``."""
    block_words = max(1, round(TRACE_BLOCK_TOKENS * length_scale))
    blocks: dict[int, list[str]] = {}
    out: list[BenchRequest] = []
    with path.open() as f:
        for line in f:
            if len(out) >= num_prompts:
                break
            if not line.strip():
                continue
            rec = json.loads(line)
            n_in = max(1, round(int(rec["input_length"]) * length_scale))
            n_out = max(1, round(int(rec["output_length"]) * length_scale))
            words: list[str] = []
            for h in rec.get("hash_ids", []):
                if h not in blocks:
                    blocks[h] = _words(random.Random(int(h)), block_words)
                words.extend(blocks[h])
            if len(words) < n_in:
                words.extend(_words(random.Random(len(out) + 1_000_003), n_in - len(words)))
            arrival = float(rec.get("timestamp", 0)) / 1000.0 * time_scale
            out.append(BenchRequest(" ".join(words[:n_in]), n_in, n_out, arrival))
    return out
