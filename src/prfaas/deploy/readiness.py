"""When a deployment can serve: every configured path has a healthy instance and the
start-up threshold is settled. The gateway's ``/health`` answers 503 with the reason until
then (vLLM's semantics), and `prfaas serve` prints its endpoint only after.

A path here is a (cluster, role) pair the deploy config names: a request may need any of
them (the PrfaaS rule sends long prompts to the remote prefill, short ones to the PD
prefill, every one to a PD decode), so one missing makes some requests fail."""

from __future__ import annotations

from prfaas.deploy.config import DeployConfig
from prfaas.router.types import InstanceView


def missing_paths(cfg: DeployConfig, instances: list[InstanceView]) -> list[str]:
    """The configured (cluster, role) pairs with no healthy, non-draining instance, as
    ``cluster/role``, in config order."""
    serving = {(i.cluster, i.role) for i in instances if i.healthy}
    missing: list[str] = []
    for cluster in cfg.clusters:
        for role in dict.fromkeys(i.role for i in cluster.instances):
            if (cluster.name, role) not in serving:
                missing.append(f"{cluster.name}/{role}")
    return missing


def not_ready_reason(
    cfg: DeployConfig, instances: list[InstanceView], threshold_settled: bool
) -> str | None:
    """Why the deployment cannot serve every request yet; None once it can."""
    missing = missing_paths(cfg, instances)
    if missing:
        return f"no healthy instance yet for {', '.join(missing)} (cluster/role)"
    if not threshold_settled:
        return "profiling the instances for the threshold t"
    return None
