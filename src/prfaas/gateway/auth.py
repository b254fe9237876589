"""API key → tenant, and the tenant's cache salt.

The salt is HMAC-SHA256(server secret, tenant): derived here from the authenticated tenant,
never taken from the client, and the same for every tier that hashes blocks (engine prefix
cache, kv index, transfer), so one tenant can never hit another's cached KV.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass

from prfaas.api.errors import APIError


@dataclass(frozen=True)
class Tenant:
    name: str
    salt: bytes


def tenant_salt(server_secret: bytes, tenant: str) -> bytes:
    return hmac.new(server_secret, tenant.encode("utf-8"), hashlib.sha256).digest()


class Authenticator:
    def __init__(self, api_keys: Mapping[str, str], server_secret: bytes, default_tenant: str):
        self._keys = [(k.encode("utf-8"), t) for k, t in api_keys.items()]
        self._tenants = {
            t: Tenant(t, tenant_salt(server_secret, t))
            for t in {*api_keys.values(), default_tenant}
        }
        self._default = self._tenants[default_tenant]

    def authenticate(self, authorization: str | None) -> Tenant:
        """The caller's tenant from an ``Authorization: Bearer KEY`` header, or 401."""
        if not self._keys:
            return self._default
        scheme, _, key = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise _unauthorized("You didn't provide an API key (Authorization: Bearer KEY).")
        given = key.strip().encode("utf-8", "replace")
        tenant: str | None = None
        for known, name in self._keys:  # compare against every key: no early exit
            if hmac.compare_digest(known, given):
                tenant = name
        if tenant is None:
            raise _unauthorized("Incorrect API key provided.")
        return self._tenants[tenant]


def _unauthorized(message: str) -> APIError:
    return APIError(401, message, code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
