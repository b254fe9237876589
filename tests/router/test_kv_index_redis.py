"""The Redis kv index against the in-process one, on a real redis-server.

Same answers on the same random operation sequences (epochs, duplicate and late batches,
removals, hybrid instances and their snapshot events); two gateways delivering the same
batches in any interleaving, twice over, build the index one delivery would; a lost server
costs affinity, not requests, and a restarted empty one is refilled by re-registration.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from itertools import count

import pytest

from prfaas.deploy.cluster_metrics import add_kv_index_metrics
from prfaas.deploy.config import open_kv_index
from prfaas.deploy.specs import KvIndexSpec
from prfaas.gateway.fleet import WorkerFleet
from prfaas.gateway.metrics import GatewayMetrics
from prfaas.messages import CacheEventMsg, Heartbeat, WorkerInfo
from prfaas.router.kv_index import CacheEvent, KvIndex, KvIndexBackend, KvIndexUnavailableError
from prfaas.router.redis_index import RedisKvIndex
from tests.redis_fixture import RedisServer, redis_server, start_redis

__all__ = ["redis_server"]  # the fixture, imported for pytest

_prefixes = count()


def fresh(server: RedisServer) -> RedisKvIndex:
    """A Redis index under a prefix of its own (tests share one server)."""
    return RedisKvIndex(server.url, prefix=f"t{next(_prefixes)}")


@pytest.fixture(params=["memory", "redis"])
def index(request: pytest.FixtureRequest) -> Iterator[KvIndexBackend]:
    if request.param == "memory":
        yield KvIndex()
        return
    server: RedisServer = request.getfixturevalue("redis_server")
    redis_index = fresh(server)
    yield redis_index
    redis_index.close()


def test_batches_apply_once_in_order_per_epoch(index: KvIndexBackend) -> None:
    a, b, c = b"a" * 16, b"b" * 16, b"c" * 16
    assert index.apply("p0", 7, 1, [(a, True)]) == "unknown"  # not registered yet
    index.register("p0", "pd", 7)
    index.register("r0", "remote", 7)
    assert index.apply("p0", 7, 1, [(a, True), (b, True)]) == "applied"
    assert index.apply("p0", 7, 1, [(a, False)]) == "duplicate"
    assert index.apply("p0", 7, 3, [(c, True)]) == "applied"
    assert index.apply("p0", 7, 2, [(b, False)]) == "duplicate"  # late: never out of order
    assert index.prefix_blocks([a, b, c]) == {"p0": 3}
    assert index.apply("r0", 7, 1, [(a, True), (a, False), (a, True)]) == "applied"
    assert index.prefix_blocks([a, b]) == {"p0": 2, "r0": 1}
    assert len(index) == 3
    index.register("p0", "pd", 8)  # restarted: its blocks vanish, numbering starts over
    assert index.prefix_blocks([a, b]) == {"r0": 1}
    assert index.apply("p0", 7, 9, [(b, True)]) == "stale"
    assert index.apply("p0", 9, 1, [(b, True)]) == "unknown"
    assert index.apply("p0", 8, 1, [(a, True)]) == "applied"
    assert index.prefix_blocks([a]) == {"p0": 1, "r0": 1}
    index.remove("r0")
    assert index.prefix_blocks([a, b]) == {"p0": 1} and len(index) == 1
    assert index.prefix_blocks([]) == {} and index.prefix_blocks([c]) == {}


def test_epochs_beyond_double_precision_compare_exactly(index: KvIndexBackend) -> None:
    """Worker epochs are ~1.7e18 and a role switch adds 1: Lua doubles can't tell them apart."""
    epoch = 1_763_860_000_123_456_789
    index.register("p0", "pd", epoch)
    index.apply("p0", epoch, 1, [(b"x" * 16, True)])
    index.register("p0", "pd", epoch + 1)
    assert index.prefix_blocks([b"x" * 16]) == {}
    assert index.apply("p0", epoch, 2, [(b"x" * 16, True)]) == "stale"
    index.register("p0", "pd", epoch)  # an old announcement: ignored
    assert index.apply("p0", epoch + 1, 1, [(b"y" * 16, True)]) == "applied"


