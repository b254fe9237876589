"""The canary's judgement of one path against its reference, its bounds per codec, the paths
it enumerates and the quarantine the router obeys: plain data, no engine."""

from __future__ import annotations

import pytest

from prfaas.canary.board import CanaryBoard
from prfaas.canary.paths import CanaryPath, enumerate_paths
from prfaas.canary.verdict import DEFAULT_BOUNDS, Bound, PathOutput, bound_for, judge
from prfaas.messages import WorkerInfo
from prfaas.router.kv_index import KvIndex
from prfaas.router.policies import POLICIES
from prfaas.router.router import Router, RouterConfig
from prfaas.router.types import ClusterView, InstanceView, RouteRequest, RouterState

RAW = DEFAULT_BOUNDS["raw"]


def out(tokens: list[int], logprobs: list[float] | None = None, computed: int = 0) -> PathOutput:
    return PathOutput(tuple(tokens), tuple(logprobs or []), computed)


def test_identical_runs_pass_and_report_their_logprob_gap() -> None:
    v = judge(
        out([1, 2, 3], [-0.5, -1.0, -2.0]),
        out([1, 2, 3], [-0.50005, -1.0, -2.0]),
        shipped=True,
        bound=RAW,
    )
    assert v.ok and v.first_divergence is None and v.max_abs_dlogprob == pytest.approx(5e-5)


def test_a_different_token_fails_raw_and_names_its_position() -> None:
    v = judge(out([1, 2, 3, 4]), out([1, 2, 9, 4]), shipped=True, bound=RAW)
    assert not v.ok and v.first_divergence == 2 and "position 2" in v.reason


def test_a_shorter_run_diverges_where_it_ends() -> None:
    v = judge(out([1, 2, 3]), out([1, 2]), shipped=True, bound=RAW)
    assert not v.ok and v.first_divergence == 2


def test_logprob_gap_counts_only_the_common_prefix() -> None:
    # Past the divergence the logprobs are of other tokens: not a codec error.
    ref = out([1, 2, 3], [-1.0, -1.0, -1.0])
    run = out([1, 5, 3], [-1.2, -9.0, -1.0])
    lossy = Bound(identical_tokens=False, max_abs_dlogprob=0.5)
    v = judge(ref, run, shipped=True, bound=lossy)
    assert v.ok and v.first_divergence == 1 and v.max_abs_dlogprob == pytest.approx(0.2)
    assert not judge(ref, run, shipped=True, bound=Bound(False, 0.1)).ok


def test_a_decode_side_that_recomputed_a_shipped_prompt_is_fake_disaggregation() -> None:
    same = out([1, 2, 3])
    faked = judge(same, out([1, 2, 3], computed=40), shipped=True, bound=RAW)
    assert not faked.ok and faked.fake_disaggregation and "fake disaggregation" in faked.reason
    # Computing the prompt is what a path without shipped KV does.
    assert judge(same, out([1, 2, 3], computed=40), shipped=False, bound=RAW).ok


def test_a_codecs_bound_is_its_lossy_stages() -> None:
    assert bound_for("raw+zstd") == RAW
    assert bound_for("int8+lz4") == DEFAULT_BOUNDS["int8"]
    assert not bound_for("int8").identical_tokens


def info(name: str, role: str, cluster: str) -> WorkerInfo:
    return WorkerInfo(
        name=name, cluster=cluster, role=role, http_url=f"http://{name}", kv_host="127.0.0.1",
        kv_port=1, fingerprint="ab" * 32, model_name="m", max_model_len=512, block_size=16,
        epoch=1,
    )  # fmt: skip


def test_every_prefill_instance_feeds_every_decode_instance_after_its_reference() -> None:
    workers = [
        info("pd-p-0", "prefill", "local"),
        info("pd-d-1", "decode", "local"),
        info("pd-d-0", "decode", "local"),
        info("prfaas-0", "prefill", "remote"),
    ]

    def link_of(cluster: str, decode: WorkerInfo) -> tuple[str, str]:
        return ("local", "raw") if cluster == "local" else ("remote->local", "int8")

    paths = enumerate_paths(workers, link_of)
    assert [p.name for p in paths] == [
        "pd-d-0 (reference)",
        "pd-p-0 -[local, raw]-> pd-d-0",
        "prfaas-0 -[remote->local, int8]-> pd-d-0",
        "pd-d-1 (reference)",
        "pd-p-0 -[local, raw]-> pd-d-1",
        "prfaas-0 -[remote->local, int8]-> pd-d-1",
    ]


class Fleet:
    def __init__(self, instances: list[InstanceView]) -> None:
        self._instances = instances

    def clusters(self) -> list[ClusterView]:
        return [ClusterView("local", "pd"), ClusterView("remote", "prfaas")]

    def instances(self) -> list[InstanceView]:
        return self._instances


def test_the_router_avoids_a_quarantined_path_and_returns_to_it() -> None:
    fleet = Fleet(
        [
            InstanceView("pd-p-0", "local", "prefill"),
            InstanceView("pd-d-0", "local", "decode"),
            InstanceView("pd-d-1", "local", "decode", load=3),
            InstanceView("prfaas-0", "remote", "prefill"),
        ]
    )
    router = Router(
        RouterConfig(block_tokens=16), POLICIES["prfaas"](), fleet, KvIndex(), RouterState(100.0)
    )
    board = CanaryBoard(quarantine=True)
    router.quarantined = board.is_quarantined
    long = RouteRequest("r", "t", prompt_len=500)
    first = router.route(long)
    assert (first.prefill_instance, first.decode_instance) == ("prfaas-0", "pd-d-0")

    bad = CanaryPath("prfaas-0", "pd-d-0", "remote->local", "raw")
    board.judged(bad, judge(out([1, 2]), out([1, 3]), shipped=True, bound=RAW), now_s=1.0)
    assert board.is_quarantined("prfaas-0", "pd-d-0")
    # pd-d-0 still has its local prefill path; the long prompt takes that (PD-P) instead.
    avoided = router.route(long)
    assert (avoided.prefill_instance, avoided.decode_instance) == ("pd-p-0", "pd-d-0")

    board.judged(CanaryPath("pd-p-0", "pd-d-0"), judge(out([1]), out([2]), shipped=True,
                                                      bound=RAW), now_s=2.0)  # fmt: skip
    # Both of pd-d-0's paths are quarantined: the busier pd-d-1 takes it, remote again.
    moved = router.route(long)
    assert (moved.prefill_instance, moved.decode_instance) == ("prfaas-0", "pd-d-1")

    board.judged(bad, judge(out([1, 2]), out([1, 2]), shipped=True, bound=RAW), now_s=3.0)
    back = router.route(long)
    assert (back.prefill_instance, back.decode_instance) == ("prfaas-0", "pd-d-0")


def test_without_quarantine_a_failing_path_is_only_reported() -> None:
    board = CanaryBoard(quarantine=False)
    path = CanaryPath("prfaas-0", "pd-d-0", "remote->local", "raw")
    board.judged(path, judge(out([1, 2]), out([1, 3]), shipped=True, bound=RAW), now_s=1.0)
    assert not board.is_quarantined("prfaas-0", "pd-d-0")
    (row,) = board.report()
    assert row["ok"] is False and row["failures"] == 1 and row["first_divergence"] == 1
