"""The paths a request can take, as the canary probes them."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from prfaas.messages import WorkerInfo


@dataclass(frozen=True)
class CanaryPath:
    """One way through the deployment: ``prefill`` computes the prompt and ships its KV over
    ``link`` with ``codec`` to ``decode``. The reference path has ``prefill == decode``: one
    instance prefills and decodes, nothing crosses a link."""

    prefill: str
    decode: str
    link: str = "local"
    codec: str = "raw"

    @property
    def reference(self) -> bool:
        return self.prefill == self.decode

    @property
    def name(self) -> str:
        if self.reference:
            return f"{self.decode} (reference)"
        return f"{self.prefill} -[{self.link}, {self.codec}]-> {self.decode}"


# (the prefill instance's cluster, the decode instance) -> (link name, codec)
LinkOf = Callable[[str, WorkerInfo], tuple[str, str]]


def enumerate_paths(workers: Iterable[WorkerInfo], link_of: LinkOf) -> list[CanaryPath]:
    """Every (prefill instance, decode instance) pair, each decode instance's reference path
    first. Only PD clusters decode; every prefill instance, local or remote, can feed them."""
    workers = sorted(workers, key=lambda w: w.name)
    paths: list[CanaryPath] = []
    for decode in (w for w in workers if w.role == "decode"):
        paths.append(CanaryPath(decode.name, decode.name))
        for prefill in (w for w in workers if w.role == "prefill"):
            link, codec = link_of(prefill.cluster, decode)
            paths.append(CanaryPath(prefill.name, decode.name, link, codec))
    return paths