def test_long_chains_with_holes_past_a_lookup_chunk(index: KvIndexBackend) -> None:
    """Redis checks a chain 256 blocks at a time: holes in later chunks still end a prefix."""
    chain = [i.to_bytes(16, "big") for i in range(700)]
    for name, hole in [("p0", 300), ("p1", 513), ("p2", 256), ("p3", None)]:
        index.register(name, "pd", 1)
        index.apply(name, 1, 1, [(h, True) for h in chain])
        if hole is not None:
            index.apply(name, 1, 2, [(chain[hole], False)])
    index.register("p4", "pd", 1)
    index.apply("p4", 1, 1, [(h, True) for h in chain[1:]])  # all but block 0: no prefix
    assert index.prefix_blocks(chain) == {"p0": 300, "p1": 513, "p2": 256, "p3": 700}


def test_hybrid_instances_reuse_blocks_up_to_their_last_snapshot(index: KvIndexBackend) -> None:
    """A hybrid instance's hit ends at a snapshot within its block run; a dense one ignores
    snapshots. Snapshot events follow the epoch and batch rules of blocks."""
    chain = [bytes([i]) * 16 for i in range(8)]
    index.register("h0", "pd", 3, hybrid=True)
    index.register("d0", "pd", 3)
    snapshots: list[CacheEvent] = [(chain[k], True, True) for k in (1, 3, 7)]
    assert index.apply("h0", 3, 1, [(h, True) for h in chain[:6]] + snapshots) == "applied"
    assert index.apply("d0", 3, 1, [(h, True) for h in chain[:6]] + snapshots[:1]) == "applied"
    assert len(index) == 6  # snapshots are not blocks
    # h0 holds 6 blocks; its snapshot after block 8 lies beyond them, the one after 4 counts.
    assert index.prefix_blocks(chain) == {"h0": 4, "d0": 6}
    assert index.prefix_blocks(chain[:3]) == {"h0": 2, "d0": 3}
    assert index.prefix_blocks(chain[:1]) == {"d0": 1}  # blocks without a snapshot: no hit
    assert index.apply("h0", 3, 2, [(chain[3], False, True), (chain[3], True)]) == "applied"
    assert index.prefix_blocks(chain) == {"h0": 2, "d0": 6}
    assert index.apply("h0", 3, 2, [(chain[5], True, True)]) == "duplicate"
    assert index.apply("h0", 3, 3, [(chain[1], False)]) == "applied"  # a hole before it
    assert index.prefix_blocks(chain) == {"d0": 6}
    index.register("h0", "pd", 4, hybrid=True)  # restarted: its snapshots vanish too
    assert index.apply("h0", 4, 1, [(h, True) for h in chain]) == "applied"
    assert index.prefix_blocks(chain) == {"d0": 6}
    assert index.apply("h0", 3, 4, [(chain[6], True, True)]) == "stale"
    assert index.apply("h0", 4, 2, [(chain[6], True, True)]) == "applied"
    assert index.prefix_blocks(chain) == {"h0": 7, "d0": 6}
    index.register("h0", "pd", 4)  # announced as dense (same epoch): block runs again
    assert index.prefix_blocks(chain) == {"h0": 8, "d0": 6}
    index.register("h0", "pd", 4, hybrid=True)
    index.remove("h0")
    index.register("h0", "pd", 4, hybrid=True)  # removed: nothing of it is left
    assert index.apply("h0", 4, 1, [(h, True) for h in chain]) == "applied"
    assert index.prefix_blocks(chain) == {"d0": 6}


def test_long_hybrid_chains_find_a_snapshot_far_back(index: KvIndexBackend) -> None:
    """Redis walks a hybrid run back 64 blocks at a time: a snapshot several steps back, or
    at the very first block, is still the one found."""
    chain = [i.to_bytes(16, "big") for i in range(700)]
    for name, snapshot in [("h0", 10), ("h1", 0), ("h2", 699), ("h3", 636), ("h4", None)]:
        index.register(name, "pd", 1, hybrid=True)
        events: list[CacheEvent] = [(h, True) for h in chain]
        if snapshot is not None:
            events.append((chain[snapshot], True, True))
        events.append((chain[400], True, True) if name == "h3" else (chain[1], False, True))
        index.apply(name, 1, 1, events)
    index.apply("h3", 1, 2, [(chain[500], False)])  # run 500: the snapshot at 636 is past it
    assert index.prefix_blocks(chain) == {"h0": 11, "h1": 1, "h2": 700, "h3": 401}


