"""Consistent hashing with bounded loads: stability, affinity and the load bound."""

import math
import random

from prfaas.router.chwbl import ConsistentHashRing, load_bound, pick, stable_hash

NAMES = [f"i{k}" for k in range(8)]


def test_stable_hash_is_deterministic_and_spreads() -> None:
    assert stable_hash(b"abc") == stable_hash(b"abc")
    assert stable_hash("abc") == stable_hash(b"abc")
    assert stable_hash(1) == 0x910A2DEC89025CC1  # splitmix64 of 1: fixed across processes
    assert len({stable_hash(k) for k in range(1000)}) == 1000


def test_same_key_same_instance_when_unloaded() -> None:
    ring = ConsistentHashRing(NAMES)
    loads = dict.fromkeys(NAMES, 0)
    assert len({pick(ring, "prefix-a", loads, 1.25) for _ in range(10)}) == 1
    walk = list(ring.walk("prefix-a"))
    assert sorted(walk) == sorted(NAMES)  # every instance once


def test_removing_an_instance_moves_only_its_keys() -> None:
    full, smaller = ConsistentHashRing(NAMES), ConsistentHashRing(NAMES[:-1])
    keys = range(2000)
    moved = [k for k in keys if next(full.walk(k)) != next(smaller.walk(k))]
    assert all(next(full.walk(k)) == NAMES[-1] for k in moved)


def test_bounded_load_holds_for_a_single_hot_key() -> None:
    ring = ConsistentHashRing(NAMES)
    loads = dict.fromkeys(NAMES, 0)
    for _ in range(400):  # every request has the same key: affinity alone would pick one
        loads[pick(ring, "hot", loads, 1.25)] += 1
    mean = 400 / len(NAMES)
    assert max(loads.values()) <= math.ceil(1.25 * mean)
    assert load_bound(loads, 1.25) == math.ceil(1.25 * 401 / 8)


def test_bound_holds_after_every_assignment_with_random_keys() -> None:
    rng = random.Random(0)
    ring = ConsistentHashRing(NAMES)
    loads = dict.fromkeys(NAMES, 0)
    for _ in range(1000):
        bound = load_bound(loads, 1.1)
        chosen = pick(ring, rng.randrange(50), loads, 1.1)
        loads[chosen] += 1
        assert loads[chosen] <= bound
        if rng.random() < 0.3:  # some requests finish
            busy = [n for n in NAMES if loads[n] > 0]
            loads[rng.choice(busy)] -= 1
