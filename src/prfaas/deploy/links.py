"""Where KV from one cluster reaches a decode instance: the link routes the deployment set up
(emulator relays, WAN addresses, codec, TLS), turned into a ``KvTarget`` per transfer. The
gateway's dispatch calls ``kv_target`` through ``BackendSettings.kv_target``."""

from __future__ import annotations

from dataclasses import dataclass, field

from prfaas.messages import KvTarget, WorkerInfo


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