def random_ops(rng: random.Random, steps: int) -> Iterator[tuple[str, tuple[object, ...]]]:
    """Registrations (same or newer epoch), batches (fresh, repeated, late, stale), removals
    and lookups over a small universe of block hashes, so that they collide a lot."""
    universe = [bytes([i]) * 16 for i in range(10)] + list(range(3))  # ints: simulator hashes
    instances = {"p0": "pd", "p1": "pd", "r0": "remote", "h0": "remote"}
    epochs = dict.fromkeys(instances, 0)
    seqs = dict.fromkeys(instances, 0)
    for _ in range(steps):
        name = rng.choice(sorted(instances))
        roll = rng.random()
        if roll < 0.1:
            if rng.random() < 0.5:
                epochs[name] += rng.choice([1, 1 << 60])
                seqs[name] = 0
            # h0 is hybrid, p1 is announced either way (the flag follows the last one).
            hybrid = name == "h0" or (name == "p1" and rng.random() < 0.5)
            yield "register", (name, instances[name], epochs[name], hybrid)
        elif roll < 0.13:
            yield "remove", (name,)
        elif roll < 0.7:
            seqs[name] += rng.choice([1, 1, 1, 2])
            seq = seqs[name] - rng.choice([0, 0, 0, 1, 3])  # some repeated or late
            epoch = max(epochs[name] - rng.choice([0] * 9 + [1]), 0)  # some from an older one
            events: list[CacheEvent] = [
                (rng.choice(universe), rng.random() < 0.7, rng.random() < 0.3)
                for _ in range(rng.randint(0, 6))
            ]
            yield "apply", (name, epoch, max(seq, 1), events)
        else:
            yield "lookup", ([rng.choice(universe) for _ in range(rng.randint(0, 8))],)


@pytest.mark.parametrize("seed", range(8))
def test_redis_matches_in_process_on_random_sequences(redis_server: RedisServer, seed: int) -> None:
    reference, shared = KvIndex(), fresh(redis_server)
    for op, args in random_ops(random.Random(seed), 400):
        if op == "lookup":
            assert shared.prefix_blocks(*args) == reference.prefix_blocks(*args), args
        else:
            expected = getattr(reference, op)(*args)
            assert getattr(shared, op)(*args) == expected, (op, args)
        assert len(shared) == len(reference)
    shared.close()


def two_fleets(server: RedisServer) -> tuple[WorkerFleet, WorkerFleet, RedisKvIndex]:
    prefix = f"t{next(_prefixes)}"
    a, b = RedisKvIndex(server.url, prefix), RedisKvIndex(server.url, prefix)
    clusters = {"local": "pd", "remote": "prfaas"}
    return WorkerFleet(clusters, a), WorkerFleet(clusters, b), a


def info(name: str, cluster: str, epoch: int, hybrid: bool = False) -> WorkerInfo:
    return WorkerInfo(
        name=name,
        cluster=cluster,
        role="prefill",
        http_url="http://127.0.0.1:1",
        kv_host="127.0.0.1",
        kv_port=0,
        fingerprint="ab" * 16,
        model_name="m",
        max_model_len=256,
        block_size=16,
        epoch=epoch,
        hybrid=hybrid,
    )


def heartbeats(
    rng: random.Random, name: str, epoch: int, batches: int, snapshot_share: float = 0.0
) -> list[Heartbeat]:
    universe = [f"{i:032x}" for i in range(12)]
    return [
        Heartbeat(
            name=name,
            epoch=epoch,
            role="prefill",
            num_waiting=0,
            num_running=0,
            kv_usage=0.0,
            fallbacks=0,
            seq=seq,
            events=[
                CacheEventMsg(
                    block_hash=rng.choice(universe),
                    stored=rng.random() < 0.6,
                    snapshot=snapshot_share > 0 and rng.random() < snapshot_share,
                )
                for _ in range(rng.randint(1, 5))
            ],
        )
        for seq in range(1, batches + 1)
    ]


def as_events(hb: Heartbeat) -> list[CacheEvent]:
    return [(bytes.fromhex(e.block_hash), e.stored, e.snapshot) for e in hb.events]


