"""`prfaas serve` on a tiny Kimi Linear checkpoint: the cached tokens the gateway reports are
the hybrid engine's real prefix hits (blocks up to a state snapshot), not its block runs.

The gateway's ``usage.prompt_tokens_details.cached_tokens`` is the hit the prefilling engine
reports (the router's estimate from the kv index agrees on these prompts). A prompt sharing
3 cached blocks with an earlier one whose only snapshot is at 5 blocks gets no hit in the
engine; a dense-style index would report 48 tokens.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import openai
import pytest
from tests.deploy_helper import pd_cluster
from tests.engine.helpers import make_engine
from tests.engine.hybrid_helpers import PATTERNS, greedy, prompt_of, save_kimi_checkpoint
from tests.serving.conftest import serving

from prfaas.deploy.launcher import free_port
from prfaas.engine.engine import Engine
from prfaas.kvcache.hybrid import StateCacheConfig

BLOCK = 16  # the workers' default block size
SHARED = prompt_of(3 * BLOCK, seed=51)
FIRST = SHARED + prompt_of(2 * BLOCK + 3, seed=52)  # snapshot at its last boundary, 80 only
SECOND = SHARED + prompt_of(12, seed=53)  # 3 blocks cached, no snapshot at 48; takes one
THIRD = SHARED + prompt_of(10, seed=54)  # hits SECOND's snapshot at 48


@pytest.fixture(scope="module")
def kimi(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_kimi_checkpoint(tmp_path_factory.mktemp("kimi-serve"), *PATTERNS["3to1_moe"])


def engine_hits(model: Path, cache_dir: Path, prompts: list[list[int]]) -> list[int]:
    """Prefix hits of the prompts, one after the other, in an engine like the workers'."""
    engine = make_engine(model, cache_dir, block_size=BLOCK, num_kv_blocks=64, dtype="float32")
    engine = Engine(engine.config, engine.loaded, StateCacheConfig())  # the workers' default
    hits = []
    for prompt in prompts:
        req = engine.add_request(prompt, greedy(1))
        while engine.has_unfinished():
            engine.step()
        hits.append(req.num_cached_tokens)
    return hits


def test_gateway_reports_the_hybrid_engines_real_hits(
    kimi: Path, tmp_path: Path, cache_dir: Path
) -> None:
    expected = engine_hits(kimi, cache_dir, [FIRST, FIRST, SECOND, THIRD])
    assert expected == [0, 5 * BLOCK, 0, 3 * BLOCK]  # block runs: 0, 80, 48, 48
    config: dict[str, object] = {
        "model": str(kimi),
        "served_model_name": "kimi",
        "port": free_port(),
        "clusters": [pd_cluster(1, 1)],
        "policy": {"name": "prfaas", "threshold_tokens": 1 << 20},
    }
    with serving(config, tmp_path, kimi) as deployed:
        client = openai.OpenAI(base_url=deployed.base_url + "/v1", api_key="x", max_retries=0)

        def cached(prompt: list[int]) -> int:
            usage = client.completions.create(
                model="kimi", prompt=prompt, max_tokens=1, temperature=0
            ).usage
            assert usage is not None and usage.prompt_tokens == len(prompt)
            details = usage.prompt_tokens_details
            return details.cached_tokens or 0 if details else 0

        assert cached(FIRST) == expected[0]
        # Its events reach the gateway with a heartbeat (every 0.5 s); FIRST again takes no
        # new snapshot, so polling with it changes nothing.
        assert poll(lambda: cached(FIRST), expected[1]) == expected[1]
        assert cached(SECOND) == expected[2]  # 3 blocks held, but no snapshot at their end
        # SECOND's snapshot at 48 arrives with a heartbeat; THIRD takes none of its own.
        assert poll(lambda: cached(THIRD), expected[3]) == expected[3]


def poll(fn: Callable[[], int], want: int, timeout_s: float = 15.0) -> int:
    """Call ``fn`` until it answers ``want`` (or time is up); it must never answer more."""
    deadline = time.monotonic() + timeout_s
    while True:
        got = fn()
        assert got <= want, "the gateway reported more than the engine can reuse"
        if got == want or time.monotonic() > deadline:
            return got
        time.sleep(0.2)
