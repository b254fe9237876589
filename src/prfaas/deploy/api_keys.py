"""`prfaas serve --api-key-file FILE`: API keys kept out of the command line (and so out of
``ps`` and shell history). One ``KEY=TENANT`` a line; ``#`` starts a comment line; blank
lines are skipped. Bad input is refused with the line that holds it, never the key."""

from __future__ import annotations

import logging
import re
import stat
from pathlib import Path

logger = logging.getLogger(__name__)

MAX_FILE_BYTES = 1 << 20  # checked before reading: a key file is small
MAX_KEY_CHARS = 512
_KEY = re.compile(r"[A-Za-z0-9._~+/=-]+")  # what fits in a Bearer header unquoted
_TENANT = re.compile(r"[A-Za-z0-9._-]{1,64}")


class ApiKeyFileError(ValueError):
    """The key file is unreadable or a line of it is malformed (the message names the line)."""


def load_api_key_file(path: Path) -> dict[str, str]:
    """The file's keys → their tenants. Warns if other users may read the file."""
    try:
        info = path.stat()
        if info.st_size > MAX_FILE_BYTES:
            raise ApiKeyFileError(f"{path}: {info.st_size} bytes; a key file holds at most 1 MiB")
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ApiKeyFileError(f"{path}: cannot read: {e}") from e
    if info.st_mode & stat.S_IROTH:
        logger.warning("%s is readable by every user; chmod 600 it", path)
    keys: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{path}:{number}"
        key, sep, tenant = line.rpartition("=")
        key, tenant = key.strip(), tenant.strip()
        if not sep or not key:
            raise ApiKeyFileError(f"{where}: expected KEY=TENANT")
        if len(key) > MAX_KEY_CHARS or not _KEY.fullmatch(key):
            raise ApiKeyFileError(
                f"{where}: the key must be 1 to {MAX_KEY_CHARS} characters of "
                "letters, digits and ._~+/=-"
            )
        if not _TENANT.fullmatch(tenant):
            raise ApiKeyFileError(
                f"{where}: the tenant must be 1 to 64 characters of letters, digits and ._-"
            )
        if keys.get(key, tenant) != tenant:
            raise ApiKeyFileError(f"{where}: this key was given to tenant {keys[key]!r} before")
        keys[key] = tenant
    if not keys:
        raise ApiKeyFileError(f"{path}: no KEY=TENANT line")
    return keys