@pytest.mark.parametrize("seed", range(6))
def test_two_gateways_delivering_every_batch_build_the_index_once(
    redis_server: RedisServer, seed: int
) -> None:
    """Each gateway gets every batch in order (some twice: a lost answer, resent); the two
    streams interleave at random. The shared index equals one in-order delivery."""
    rng = random.Random(seed)
    fleet_a, fleet_b, shared = two_fleets(redis_server)
    reference = KvIndex()
    streams: dict[str, list[Heartbeat]] = {}
    for name, cluster, epoch, hybrid in [
        ("pd-p-0", "local", 11, False),
        ("prfaas-0", "remote", 12, True),
    ]:
        for fleet in (fleet_a, fleet_b):
            fleet.register(info(name, cluster, epoch, hybrid))
        reference.register(name, cluster, epoch, hybrid)
        streams[name] = heartbeats(rng, name, epoch, 30, snapshot_share=0.3)
        for hb in streams[name]:
            reference.apply(name, epoch, hb.seq, as_events(hb))
    queues = {
        (fleet, name): [hb for hb in stream for _ in range(rng.choice([1, 1, 2]))]
        for fleet in (fleet_a, fleet_b)
        for name, stream in streams.items()
    }
    while queues:
        key = rng.choice(sorted(queues, key=lambda k: (id(k[0]), k[1])))
        fleet, _ = key
        assert fleet.heartbeat(queues[key].pop(0))
        if not queues[key]:
            del queues[key]
    chains = [[bytes.fromhex(f"{i:032x}") for i in rng.sample(range(12), 6)] for _ in range(40)]
    for chain in chains:
        assert shared.prefix_blocks(chain) == reference.prefix_blocks(chain)
    assert len(shared) == len(reference) > 0


@pytest.fixture
def own_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A server of this test's own, to be killed and restarted."""
    server = start_redis(tmp_path_factory.mktemp("redis-own"))
    yield server
    server.kill()


def test_a_lost_server_costs_affinity_and_a_restarted_one_is_refilled(
    own_redis: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> None:
    index = RedisKvIndex(own_redis.url, "ha", timeout_s=0.2, retry_after_s=0.3)
    metrics = GatewayMetrics()
    add_kv_index_metrics(metrics, index)
    fleet = WorkerFleet({"local": "pd"}, index)
    fleet.register(info("pd-p-0", "local", 5))
    first, second = heartbeats(random.Random(0), "pd-p-0", 5, 2)
    assert fleet.heartbeat(first)
    chain = [bytes.fromhex(e.block_hash) for e in first.events if e.stored][:1]
    assert index.prefix_blocks(chain) == {"pd-p-0": 1}

    own_redis.kill()
    start = time.monotonic()
    assert index.prefix_blocks(chain) == {}  # no affinity, no error
    for _ in range(50):  # back-off: later lookups don't wait for the socket
        assert index.prefix_blocks(chain) == {}
    assert time.monotonic() - start < 2.0
    seen = fleet.workers["pd-p-0"].last_seen_s
    with pytest.raises(KvIndexUnavailableError):
        fleet.heartbeat(second)  # the worker keeps the batch and sends it again
    assert fleet.workers["pd-p-0"].last_seen_s > seen and fleet.healthy("pd-p-0")
    text = metrics.render().decode()
    assert "prfaas_kv_index_up 0.0" in text
    assert index.errors >= 1 and len(index) == 0

    # An empty server on the same address: the batch finds no such instance, so the worker
    # is asked to register again; after that its batches apply.
    port = own_redis.url.rsplit(":", 1)[1].split("/")[0]
    restarted = start_redis(tmp_path_factory.mktemp("redis-again"), int(port))
    try:
        time.sleep(0.35)  # past the back-off
        assert not fleet.heartbeat(second)
        fleet.register(info("pd-p-0", "local", 5))
        assert fleet.heartbeat(second)
        assert index.up and "prfaas_kv_index_up 1.0" in metrics.render().decode()
        assert len(index) > 0
    finally:
        restarted.kill()


def test_unreachable_server_at_start_is_a_clear_error(redis_server: RedisServer) -> None:
    from prfaas.deploy.launcher import free_port

    url = f"redis://127.0.0.1:{free_port()}/0"
    with pytest.raises(KvIndexUnavailableError, match=f"Redis at {url} unreachable"):
        open_kv_index(KvIndexSpec(backend="redis", url=url))
    assert isinstance(open_kv_index(KvIndexSpec()), KvIndex)
    assert isinstance(
        open_kv_index(KvIndexSpec(backend="redis", url=redis_server.url)), RedisKvIndex
    )
