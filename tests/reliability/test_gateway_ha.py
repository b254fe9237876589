"""Gateway high availability: two gateways share the kv index through a real redis-server.

End to end with real processes: gateway A spawns a PD cluster and a remote cluster on a
tiny checkpoint, its workers heartbeating to A and to a gateway B that starts later over
workers it did not spawn. A long prompt through A lands in a prefill instance's cache; A is
SIGKILLed; through B the same prompt goes to the same instance and is reported cached,
which B can only know from the shared index. Also: the config, the worker's event log, and
a clear error when Redis is unreachable at start.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest
import yaml

from prfaas.deploy.config import (
    DeployConfigError,
    default_config,
    load_deploy_config,
)
from prfaas.deploy.launcher import WorkerSpawn, free_port
from prfaas.deploy.specs import KvIndexSpec
from prfaas.gateway.config import GatewayConfig
from prfaas.messages import CacheEventMsg, Heartbeat
from prfaas.worker.cache_events import BATCH_EVENTS, CacheEventLog, EventBatch
from tests.deploy_helper import start, topology
from tests.redis_fixture import start_redis

CLUSTER_TOKEN = "ha-cluster-token"
LONG = " ".join(f"w{(11 * i) % 200 + 3}" for i in range(80))  # 80 tokens: above t, remote


def deploy_yaml(
    model: Path, port: int, redis_url: str, spawn: bool, gateways: list[str], control_port: int
) -> dict[str, object]:
    return topology(
        model,
        port,
        spawn=spawn,
        # Plain TCP (insecure: true, this test is about gateway failover), no emulator:
        # gateway B must reach the same receivers as A.
        link={"rate_gbps": None, "tls": False, "insecure": True, "emulate": False},
        kv_index={"backend": "redis", "url": redis_url, "prefix": "ha-e2e"},
        gateways=gateways,  # their control listeners (mutual TLS), where workers register
        control_plane={"port": control_port},
        kv_deadline_s=60.0,
    )


def start_gateway(tmp: Path, name: str, config: dict[str, object]) -> subprocess.Popen[bytes]:
    # One server secret at both gateways: one tenant salt.
    env = {"PRFAAS_SERVER_SECRET": "ha-server-secret"}
    return start(config, tmp, CLUSTER_TOKEN, name=name, env=env).proc


def stop(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGINT)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (the workers a gateway spawned)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                stat = (entry / "stat").read_text()
                if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        return b"prfaas.cli" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def end_orphans(pids: list[int]) -> None:
    """The workers outlive the SIGKILLed gateway by design; end them (and only them)."""
    for pid in pids:
        if alive(pid):
            os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + 20
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in pids:
        if alive(pid):
            os.killpg(pid, signal.SIGKILL)


def complete(base_url: str) -> tuple[str, int]:
    """The prefill instance the gateway chose for LONG, and the cached tokens it reported."""
    client = openai.OpenAI(base_url=base_url + "/v1", api_key="none", max_retries=0)
    raw = client.completions.with_raw_response.create(
        model="tiny", prompt=LONG, max_tokens=2, temperature=0
    )
    route = raw.headers["x-prfaas-route"]
    usage = raw.parse().usage
    assert usage is not None
    details = usage.prompt_tokens_details
    prefill = next(w.split("=")[1] for w in route.split() if w.startswith("prefill="))
    return prefill, (details.cached_tokens or 0) if details else 0


def wait_for(check: object, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.25)


def healthy_workers(base_url: str) -> set[str]:
    try:
        data = httpx.get(base_url + "/status", timeout=5.0).json()
    except httpx.HTTPError:
        return set()
    return {i["name"] for i in data["instances"] if i["healthy"]}


@pytest.mark.slow
def test_killing_a_gateway_loses_no_routing_state(tiny_llama: Path, tmp_path: Path) -> None:
    redis_server = start_redis(tmp_path)  # its own: killed at the end
    port_a, port_b, control_a, control_b = (free_port() for _ in range(4))
    url_a, url_b = f"http://127.0.0.1:{port_a}", f"http://127.0.0.1:{port_b}"
    gateways = [f"https://127.0.0.1:{control_a}", f"https://127.0.0.1:{control_b}"]
    gateway_a = start_gateway(
        tmp_path, "a", deploy_yaml(tiny_llama, port_a, redis_server.url, True, gateways, control_a)
    )
    workers = children(gateway_a.pid)
    gateway_b: subprocess.Popen[bytes] | None = None
    try:
        assert len(workers) == 3
        first, _ = complete(url_a)
        cached: list[int] = []  # cache events reach the index with the next heartbeat
        wait_for(lambda: cached.append(complete(url_a)[1]) or cached[-1] > 0, 30, "a cache hit")
        # The hit above is the engine's own; the index learns of the blocks by heartbeat.
        in_redis = redis_server.client()
        wait_for(lambda: int(in_redis.get("ha-e2e:n") or 0) > 0, 30, "events in the index")

        # Gateway B starts only now, over workers it did not spawn.
        gateway_b = start_gateway(
            tmp_path,
            "b",
            deploy_yaml(tiny_llama, port_b, redis_server.url, False, gateways, control_b),
        )
        everyone = {"pd-p-0", "pd-d-0", "prfaas-0"}
        wait_for(lambda: healthy_workers(url_b) == everyone, 60, "workers registered at B")

        gateway_a.send_signal(signal.SIGKILL)
        gateway_a.wait()
        assert all(alive(p) for p in workers), "workers must outlive a gateway of several"
        prefill, cached_tokens = complete(url_b)
        assert prefill == first
        assert cached_tokens >= 64  # 4 full blocks of 16 out of 80 tokens, the engine's hit
        # B knows those blocks from the shared index alone (it never saw their events).
        held = {
            i["name"]: i["kv_index_blocks"]
            for i in httpx.get(url_b + "/status").json()["instances"]
        }
        assert held[prefill] >= 4
        assert healthy_workers(url_b) == everyone

        # Redis lost too: B still serves, without cache affinity, and says so on /metrics.
        redis_server.kill()
        # Routing goes on without the index (usage still reports the engine's real hit: its
        # own prefix cache is intact, only the gateway's view of it is gone).
        for _ in range(3):
            assert complete(url_b)[0] in everyone
        metrics = httpx.get(url_b + "/metrics").text
        assert "prfaas_kv_index_up 0.0" in metrics
        assert healthy_workers(url_b) == everyone  # heartbeats still count (answered 503)
    finally:
        redis_server.kill()
        if gateway_a.poll() is None:
            stop(gateway_a)
        if gateway_b is not None:
            stop(gateway_b)
        end_orphans(workers)


def test_a_shared_index_without_secret_or_redis_is_a_clear_error(
    tiny_llama: Path, tmp_path: Path
) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    config = tmp_path / "deploy.yaml"
    config.write_text(yaml.safe_dump(deploy_yaml(tiny_llama, free_port(), url, True, [], 0)))
    env = dict(os.environ, PRFAAS_CACHE_DIR=str(tmp_path / "cache"))
    env.pop("PRFAAS_SERVER_SECRET", None)

    def serve() -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "prfaas.cli", "serve", "--config", str(config)]
        return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120)

    done = serve()
    assert done.returncode == 2 and "need PRFAAS_SERVER_SECRET set" in done.stderr
    env["PRFAAS_SERVER_SECRET"] = "s"
    done = serve()
    assert done.returncode == 2
    assert f"kv index: Redis at {url} unreachable" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("kv_index", "message"),
    [
        ({"backend": "redis"}, "kv_index: Value error, backend 'redis' needs a url"),
        ({"backend": "redis", "url": "http://h:1"}, "expected redis://, rediss:// or unix://"),
        ({"url": "redis://h:1"}, "url is only for backend 'redis'"),
        ({"backend": "etcd"}, "kv_index.backend"),
        ({"backend": "redis", "url": "redis://h:1", "prefix": "a b"}, "kv_index.prefix"),
    ],
)
def test_kv_index_config_errors_name_the_key(
    tmp_path: Path, kv_index: dict[str, str], message: str
) -> None:
    raw = default_config().model_dump(mode="json", exclude_none=True)
    raw["kv_index"] = kv_index
    path = tmp_path / "deploy.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(DeployConfigError, match=message):
        load_deploy_config(path)


def test_memory_stays_the_default_and_spawned_workers_get_every_gateway(tmp_path: Path) -> None:
    assert default_config().kv_index == KvIndexSpec(backend="memory", url=None, prefix="prfaas")
    raw = default_config().model_dump(mode="json", exclude_none=True)
    raw["gateways"] = ["ftp://x"]
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(DeployConfigError, match="not an http"):
        load_deploy_config(tmp_path / "bad.yaml")

    def argv(urls: tuple[str, ...], exit_with_launcher: bool) -> list[str]:
        spawn = WorkerSpawn(
            "w", "c", "prefill", 1, 2, urls, None, None, {}, exit_with_launcher=exit_with_launcher
        )
        return spawn.argv()

    one = argv(("http://a:1",), True)
    assert one[one.index("--gateway") + 1] == "http://a:1" and "--parent-pid" in one
    two = argv(("http://a:1", "http://b:2"), False)
    assert two[two.index("--gateway") + 1] == "http://a:1,http://b:2"
    assert "--parent-pid" not in two


def events(*hashes: int) -> list[CacheEventMsg]:
    return [CacheEventMsg(block_hash=f"{h:032x}", stored=True) for h in hashes]


def test_event_log_keeps_each_batch_until_every_gateway_has_it() -> None:
    log = CacheEventLog(["a", "b"], max_batches=3)
    log.add(7, events(1))
    log.add(7, [])  # nothing new: no batch, no number
    log.add(7, events(2, 3))
    assert [b.seq for b in log.pending("a", 7)] == [1, 2]
    log.ack("a", 7, 2)
    assert log.pending("a", 7) == [] and [b.seq for b in log.pending("b", 7)] == [1, 2]
    log.ack("b", 7, 1)
    assert [b.seq for b in log.pending("b", 7)] == [2]
    for h in range(4, 8):  # b stays away: its oldest batches go beyond the bound
        log.add(7, events(h))
    assert [b.seq for b in log.pending("b", 7)] == [4, 5, 6]
    assert [b.seq for b in log.pending("a", 7)] == [4, 5, 6]
    log.add(8, events(9))  # a new epoch (role switch) starts over
    assert [b.seq for b in log.pending("b", 8)] == [1] and log.pending("b", 7) == []
    log.ack("a", 7, 99)  # an answer about the old epoch changes nothing
    assert [b.seq for b in log.pending("a", 8)] == [1]
    log.add(8, events(*range(BATCH_EVENTS + 1)))  # too many for one heartbeat: two batches
    assert [len(b.events) for b in log.pending("a", 8)] == [1, BATCH_EVENTS, 1]
    # A full batch stays under the gateway's request-body limit.
    batch = log.pending("a", 8)[1]
    heartbeat = Heartbeat(
        name="w", epoch=8, role="decode", num_waiting=0, num_running=0, kv_usage=0.0,
        fallbacks=0, seq=batch.seq, events=batch.events,
    )  # fmt: skip
    assert len(heartbeat.encode()) < GatewayConfig().max_body_bytes


class _Worker:
    """The things ``Worker._send_heartbeats`` uses, without an engine: this test is about
    the resend rule, so the gateway is an httpx mock answering 503, then 200 (plain HTTP)."""

    def __init__(self) -> None:
        self.control = None
        self.epoch = 7
        self.events = CacheEventLog(["g"])
        self.events.add(7, events(1))
        self.events.add(7, events(2))

    def heartbeat(self, batch: EventBatch | None) -> Heartbeat:
        return Heartbeat(
            name="w",
            epoch=self.epoch,
            role="prefill",
            num_waiting=0,
            num_running=0,
            kv_usage=0.0,
            fallbacks=0,
            events=batch.events if batch else [],
            seq=batch.seq if batch else 0,
        )

    async def _post(self, client: httpx.AsyncClient, path: str, body: bytes) -> httpx.Response:
        from prfaas.worker import Worker

        return await Worker._post(self, client, path, body)  # type: ignore[arg-type]


def test_a_worker_resends_batches_its_gateway_could_not_index() -> None:
    import asyncio

    from prfaas.worker import Worker

    answers = iter([503, 200, 200, 404])
    seen: list[int] = []

    def gateway(request: httpx.Request) -> httpx.Response:
        seen.append(Heartbeat.decode(request.content).seq)
        return httpx.Response(next(answers))

    async def run() -> list[bool]:
        worker = _Worker()
        transport = httpx.MockTransport(gateway)
        async with httpx.AsyncClient(transport=transport, base_url="http://g") as client:
            send = Worker._send_heartbeats
            return [await send(worker, client, "g") for _ in range(3)]  # type: ignore[arg-type]

    # 503: kv index down, stay registered, keep batch 1; then 1 and 2 in order; then a plain
    # heartbeat answered 404: register again.
    assert asyncio.run(run()) == [True, True, False]
    assert seen == [1, 1, 2, 0]
