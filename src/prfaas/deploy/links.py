"""Where KV from one cluster reaches a decode instance: the link routes the deployment set up
(emulator relays, WAN addresses, codec, TLS: ``kv_routes``), turned into a ``KvTarget`` per
transfer. The gateway's dispatch calls ``kv_target`` through ``BackendSettings.kv_target``."""

from __future__ import annotations

from dataclasses import dataclass, field

from prfaas.deploy.launcher import WorkerSpawn
from prfaas.deploy.specs import ClusterSpec, LinkSpec
from prfaas.messages import KvTarget, WorkerInfo
from prfaas.transfer.emulator import EmulatorConfig, LinkEmulator


@dataclass(frozen=True)
class LinkRoute:
    """How KV from one cluster reaches workers of another (or of its own: the ``local``
    route, one per cluster): through ``via[decode_name]``
    (a link emulator or a WAN address) when set, else straight to the worker's receiver."""

    name: str
    codec: str = "raw"
    connections: int = 1
    tls: bool = False
    via: dict[str, tuple[str, int]] = field(default_factory=dict)


Routes = dict[tuple[str, str], LinkRoute]  # (source cluster, destination cluster) -> route


def kv_target(links: Routes, source_cluster: str, receiver: WorkerInfo) -> KvTarget:
    """Where KV from ``source_cluster`` reaches ``receiver``'s KV receiver: over the link
    between their clusters (through its emulator or WAN address when one is set), else the
    source cluster's local route; TLS identity the receiver's cluster. A PrfaaS cluster that
    serves several regions has one link to each."""
    link = links.get((source_cluster, receiver.cluster)) or links.get(
        (source_cluster, source_cluster), LinkRoute("local")
    )
    host, port = link.via.get(receiver.name, (receiver.kv_host, receiver.kv_port))
    return KvTarget(
        host=host,
        port=port,
        link=link.name,
        codec=link.codec,
        connections=link.connections,
        tls=link.tls,
        server_name=receiver.cluster,
    )


@dataclass
class Emulators:
    """The link emulators of a deployment, by link (``POST /internal/link/{name}``) and by
    the worker each one fronts, (cluster, name)."""

    by_link: dict[str, list[LinkEmulator]] = field(default_factory=dict)
    by_worker: dict[tuple[str, str], list[LinkEmulator]] = field(default_factory=dict)

    @property
    def all(self) -> list[LinkEmulator]:
        return [emu for emus in self.by_worker.values() for emu in emus]

    def registered(self, info: WorkerInfo) -> None:
        """Point the emulators in front of worker ``info.name`` at the KV receiver it
        announced (a spawned worker binds its own port: known once it registers). Called
        for accepted registrations only, whose cluster the worker's certificate proved."""
        for emu in self.by_worker.get((info.cluster, info.name), ()):
            emu.retarget((info.kv_host, info.kv_port))


def kv_routes(
    spawns: list[WorkerSpawn], clusters: list[ClusterSpec], all_links: list[LinkSpec], *, tls: bool
) -> tuple[Emulators, Routes]:
    """The KV routes between clusters, with a link emulator in front of every decode worker
    that an emulated link reaches (relaying to it once it registers); ``tls``: the
    receivers speak mutual TLS."""
    emulators = Emulators()
    links: Routes = {}
    for link in all_links:
        via: dict[str, tuple[str, int]] = {}
        if link.emulate:
            for s in spawns:
                if s.cluster == link.dst and s.role == "decode":
                    emu = LinkEmulator(
                        EmulatorConfig(
                            listen=("127.0.0.1", 0),
                            target=("127.0.0.1", s.kv_port) if s.kv_port else None,
                            rate_gbps=link.rate_gbps,
                            rtt_ms=link.rtt_ms,
                        )
                    ).start()
                    emulators.by_link.setdefault(f"{link.src}->{link.dst}", []).append(emu)
                    emulators.by_worker.setdefault((s.cluster, s.name), []).append(emu)
                    via[s.name] = emu.address
        links[link.src, link.dst] = LinkRoute(
            name=f"{link.src}->{link.dst}",
            codec=link.codec,
            connections=link.connections,
            tls=link.tls,
            via=via,
        )
    # Inside a cluster KV travels straight to the decode worker; with certificates, every
    # KV connection (intra-cluster too) is mutual TLS, since a receiver speaks one protocol.
    for cluster in clusters:
        links.setdefault((cluster.name, cluster.name), LinkRoute(name="local", tls=tls))

    return emulators, links
