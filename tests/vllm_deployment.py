"""The session's one vLLM deployment: `prfaas serve --engine vllm` on a tiny random Llama with
a byte-level tokenizer (JSON and tool calls need real text) and a tools-aware chat template.

Every vLLM test that needs a served deployment uses this one (``vllm_bytes``, registered in
tests/conftest.py): the API tests' vLLM cases (tests/api) and the serving tests
(tests/integrations/test_vllm_serve.py). Engine starts dominate the vLLM tests' time (three
engines on 2 shared cores: 1.5 to 6 minutes), so they start once per session. A test that
damages the deployment (the serving tests' last one kills the PrfaaS prefill instance)
must run after every other user: tests/api is collected before tests/integrations.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

# A tools-aware template that renders plain chats too: the deployment serves both the
# structured-output and the tool tests.
TOOLS_TEMPLATE = (
    "{% if tools %}tools:{% for t in tools %} {{ t.function.name }}{% endfor %}\n{% endif %}"
    "{% for m in messages %}{% if m.tool_calls %}{% for c in m.tool_calls %}"
    "<tool_call>{{ c.function | tojson }}</tool_call>{% endfor %}"
    "{% else %}{{ m.role }}: {{ m.content }}{% endif %}\n{% endfor %}assistant:"
)
VLLM_TOKEN = "vllm-tests-cluster-token"
# Tenant -> API key of the serving tests' two tenants (vLLM's prefix cache must never share
# blocks across them); the API tests' tenant "acme" has tests/gateway's API_KEY.
KEYS = {"alice": "key-alice", "carol": "key-carol"}
MODEL = "bytes"  # the served model name
THRESHOLD_TOKENS = 32  # a prompt over one block takes the remote path
# Three vLLM engines starting side by side on 2 shared cores: over 5 minutes at load 16.
VLLM_START_S = 900.0


@dataclass
class Deployed:
    base_url: str
    folder: Path  # the checkpoint it serves


def byte_level_checkpoint(folder: Path) -> Path:
    """A tiny random Llama whose tokenizer spells any text byte by byte. Heads of 32 dims:
    the smallest vLLM's CPU attention takes (the reference engine takes any)."""
    from tests.conftest import make_tiny_checkpoint
    from tests.engine.test_structured_outputs import VOCAB, _byte_level_tokenizer

    make_tiny_checkpoint(folder, "llama", vocab_size=VOCAB, hidden_size=128)
    _byte_level_tokenizer(folder)
    return folder


@pytest.fixture(scope="session")
def vllm_bytes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployed]:
    """`prfaas serve --engine vllm` on ``byte_level_checkpoint`` with ``TOOLS_TEMPLATE``,
    once per session: the standard topology (PD cluster pd-p-0, pd-d-0; PrfaaS cluster
    prfaas-0; the emulated WAN link with mutual TLS), t = 32 tokens, so grammars, penalties
    and logprobs cross the KV hand-off too."""
    from transformers import AutoTokenizer

    from prfaas.deploy.launcher import free_port
    from tests.deploy_helper import deploy, topology
    from tests.gateway.conftest import API_KEY

    tmp = tmp_path_factory.mktemp("vllm-bytes")
    folder = byte_level_checkpoint(tmp / "bytes")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.chat_template = TOOLS_TEMPLATE  # the gateway reads it from the folder
    tokenizer.save_pretrained(folder)
    config = topology(
        folder,
        free_port(),
        served_model_name=MODEL,
        threshold_tokens=THRESHOLD_TOKENS,
        link={"rtt_ms": 2.0},
        tenants=[{"name": t, "api_keys": [k]} for t, k in {"acme": API_KEY, **KEYS}.items()],
        kv_deadline_s=60.0,
        # Six vLLM engines share 2 cores while the tier's three sessions run: a worker's
        # heartbeats can lapse past the default 3 s, and an instance counted unhealthy
        # takes no requests (a remote prompt would go local and its test wait for nothing).
        heartbeat_timeout_s=10.0,
        engine="vllm",
        max_model_len=512,
    )
    # One unbound OpenMP thread and a small KV pool each (docs/vllm.md: shared cores; an
    # engine's worker holds about 1.3 GB besides its pool, 1 GiB pools got one OOM-killed).
    for cluster in config["clusters"]:
        for inst in cluster["instances"]:
            inst |= {"num_threads": 1, "kv_cache_gb": 0.25}
    with deploy(config, tmp, VLLM_TOKEN, start_s=VLLM_START_S) as running:
        yield Deployed(running.base_url, folder)
