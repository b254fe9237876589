"""The canary's record of every path: its newest verdict and whether it is quarantined.

A path breaks its bound → reported (``/status``, ``prfaas_canary_*`` metrics, a log line)
and, with quarantine on, routed around (``Router.quarantined``) until a later run passes.
A probe that could not run at all (an instance unreachable) is reported but changes no
quarantine: health is the fleet's business, not the canary's."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from prfaas.canary.paths import CanaryPath
from prfaas.canary.verdict import Verdict

logger = logging.getLogger(__name__)


@dataclass
class PathRecord:
    path: CanaryPath
    verdict: Verdict | None = None  # the newest judged run
    error: str | None = None  # the newest probe failure, cleared by a judged run
    checked_s: float = 0.0  # time.time() of the newest run
    runs: int = 0
    failures: int = 0  # judged runs that broke the bound
    quarantined: bool = False


class CanaryBoard:
    def __init__(self, quarantine: bool) -> None:
        self.quarantine = quarantine
        self.records: dict[tuple[str, str], PathRecord] = {}  # by (prefill, decode)
        self.rounds = 0  # completed canary rounds

    def _record(self, path: CanaryPath) -> PathRecord:
        record = self.records.setdefault((path.prefill, path.decode), PathRecord(path))
        record.path = path  # the link or codec may have changed since
        return record

    def judged(self, path: CanaryPath, verdict: Verdict, now_s: float) -> None:
        record = self._record(path)
        record.verdict, record.error, record.checked_s = verdict, None, now_s
        record.runs += 1
        if verdict.ok:
            if record.quarantined:
                logger.warning("canary: path %s passes again; back in service", path.name)
            record.quarantined = False
            return
        record.failures += 1
        record.quarantined = self.quarantine
        logger.error(
            "canary: path %s broke its bound: %s%s",
            path.name,
            verdict.reason,
            " (quarantined)" if record.quarantined else "",
        )

    def failed(self, path: CanaryPath, error: str, now_s: float) -> None:
        record = self._record(path)
        record.error, record.checked_s = error, now_s
        logger.warning("canary: could not probe path %s: %s", path.name, error)

    def is_quarantined(self, prefill: str, decode: str) -> bool:
        """The router's question: may a request use ``prefill`` → ``decode``?"""
        record = self.records.get((prefill, decode))
        return record is not None and record.quarantined

    def report(self) -> list[dict[str, object]]:
        """Every path's state, for ``/status`` and ``prfaas canary``."""
        rows: list[dict[str, object]] = []
        for r in sorted(self.records.values(), key=lambda r: r.path.name):
            path, v = r.path, r.verdict
            rows.append(
                {
                    "path": path.name,
                    "prefill": path.prefill,
                    "decode": path.decode,
                    "link": path.link,
                    "codec": path.codec,
                    "ok": v is not None and v.ok and r.error is None,
                    "reason": r.error or (v.reason if v is not None else "not run yet"),
                    "first_divergence": v.first_divergence if v is not None else None,
                    "max_abs_dlogprob": v.max_abs_dlogprob if v is not None else None,
                    "fake_disaggregation": v.fake_disaggregation if v is not None else False,
                    "quarantined": r.quarantined,
                    "runs": r.runs,
                    "failures": r.failures,
                    "checked_s": r.checked_s,
                }
            )
        return rows
