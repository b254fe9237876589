"""Path policies: PD-P or PrfaaS, and from which cluster, for one request. Pure functions of
their arguments; the ``Router`` does residency, the kv index and instance choice around them.

Contract of ``PathPolicy.choose``: ``cached_tokens`` maps each *allowed* cluster to the
longest prefix (tokens) any of its instances holds, at most ``prompt_len - 1`` (one token is
always computed); ``prfaas_clusters`` are the allowed PrfaaS clusters (empty when residency
forbids them, and then the answer must be PD-P). The answer's ``incremental_tokens`` is what
the prefill computes if the cluster-level prefix is used.

The PrfaaS rule (paper section 3.4.3), threshold t from ``RouterState``:
- scarce bandwidth: each cluster's cache is judged on its own:
  ``prompt_len - cached[pd] <= t`` → PD-P, else PrfaaS (incremental = prompt - cached[prfaas]).
- abundant bandwidth: ``l_prefix = max over clusters``; ``prompt_len - l_prefix <= t`` → PD-P,
  else PrfaaS; if the longer prefix sits in the other cluster it is pulled across first.
  The two rules differ only where abundant mode pulls. With the control loop's measured
  ``PathCosts`` in the state (the adaptive policy), abundant mode pulls a prefix into PrfaaS
  only when that is estimated to give the earlier first token:
  ``pull_tokens · pull_s_per_token + wait_s[prfaas] + T_prfaas(prompt - cached[pd])``
  against ``wait_s[c] + T_c(l_inc)`` for the scarce rule's answer, which it gets otherwise;
  that also holds where the remainder is under t (the scarce rule would compute it on the
  slower PD-P). A pull *into PD-P* (remainder under t, the longer prefix on PrfaaS) is judged
  the same way, except where PD-P is more than ``SLOWER_RATIO`` times slower than PrfaaS at
  the prompt's whole length (heterogeneous hardware): then it is never taken, as the prefix
  would sit in PD-P and keep the requests that follow it there (the scarce rule sends a
  short remainder local), so a pull that wins for one request loses over the ones after it,
  which the estimate cannot see (measured in ``docs/simulator.md``, "Where the adaptive
  policy pulls"). (The KV a PrfaaS prefill ships streams layer by layer during the prefill,
  so it is left out of both sides.)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from prfaas.router.types import PathChoice, PathCosts, RouteRequest, RouterState


class PathPolicy(Protocol):
    name: str

    def choose(
        self,
        request: RouteRequest,
        cached_tokens: Mapping[str, int],
        pd_cluster: str,
        prfaas_clusters: Sequence[str],
        state: RouterState,
    ) -> PathChoice: ...


def _local(request: RouteRequest, cached: Mapping[str, int], pd: str) -> PathChoice:
    return PathChoice("pd-p", pd, request.prompt_len - cached.get(pd, 0))


def _best_prfaas(cached: Mapping[str, int], prfaas_clusters: Sequence[str]) -> str:
    """The PrfaaS cluster with the longest cached prefix (first listed on ties)."""
    return max(prfaas_clusters, key=lambda c: cached.get(c, 0))


class HomogeneousPolicy:
    """Everything prefilled in the local PD cluster (the paper's baseline)."""

    name = "homogeneous"

    def choose(
        self,
        request: RouteRequest,
        cached_tokens: Mapping[str, int],
        pd_cluster: str,
        prfaas_clusters: Sequence[str],
        state: RouterState,
    ) -> PathChoice:
        return _local(request, cached_tokens, pd_cluster)


class NaivePolicy:
    """Every prefill on PrfaaS, every decode local: no length routing (t = 0)."""

    name = "naive"

    def choose(
        self,
        request: RouteRequest,
        cached_tokens: Mapping[str, int],
        pd_cluster: str,
        prfaas_clusters: Sequence[str],
        state: RouterState,
    ) -> PathChoice:
        if not prfaas_clusters:  # residency keeps this tenant local
            return _local(request, cached_tokens, pd_cluster)
        cluster = _best_prfaas(cached_tokens, prfaas_clusters)
        return PathChoice("prfaas", cluster, request.prompt_len - cached_tokens.get(cluster, 0))


class PrfaasThreshold:
    """The paper's length-threshold rule with scarce/abundant modes (module docstring)."""

    name = "prfaas"

    def choose(
        self,
        request: RouteRequest,
        cached_tokens: Mapping[str, int],
        pd_cluster: str,
        prfaas_clusters: Sequence[str],
        state: RouterState,
    ) -> PathChoice:
        if not prfaas_clusters:
            return _local(request, cached_tokens, pd_cluster)
        remote = _best_prfaas(cached_tokens, prfaas_clusters)
        l_pd, l_remote = cached_tokens.get(pd_cluster, 0), cached_tokens.get(remote, 0)
        l_total, t = request.prompt_len, state.threshold_tokens
        if l_total - l_pd <= t:
            scarce = PathChoice("pd-p", pd_cluster, l_total - l_pd)
        else:
            scarce = PathChoice("prfaas", remote, l_total - l_remote)
        if state.mode == "scarce":
            return scarce
        if state.costs is None:  # the paper's rule alone
            l_prefix = max(l_pd, l_remote)
            if l_total - l_prefix <= t:
                pull = remote if l_remote > l_pd else None
                return PathChoice("pd-p", pd_cluster, l_total - l_prefix, pull_from=pull)
            pull = pd_cluster if l_pd > l_remote else None
            return PathChoice("prfaas", remote, l_total - l_prefix, pull_from=pull)
        if l_pd > l_remote:
            pulled = PathChoice("prfaas", remote, l_total - l_pd, pull_from=pd_cluster)
        elif l_remote > l_pd and l_total - l_remote <= t:
            pulled = PathChoice("pd-p", pd_cluster, l_total - l_remote, pull_from=remote)
            if _slower(state.costs, pd_cluster, remote, l_total):
                return scarce  # its later requests would stay on the slower side
        else:
            return scarce
        pull_tokens = abs(l_pd - l_remote)
        if _ttft_s(state.costs, pulled, pull_tokens) < _ttft_s(state.costs, scarce, 0):
            return pulled
        return scarce


# PD-P this many times slower than PrfaaS at a prompt's whole length: no pull into PD-P.
SLOWER_RATIO = 1.5


def _slower(costs: PathCosts, cluster: str, other: str, tokens: int) -> bool:
    mine, theirs = costs.prefill.get(cluster), costs.prefill.get(other)
    if mine is None or theirs is None:
        return False
    return mine.seconds(tokens) > SLOWER_RATIO * theirs.seconds(tokens)


def _ttft_s(costs: PathCosts, choice: PathChoice, pull_tokens: int) -> float:
    """Estimated time to the end of the prefill on ``choice`` (``PathCosts``)."""
    cluster = choice.prefill_cluster
    model = costs.prefill.get(cluster)
    if model is None:
        return float("inf")
    pull_s = pull_tokens * costs.pull_s_per_token if pull_tokens > 0 else 0.0
    return pull_s + costs.wait_s.get(cluster, 0.0) + model.seconds(choice.incremental_tokens)


POLICIES: dict[str, type[HomogeneousPolicy] | type[NaivePolicy] | type[PrfaasThreshold]] = {
    "homogeneous": HomogeneousPolicy,
    "naive": NaivePolicy,
    "prfaas": PrfaasThreshold,
}
