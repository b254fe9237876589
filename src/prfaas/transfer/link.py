"""A link as the sender sees it: its config, its pacer and its monitor, shared by transfers."""

from __future__ import annotations

from prfaas.transfer.config import LinkConfig
from prfaas.transfer.monitor import LinkMonitor, LinkStats
from prfaas.transfer.pacing import Pacer


class Link:
    def __init__(self, config: LinkConfig) -> None:
        self.config = config
        self.pacer = Pacer(config.rate_gbps)
        self.monitor = LinkMonitor(config.name, config.warn_fraction)

    @property
    def rate_gbps(self) -> float | None:
        return self.pacer.rate_gbps

    def set_rate_gbps(self, rate_gbps: float | None) -> None:
        """Change the egress cap now; transfers in flight follow within one grant."""
        self.pacer.set_rate_gbps(rate_gbps)

    def stats(self) -> LinkStats:
        return self.monitor.stats(self.pacer.rate_gbps)
