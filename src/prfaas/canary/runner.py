"""One canary round: every prompt through every path, each compared with the reference
path of its decode instance (that instance prefilling and decoding alone)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from prfaas.canary.board import CanaryBoard
from prfaas.canary.config import CanaryConfig
from prfaas.canary.paths import CanaryPath
from prfaas.canary.verdict import PathOutput, Verdict, bound_for, judge

logger = logging.getLogger(__name__)

# Runs ``prompt`` for ``max_tokens`` on exactly ``path`` (fresh caches: a salt of its own),
# greedily or, with a seed, sampled at temperature 1 under that seed; raises on any failure.
Probe = Callable[[CanaryPath, list[int], int, int | None], Awaitable[PathOutput]]


class Canary:
    def __init__(
        self,
        config: CanaryConfig,
        paths: Callable[[], list[CanaryPath]],
        probe: Probe,
        prompts: list[list[int]],
    ) -> None:
        self.config = config
        self.board = CanaryBoard(config.quarantine)
        self.paths, self.probe, self.prompts = paths, probe, prompts
        self.bounds = config.codec_bounds()
        self._lock = asyncio.Lock()  # one round at a time (periodic or on demand)
        self.after_round: list[Callable[[], None]] = []  # e.g. metrics refresh

    async def run(self) -> None:
        """The periodic rounds, for the gateway's lifespan (only when enabled)."""
        if not self.config.enabled:
            return
        while True:
            await asyncio.sleep(self.config.period_s)
            try:
                await self.run_round()
            except Exception:
                logger.exception("canary round failed")

    async def run_round(self) -> None:
        async with self._lock:
            paths = self.paths()
            verdicts: dict[CanaryPath, list[Verdict]] = {}
            failed: set[CanaryPath] = set()
            seeds = [None] if self.config.seed is None else [None, self.config.seed]
            for prompt, seed in ((p, seed) for p in self.prompts for seed in seeds):
                references: dict[str, PathOutput] = {}
                for path in paths:  # each decode instance's reference path comes first
                    try:
                        output = await asyncio.wait_for(
                            self.probe(path, prompt, self.config.max_tokens, seed),
                            self.config.probe_timeout_s,
                        )
                    except Exception as exc:  # reported on the board, never raised
                        failed.add(path)
                        self.board.failed(path, f"{type(exc).__name__}: {exc}"[:300], time.time())
                        continue
                    if path.reference:
                        references[path.decode] = output
                        continue
                    reference = references.get(path.decode)
                    if reference is None:
                        failed.add(path)
                        self.board.failed(path, "its reference path did not run", time.time())
                        continue
                    bound = bound_for(path.codec, self.bounds)
                    verdict = judge(reference, output, shipped=True, bound=bound)
                    verdicts.setdefault(path, []).append(verdict)
            now = time.time()
            for path in paths:  # a reference path is the yardstick: it passes if it ran
                if path.reference and path not in failed:
                    self.board.judged(path, Verdict(True, "", None, 0.0, False), now)
            for path, found in verdicts.items():
                # The worst of the round: the first that broke the bound, else the last.
                worst = next((v for v in found if not v.ok), found[-1])
                self.board.judged(path, worst, now)
            self.board.rounds += 1
            for hook in self.after_round:
                hook()
