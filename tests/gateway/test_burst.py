"""A burst sharing one long prefix, through the real gateway to fake PD-P workers
(``tests/fakes``): the live instance choice (``EstimatedTtft``, the default) counts each
prefill in flight from dispatch to its end, so the burst spreads over the PD-P instances
within the load bound instead of piling onto the instance that holds the prefix.

Fakes because the subject is the gateway's routing and its in-flight bookkeeping; each
fake prefill takes 1.5 s so that much of the burst is in flight at once."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter

import httpx

from prfaas.kvcache.hashing import block_hashes, root_hash
from prfaas.router.instance_choice import EstimatedTtft, load_bound_s
from tests.fakes.cluster import FakeCluster, fake_cluster
from tests.fakes.worker import FINGERPRINT, FakeWorker
from tests.gateway.test_dispatch import complete, wait_until

BURST = 50
PREFIX = [f"w{3 + i}" for i in range(192)]  # 12 blocks of 16
PD_P = ["pd-p-0", "pd-p-1", "pd-p-2"]


def prompt(i: int) -> str:
    return " ".join(PREFIX + [f"w{3 + (7 * i + k) % 250}" for k in range(8)])  # 200 tokens


def workers() -> list[FakeWorker]:
    return [
        *(FakeWorker(name, "prefill", "local") for name in PD_P),
        FakeWorker("pd-d-0", "decode", "local"),
        FakeWorker("prfaas-0", "prefill", "remote"),
    ]


def warm_prefix(c: FakeCluster, holder: str) -> None:
    """One request, then the prefix's blocks marked held by ``holder`` in the kv index (as
    its cache events would: the fakes send none)."""
    assert complete(c.url, prompt(-1)).status_code == 200
    wait_until(lambda: any(c.workers[n].received.prefills for n in PD_P))
    cmd = next(c.workers[n].received.prefills[0] for n in PD_P if c.workers[n].received.prefills)
    root = root_hash(FINGERPRINT, bytes.fromhex(cmd.tenant_salt_hex))
    hashes = block_hashes(cmd.prompt_token_ids, 16, root)[: len(PREFIX) // 16]
    index = c.deployment.backend.router.kv_index
    index.stored(holder, c.workers[holder].epoch, hashes)  # type: ignore[attr-defined]
    for n in PD_P:
        c.workers[n].received.prefills.clear()


async def send_burst(url: str, statuses: Counter[int]) -> None:
    async with httpx.AsyncClient(timeout=60) as client:

        async def one(i: int) -> None:
            body = {"model": "fake", "prompt": prompt(i), "max_tokens": 4}
            r = await client.post(url + "/v1/completions", json=body)
            statuses[r.status_code] += 1

        await asyncio.gather(*(one(i) for i in range(BURST)))


def burst(instance_choice: str) -> tuple[Counter[str], dict[str, float], FakeCluster]:
    """Fire the burst; at the moment all of it is in flight, the prefills per instance and the
    queued seconds the router counts per instance."""
    overload = {"max_inflight_per_decode": 2 * BURST}
    policy = {"threshold_tokens": 10_000, "control": {"enabled": False}}  # all PD-P
    policy["instance_choice"] = instance_choice
    with fake_cluster(workers(), overload=overload, policy=policy) as c:
        warm_prefix(c, "pd-p-0")
        for n in PD_P:
            c.workers[n].behaviour.prefill_delay_s = 1.5
        router = c.deployment.backend.router
        statuses: Counter[int] = Counter()
        # One client thread with one event loop: 50 blocking client threads would starve
        # the fakes' heartbeats (this process also runs the gateway and every fake).
        fire = threading.Thread(target=asyncio.run, args=(send_burst(c.url, statuses),))
        fire.start()
        received = lambda: sum(len(c.workers[n].received.prefills) for n in PD_P)  # noqa: E731
        wait_until(lambda: received() == BURST or not fire.is_alive(), timeout_s=60)
        counts = Counter({n: len(c.workers[n].received.prefills) for n in PD_P})
        waits: dict[str, float] = {}
        if isinstance(router.instance_choice, EstimatedTtft):
            model = router.instance_choice.costs["local"].prefill
            waits = {n: model.queued_s(router.inflight.work(n)) for n in PD_P}
        fire.join(60)
        assert statuses == {200: BURST}, statuses
        wait_until(lambda: len(router.inflight) == 0, 30)  # every prefill's end was reported
        return counts, waits, c


def test_a_burst_sharing_a_prefix_spreads_within_the_load_bound() -> None:
    counts, waits, c = burst("ttft")
    assert sum(counts.values()) == BURST
    assert all(counts[n] > 0 for n in PD_P), counts  # spread over every PD-P instance
    assert counts["pd-p-0"] == max(counts.values()), counts  # the prefix still attracts
    # The bound held per request, so at the end no instance holds more queued work than
    # the bound over the final waits plus the one request that took it there.
    choice = c.deployment.backend.router.instance_choice
    assert isinstance(choice, EstimatedTtft)
    request_s = choice.costs["local"].prefill.seconds(200)
    bound = load_bound_s(waits, request_s, choice.balance_factor)
    assert max(waits.values()) <= bound + request_s, (waits, bound)
    assert sum(waits.values()) > 0


def test_heartbeat_loads_alone_pile_the_burst_onto_the_prefix_holder() -> None:
    """Why the in-flight counts: CHWBL on heartbeat loads (the fakes report 0) sees no burst."""
    counts, _, _ = burst("chwbl")
    assert counts["pd-p-0"] == BURST, counts
