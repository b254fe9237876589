"""Tenant isolation across the cluster: two tenants sending the same long prompt never share
a block (the second one's prefill stores blocks of its own, under its own salt) and
``cached_tokens`` never reveals the other tenant's cache. The in-process version (one
engine) is tests/gateway/test_backend_errors.py::test_tenants_never_share_cached_prefixes."""

from __future__ import annotations

import time

import httpx
import openai

from tests.security.conftest import Secured

PROMPT = " ".join(f"w{(17 * i) % 180 + 9}" for i in range(86))  # 5 full blocks, above t
FULL_BLOCKS = 86 // 16


def cached_tokens(client: openai.OpenAI) -> int:
    usage = client.completions.create(
        model="tiny", prompt=PROMPT, max_tokens=2, temperature=0
    ).usage
    assert usage is not None and usage.prompt_tokens == 86
    details = usage.prompt_tokens_details
    return details.cached_tokens or 0 if details else 0


def index_blocks(secured: Secured) -> int:
    time.sleep(1.2)  # cache events reach the gateway with the next heartbeat (every 0.5 s)
    return int(httpx.get(secured.base_url + "/status").json()["kv_index_blocks"])


def until_cached(client: openai.OpenAI) -> int:
    for _ in range(20):
        if cached := cached_tokens(client):
            return cached
        time.sleep(0.25)
    return 0


def test_same_prompt_two_tenants_share_no_block(secured: Secured) -> None:
    def client(key: str) -> openai.OpenAI:
        return openai.OpenAI(base_url=secured.base_url + "/v1", api_key=key, max_retries=0)

    alice, carol = client("key-alice"), client("key-carol")
    assert cached_tokens(alice) == 0
    assert until_cached(alice) >= 16 * FULL_BLOCKS  # alice's own repeat hits her cache
    before = index_blocks(secured)
    # carol, same prompt: nothing cached for her, and her prefill stores blocks of its own
    # (under her salt) rather than reusing alice's: the index grows by every full block.
    assert cached_tokens(carol) == 0
    assert index_blocks(secured) - before >= FULL_BLOCKS
    assert until_cached(carol) >= 16 * FULL_BLOCKS  # her own cache, now
