"""The admin commands' one call to a running gateway (`prfaas status`, `canary`, `rollout`):
the cluster token as admin key, a deadline, and a clear line on stderr for each failure."""

from __future__ import annotations

import sys
from typing import Any

from prfaas.config import cluster_token_from_env
from prfaas.messages import TOKEN_HEADER


def admin_call(
    command: str,
    url: str,
    path: str,
    token: str | None,
    *,
    timeout_s: float,
    body: dict[str, Any] | None = None,
    post: bool = False,
    token_required: bool = True,
) -> dict[str, Any] | int:
    """``GET`` (``POST`` with ``post`` or a ``body``) ``url`` + ``path``: the gateway's JSON
    answer, or the command's exit code once the failure is printed (2: no token where one is
    required; 1: unreachable, refused or an HTTP error). ``token`` defaults to
    ``$PRFAAS_CLUSTER_TOKEN``."""
    import httpx

    token = token or cluster_token_from_env()
    if not token and token_required:
        print(f"prfaas {command}: pass --token or set $PRFAAS_CLUSTER_TOKEN", file=sys.stderr)
        return 2
    headers = {TOKEN_HEADER: token} if token else {}
    target = url.rstrip("/") + path
    try:
        if post or body is not None:
            r = httpx.post(target, json=body, headers=headers, timeout=timeout_s)
        else:
            r = httpx.get(target, headers=headers, timeout=timeout_s)
    except httpx.HTTPError as e:
        print(f"prfaas {command}: {url} unreachable: {e}", file=sys.stderr)
        return 1
    if r.status_code == 401:
        print(f"prfaas {command}: the gateway wants its admin key: --token", file=sys.stderr)
        return 1
    if r.status_code != 200:
        print(f"prfaas {command}: HTTP {r.status_code}: {r.text[:300]}", file=sys.stderr)
        return 1
    data: dict[str, Any] = r.json()
    return data
