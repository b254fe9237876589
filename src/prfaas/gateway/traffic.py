"""Blue-green traffic between the (at most two) versions of one served model name.

Each version has a weight: the percent of new sessions it gets; the weights sum to 100. A
request with a session key (the session header, or the tenant when the rollout sticks by
tenant) uses the version its session first got, as long as that version keeps a weight
above 0: a multi-turn conversation stays on the weights that computed its cached prefix.
A version at weight 0 gets nothing new, pinned sessions included: it drains.

Plain Python: no I/O, no clock; the random source is injectable.
"""

from __future__ import annotations

import random
from collections import OrderedDict
from collections.abc import Mapping

MAX_SESSIONS = 100_000  # pinned sessions remembered per served name (least recent forgotten)


class TrafficSplit:
    def __init__(
        self,
        weights: Mapping[str, float],
        *,
        max_sessions: int = MAX_SESSIONS,
        rng: random.Random | None = None,
    ) -> None:
        if not 1 <= len(weights) <= 2:
            raise ValueError(f"a served model has one or two versions, got {len(weights)}")
        self._weights = dict(weights)
        _check_sum(self._weights)
        self._sessions: OrderedDict[str, str] = OrderedDict()  # session key -> version
        self._max_sessions = max_sessions
        self._rng = rng or random.Random()

    @property
    def weights(self) -> dict[str, float]:
        return dict(self._weights)

    def set_weight(self, version: str, percent: float) -> dict[str, float]:
        """Give ``version`` ``percent`` of new sessions, the other version the rest."""
        if version not in self._weights:
            raise ValueError(f"no version {version!r}; have {sorted(self._weights)}")
        if not 0 <= percent <= 100:
            raise ValueError(f"weight must be within 0..100, got {percent}")
        others = [v for v in self._weights if v != version]
        if not others and percent != 100:
            raise ValueError("a model with one version serves it at 100")
        self._weights[version] = float(percent)
        for other in others:
            self._weights[other] = 100.0 - percent
        return self.weights

    def pick(self, session: str | None = None) -> str:
        """The version a request uses (its session's while that version has weight)."""
        if session is not None:
            pinned = self._sessions.get(session)
            if pinned is not None and self._weights[pinned] > 0:
                self._sessions.move_to_end(session)
                return pinned
        version = self._draw()
        if session is not None:
            self._sessions[session] = version
            self._sessions.move_to_end(session)
            while len(self._sessions) > self._max_sessions:
                self._sessions.popitem(last=False)
        return version

    def _draw(self) -> str:
        x = self._rng.uniform(0.0, 100.0)
        serving = [(v, w) for v, w in self._weights.items() if w > 0]
        for version, weight in serving:
            if x < weight:
                return version
            x -= weight
        return serving[-1][0]  # x == 100.0, or float rounding


def _check_sum(weights: Mapping[str, float]) -> None:
    if any(not 0 <= w <= 100 for w in weights.values()) or abs(sum(weights.values()) - 100) > 1e-6:
        raise ValueError(f"version weights are percents summing to 100, got {dict(weights)}")
