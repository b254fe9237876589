"""A multi-turn conversation workload: sessions whose context grows turn by turn.

A session starts (Poisson, ``session_rate_rps``) with one of ``system_prompts`` shared system
prompts and a first user message; every later turn arrives a think time after the previous
one and its prompt is the previous prompt + the previous answer + a new user message, so
its leading blocks are exactly the previous prompt's full blocks. Lengths are log-normal
with the given means (``length_sigma`` shared), turns per session geometric with mean
``mean_turns`` (at most ``max_turns``; a session also ends before its context would pass
``max_context_tokens``).

Content is modelled as segments (system prompt k, user message, answer), each a run of
distinct tokens; a block's hash id names its parent's id and the segment pieces it covers,
so equal ids mean equal prefixes, as in a Mooncake trace (``planner/trace.py``). The
defaults resemble chat traffic: about 12,000 requests an hour, mean prompt about 12K
tokens, about 37% of prompt tokens reusable with an unbounded shared cache
(``docs/simulator.md`` has the measured figures). Seeded and deterministic.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import dataclass

from prfaas.sim.request import SimRequest

Segment = tuple[int, int]  # (segment id, num tokens); ids < system_prompts are system prompts


@dataclass(frozen=True)
class ConversationTurn:
    session: int
    turn: int
    arrival_s: float
    segments: tuple[Segment, ...]  # the prompt, in order
    output_tokens: int

    @property
    def prompt_len(self) -> int:
        return sum(n for _, n in self.segments)


@dataclass(frozen=True)
class ConversationWorkload:
    duration_s: float = 3600.0
    session_rate_rps: float = 2.4  # sessions starting per second
    mean_turns: float = 1.4
    max_turns: int = 32
    system_prompts: int = 8
    system_tokens: int = 1536
    first_user_tokens: float = 8500.0  # mean of the first user message (often a document)
    user_tokens: float = 6000.0  # mean of a later user message
    output_tokens: float = 400.0  # mean answer length
    length_sigma: float = 1.0
    min_tokens: int = 16
    max_context_tokens: int = 131072
    think_s: float = 60.0  # mean of the exponential gap between turns, after min_gap_s
    min_gap_s: float = 10.0
    block_tokens: int = 512
    seed: int = 0

    def __post_init__(self) -> None:
        if self.session_rate_rps <= 0 or self.duration_s <= 0 or self.mean_turns < 1:
            raise ValueError("need session_rate_rps > 0, duration_s > 0, mean_turns >= 1")
        if self.system_prompts < 1 or self.block_tokens < 1 or self.max_turns < 1:
            raise ValueError("need system_prompts, block_tokens and max_turns >= 1")
        if self.max_context_tokens <= self.system_tokens + self.min_tokens:
            raise ValueError("max_context_tokens leaves no room after the system prompt")

    def turns(self) -> list[ConversationTurn]:
        """Every turn arriving before ``duration_s``, in arrival order."""
        rng = random.Random(self.seed)
        out: list[ConversationTurn] = []
        next_segment = self.system_prompts
        start_s, session = 0.0, 0
        while True:
            start_s += rng.expovariate(self.session_rate_rps)
            if start_s >= self.duration_s:
                break
            num_turns = self._num_turns(rng)
            context: list[Segment] = [(rng.randrange(self.system_prompts), self.system_tokens)]
            arrival_s = start_s
            for turn in range(num_turns):
                mean = self.first_user_tokens if turn == 0 else self.user_tokens
                user = (next_segment, self._length(rng, mean))
                if sum(n for _, n in context) + user[1] > self.max_context_tokens:
                    break
                context.append(user)
                answer = self._length(rng, self.output_tokens)
                out.append(ConversationTurn(session, turn, arrival_s, tuple(context), answer))
                context.append((next_segment + 1, answer))
                next_segment += 2
                arrival_s += self.min_gap_s + rng.expovariate(1.0 / self.think_s)
                if arrival_s >= self.duration_s:
                    break
            session += 1
        out.sort(key=lambda t: (t.arrival_s, t.session))
        return out

    def __iter__(self) -> Iterator[SimRequest]:
        names = BlockNames(self.block_tokens)
        for k, t in enumerate(self.turns()):
            yield SimRequest(
                f"req-{k}", t.arrival_s, t.prompt_len, t.output_tokens, names.hash_ids(t.segments)
            )

    def _num_turns(self, rng: random.Random) -> int:
        if self.mean_turns <= 1:
            return 1
        p_end = 1.0 / self.mean_turns  # geometric on {1, 2, ...} with this mean
        turns = 1
        while turns < self.max_turns and rng.random() >= p_end:
            turns += 1
        return turns

    def _length(self, rng: random.Random, mean: float) -> int:
        mu = math.log(mean) - self.length_sigma**2 / 2  # log-normal with this mean
        n = int(rng.lognormvariate(mu, self.length_sigma))
        return min(max(n, self.min_tokens), self.max_context_tokens // 2)


class BlockNames:
    """Chained block hash ids for segment sequences: one id per ``block_tokens`` tokens
    (the last block may be partial), equal for equal (parent, contents)."""

    def __init__(self, block_tokens: int) -> None:
        self.block_tokens = block_tokens
        self._ids: dict[tuple[int, tuple[tuple[int, int, int], ...]], int] = {}

    def hash_ids(self, segments: tuple[Segment, ...]) -> tuple[int, ...]:
        ids: list[int] = []
        parent, pieces, fill = -1, [], 0
        for segment, num_tokens in segments:
            offset = 0
            while offset < num_tokens:
                take = min(num_tokens - offset, self.block_tokens - fill)
                pieces.append((segment, offset, offset + take))
                offset, fill = offset + take, fill + take
                if fill == self.block_tokens:
                    parent = self._id(parent, pieces)
                    ids.append(parent)
                    pieces, fill = [], 0
        if pieces:
            ids.append(self._id(parent, pieces))
        return tuple(ids)

    def _id(self, parent: int, pieces: list[tuple[int, int, int]]) -> int:
        key = (parent, tuple(pieces))
        found = self._ids.get(key)
        if found is None:
            found = self._ids[key] = len(self._ids)
        return found
