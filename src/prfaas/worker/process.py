"""One worker process: it hosts one instance (an engine with a role, prefill or decode),
registers it with every gateway and heartbeats to each, carrying the engine's counters, its
links' egress and its cache events (``cache_events.CacheEventLog``).

The engine sits behind the seam (``engine_api.InstanceEngine``); without one given, the
config's engine is loaded: the reference engine (``reference.ReferenceEngine``) or vLLM
(``integrations.vllm.instance.VllmEngine``, in the vLLM venv).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import ssl
import threading
import time

import httpx

from prfaas.control_plane import GATEWAY, ControlTls, warn_insecure
from prfaas.libc import heap_bytes
from prfaas.messages import TOKEN_HEADER, Heartbeat, Role, WorkerCheck, WorkerInfo
from prfaas.worker.cache_events import CacheEventLog, EventBatch
from prfaas.worker.config import WorkerConfig
from prfaas.worker.engine_api import InstanceEngine

logger = logging.getLogger(__name__)
HEARTBEAT_S = 0.5


class DrainTimeout(RuntimeError):
    """A role switch gave up: requests still ran at the drain deadline (the reason says
    how many); the worker keeps its role."""


class Worker:
    def __init__(self, config: WorkerConfig, engine: InstanceEngine | None = None) -> None:
        self.config = config
        self.role: Role = config.role
        self.draining = False
        self.epoch = time.time_ns() + os.getpid()  # unique per start: stale entries vanish
        # Mutual TLS with every gateway from this cluster's bundle; None: plain HTTP.
        self.control = (
            None
            if config.certs_dir is None or config.insecure_control
            else ControlTls.from_dir(config.certs_dir, config.cluster)
        )
        if self.control is not None:
            plain = [u for u in config.gateway_urls if not u.startswith("https://")]
            if plain:
                raise ValueError(f"gateway URL(s) {plain}: a worker with certificates needs https")
        # Built once here: a missing or unreadable bundle stops the worker before it loads.
        self._gateway_ssl = None if self.control is None else self.control.client_context()
        self.events = CacheEventLog(config.gateway_urls)
        if engine is None:
            engine = load_engine(config)
        self.engine = engine
        facts = self.engine.facts
        scheme = "http" if self.control is None else "https"
        self.fingerprint = facts.fingerprint
        self._info = WorkerInfo(
            name=config.name,
            cluster=config.cluster,
            role=config.role,
            http_url=f"{scheme}://{config.host}:{config.port}",
            kv_host=facts.kv_host,
            kv_port=facts.kv_port,
            fingerprint=facts.fingerprint,
            model_name=facts.model_name,
            max_model_len=facts.max_model_len,
            block_size=facts.block_size,
            epoch=self.epoch,
            hybrid=facts.hybrid,
        )

    def info(self) -> WorkerInfo:
        return self._info.model_copy(update={"role": self.role, "epoch": self.epoch})

    def collect_events(self) -> None:
        """Move the engine's new cache events into the log as the next numbered batch."""
        self.events.add(self.epoch, self.engine.drain_cache_events())

    def heartbeat(self, batch: EventBatch | None = None) -> Heartbeat:
        stats = self.engine.stats()
        return Heartbeat(
            name=self.config.name,
            epoch=self.epoch,
            role=self.role,
            num_waiting=stats.num_waiting,
            num_running=stats.num_running,
            kv_usage=stats.kv_usage,
            fallbacks=stats.fallbacks,
            draining=self.draining,
            events=batch.events if batch else [],
            seq=batch.seq if batch else 0,
            queued_tokens=stats.queued_tokens,
            links=stats.links,
        )

    async def gateway_loop(self, url: str) -> None:
        """Register, then heartbeat; re-register whenever the gateway forgets us. One loop
        per gateway, so that a dead gateway never delays the others."""
        headers = {TOKEN_HEADER: self.config.cluster_token}
        verify: ssl.SSLContext | bool = self._gateway_ssl or True
        if self._gateway_ssl is None:
            warn_insecure(f"worker {self.config.name} (to {url})")
        async with httpx.AsyncClient(
            base_url=url, headers=headers, timeout=5.0, verify=verify
        ) as client:
            registered = False
            problem: str | None = None  # the last one logged: each is said once, not at 2 Hz
            while True:
                self.collect_events()
                said = problem
                try:
                    if not registered:
                        r = await self._post(client, "/internal/register", self.info().encode())
                        registered = r.status_code == 200
                        if r.status_code == 403:  # e.g. a certificate of another cluster
                            problem = f"gateway {url} refused us: {r.text[:500]}"
                    if registered:
                        problem = None
                        registered = await self._send_heartbeats(client, url)
                except httpx.HTTPError as e:
                    registered = False
                    tls = _ssl_error(e)
                    if tls is not None:  # certificates that do not fit: worth saying
                        problem = f"gateway {url}: TLS failed: {tls}"
                    else:
                        logger.debug("gateway %s unreachable: %s", url, e)
                if problem is not None and problem != said:
                    logger.error("%s", problem)
                await asyncio.sleep(HEARTBEAT_S)

    async def _send_heartbeats(self, client: httpx.AsyncClient, url: str) -> bool:
        """One heartbeat per event batch this gateway lacks, in order (one without events if
        none); False if the gateway wants us to register again."""
        epoch = self.epoch
        batches: list[EventBatch | None] = [*self.events.pending(url, epoch)] or [None]
        for batch in batches:
            if self.epoch != epoch:  # switched roles meanwhile: the log starts over
                return True
            r = await self._post(client, "/internal/heartbeat", self.heartbeat(batch).encode())
            if r.status_code == 503:  # its kv index is unreachable: send the batch later
                return True
            if r.status_code != 200:
                return False
            if batch is not None:
                self.events.ack(url, epoch, batch.seq)
        return True

    async def _post(self, client: httpx.AsyncClient, path: str, body: bytes) -> httpx.Response:
        """POST to a gateway; over TLS its certificate must be a gateway's, whatever its
        address (the name checked is ``GATEWAY``)."""
        extensions = {} if self.control is None else {"sni_hostname": GATEWAY}
        return await client.post(path, content=body, extensions=extensions)

    async def check(self) -> WorkerCheck:
        """Integrity and leak report: the engine's parts, and this process's."""
        part = await self.engine.check()
        heap = heap_bytes()
        return WorkerCheck(
            name=self.config.name,
            pid=os.getpid(),
            epoch=self.epoch,
            role=self.role,
            integrity_error=part.integrity_error,
            blocks=part.blocks,
            num_waiting=part.num_waiting,
            num_running=part.num_running,
            num_parked=part.num_parked,
            num_streams=part.num_streams,
            kv_connections=part.kv_connections,
            kv_landings=part.kv_landings,
            kv_allocated_bytes=part.kv_allocated_bytes,
            kv_awaited=part.kv_awaited,
            kv_sending=part.kv_sending,
            asyncio_tasks=len(asyncio.all_tasks()),
            threads=threading.active_count(),
            heap_in_use_bytes=heap.in_use if heap else None,
            heap_free_bytes=heap.free if heap else None,
        )

    async def switch_role(self, role: Role) -> None:
        """Drain (the gateway stops routing here once it sees the flag), then switch. A
        request that outlives ``config.drain_timeout_s`` keeps the role: DrainTimeout, the
        worker serves on in its old role and the caller may try again later."""
        self.draining = True
        try:
            end_s = time.monotonic() + self.config.drain_timeout_s
            while True:
                s = self.engine.stats()
                busy = s.num_waiting + s.num_running + s.num_parked
                if busy == 0:
                    break
                if time.monotonic() > end_s:
                    reason = (
                        f"{self.config.name} not drained within {self.config.drain_timeout_s}s "
                        f"({busy} request(s) still held); stays {self.role}"
                    )
                    logger.warning("role switch to %s refused: %s", role, reason)
                    raise DrainTimeout(reason)
                await asyncio.sleep(0.05)
            await self.engine.switch_role(role)
            self.role = role
            self.epoch += 1  # a new identity in the index: the gateway re-reads our role
        finally:
            self.draining = False


def _ssl_error(e: BaseException) -> ssl.SSLError | None:
    """The TLS error beneath an HTTP client's error, if one is."""
    cause: BaseException | None = e
    while cause is not None:
        if isinstance(cause, ssl.SSLError):
            return cause
        cause = cause.__cause__ or cause.__context__
    return None


def load_engine(config: WorkerConfig) -> InstanceEngine:
    """The engine the config names, loaded (torch, the model, and vLLM for ``vllm``)."""
    if config.engine_kind == "vllm":
        from prfaas.integrations.vllm.instance import for_worker as vllm_for_worker

        return vllm_for_worker(config)
    from prfaas.worker.reference import for_worker

    return for_worker(config)


async def exit_with_parent(parent_pid: int) -> None:
    """A worker spawned by `prfaas serve` must not outlive it, however it ended (even
    SIGKILL): once reparented, shut down gracefully (SIGTERM to ourselves)."""
    while os.getppid() == parent_pid:
        await asyncio.sleep(1.0)
    logger.warning("launcher %d is gone; shutting down", parent_pid)
    os.kill(os.getpid(), signal.SIGTERM)
