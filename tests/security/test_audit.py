"""The audit log: one JSON line per cross-cluster KV transfer with who, how much, where and
how it ended, and never any prompt text or token ids."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import openai

from prfaas.deploy.launcher import free_port
from prfaas.dispatch.cluster import ClusterBackend
from prfaas.dispatch.config import BackendSettings
from prfaas.gateway.fleet import WorkerFleet
from prfaas.messages import KvTarget, PrefillCommand, SamplingSpec, WorkerInfo
from prfaas.router.kv_index import KvIndex
from prfaas.router.policies import POLICIES
from prfaas.router.router import Router, RouterConfig
from prfaas.router.types import RouteDecision, RouterState
from prfaas.transfer.audit import AuditLog, AuditRecord
from tests.security.conftest import Secured

LONG = " ".join(f"w{(11 * i) % 190 + 7}" for i in range(80))  # above t: prefilled remotely
SHORT = " ".join(f"w{i}" for i in range(30, 40))  # below t: prefilled in the local cluster
FIELDS = {
    "event",
    "ts",
    "request_id",
    "tenant",
    "kv_bytes",
    "wire_bytes",
    "link",
    "source_cluster",
    "source_instance",
    "destination_cluster",
    "destination_instance",
    "outcome",
    "reason",
    "seconds",
}


def audit_lines(
    path: Path, request_id: str, timeout_s: float = 10.0, event: str = "kv_transfer"
) -> list[dict[str, object]]:
    """The ``event`` lines of ``request_id`` (a transfer's is written when the prefill
    reports)."""
    end_s = time.monotonic() + timeout_s
    while True:
        text = path.read_text() if path.exists() else ""
        lines = [json.loads(line) for line in text.splitlines()]
        found = [
            line for line in lines if (line["request_id"], line["event"]) == (request_id, event)
        ]
        if found or time.monotonic() > end_s:
            return found
        time.sleep(0.1)


def test_a_cross_cluster_transfer_has_one_audit_line_without_prompt_text(
    secured: Secured,
) -> None:
    client = openai.OpenAI(base_url=secured.base_url + "/v1", api_key="key-carol", max_retries=0)
    raw = client.completions.with_raw_response.create(
        model="tiny", prompt=LONG, max_tokens=4, temperature=0
    )
    assert raw.headers["x-prfaas-route"].split()[0] == "prfaas"
    completion = raw.parse()
    [line] = audit_lines(secured.audit_log, completion.id)
    assert set(line) == FIELDS
    assert line["event"] == "kv_transfer" and line["outcome"] == "ok" and line["reason"] is None
    assert line["tenant"] == "carol"
    assert (line["source_cluster"], line["source_instance"]) == ("remote", "prfaas-0")
    assert (line["destination_cluster"], line["destination_instance"]) == ("local", "pd-d-0")
    assert line["link"] == "remote->local"
    assert isinstance(line["kv_bytes"], int) and line["kv_bytes"] > 0
    assert isinstance(line["wire_bytes"], int) and line["wire_bytes"] >= line["kv_bytes"]
    assert isinstance(line["seconds"], float) and line["seconds"] > 0
    # ... and one line saying where the request went: every cluster it touched.
    [routed] = audit_lines(secured.audit_log, completion.id, event="request")
    assert (routed["tenant"], routed["outcome"], routed["region"]) == ("carol", "routed", "local")
    assert (routed["clusters"], routed["instances"]) == (
        ["remote", "local"],
        ["prfaas-0", "pd-d-0"],
    )

    local = client.completions.create(model="tiny", prompt=SHORT, max_tokens=2, temperature=0)
    assert audit_lines(secured.audit_log, local.id, timeout_s=2.0) == []  # not cross-cluster

    text = secured.audit_log.read_text()
    for word in set(LONG.split()) | set(SHORT.split()):
        assert word not in text


def test_audit_log_file_gets_whole_lines_and_cuts_reasons(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "sub" / "audit.jsonl")
    record = AuditRecord(
        request_id="cmpl-1",
        tenant="t",
        kv_bytes=0,
        wire_bytes=0,
        link="a->b",
        source_cluster="a",
        source_instance="a-0",
        destination_cluster="b",
        destination_instance="b-0",
        outcome="failed",
        reason="x" * 5000,
        seconds=1.5,
    )
    log.transfer(record)
    log.transfer(record)
    log.close()
    lines = (tmp_path / "sub" / "audit.jsonl").read_text().splitlines()
    assert len(lines) == 2
    assert all(len(json.loads(line)["reason"]) == 200 for line in lines)
    assert (tmp_path / "sub" / "audit.jsonl").stat().st_mode & 0o777 == 0o600


def test_a_failed_cross_cluster_transfer_is_audited_as_failed(tmp_path: Path) -> None:
    """The prefill worker is unreachable (a closed port): the line says failed, and why."""
    fleet = WorkerFleet({"local": "pd", "remote": "prfaas"}, KvIndex())
    fleet.register(
        WorkerInfo(
            name="pd-d-0",
            cluster="local",
            role="decode",
            http_url=f"http://127.0.0.1:{free_port()}",
            kv_host="127.0.0.1",
            kv_port=1,
            fingerprint="ab" * 16,
            model_name="tiny",
            max_model_len=512,
            block_size=16,
            epoch=1,
        )
    )
    log = AuditLog(tmp_path / "audit.jsonl")
    router = Router(
        RouterConfig(block_tokens=16), POLICIES["prfaas"](), fleet, KvIndex(), RouterState(64.0)
    )
    backend = ClusterBackend(BackendSettings("tiny", "t"), fleet, router, None, 512, audit=log)
    prompt = [int(w[1:]) for w in LONG.split()]
    cmd = PrefillCommand(
        request_id="cmpl-failed",
        prompt_token_ids=prompt,
        params=SamplingSpec(),
        tenant_salt_hex="00" * 32,
        target=KvTarget(host="127.0.0.1", port=1, link="remote->local", tls=True),
        deadline_s=5.0,
    )
    decision = RouteDecision(
        request_id="cmpl-failed",
        path="prfaas",
        prefill_cluster="remote",
        prefill_instance="prfaas-0",
        decode_instance="pd-d-0",
        cached_tokens=0,
        incremental_tokens=len(prompt),
    )
    dead = f"http://127.0.0.1:{free_port()}"
    decode = fleet.workers["pd-d-0"].info.model_copy(update={"http_url": dead})
    prefill_info = decode.model_copy(
        update={"name": "prfaas-0", "cluster": "remote", "role": "prefill"}
    )

    async def prefill() -> None:
        hits: list[int] = []
        await backend._prefill(
            prefill_info, decode, cmd, decision, "alice", hits.append, asyncio.Event()
        )
        assert hits == []  # a failed prefill reports no prefix hit
        await backend.aclose()

    asyncio.run(prefill())
    [line] = audit_lines(tmp_path / "audit.jsonl", "cmpl-failed", timeout_s=0)
    assert line["outcome"] == "failed" and line["reason"]
    assert (line["tenant"], line["kv_bytes"], line["link"]) == ("alice", 0, "remote->local")
    assert (line["source_instance"], line["source_cluster"]) == ("prfaas-0", "remote")
    assert str(prompt[:3])[1:-1] not in (tmp_path / "audit.jsonl").read_text()
