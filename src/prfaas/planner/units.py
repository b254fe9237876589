"""Unit conversions and token-count parsing shared by the planner's config and CLI."""

from __future__ import annotations

MIB = 2**20  # bytes
BITS_PER_BYTE = 8
GBPS = 1e9  # bit/s
TOKEN_SUFFIXES = {"K": 1024, "M": 1024 * 1024}


def parse_tokens(value: object) -> int:
    """A token count: an int, or a string with a binary suffix ("128K" = 131072, "1M").

    Context lengths are quoted in binary thousands (a "128K" window holds 131072 tokens);
    write a plain integer where decimal thousands are meant.
    """
    if isinstance(value, bool):
        raise ValueError(f"expected a token count, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        text = value.strip().replace("_", "")
        suffix = text[-1:].upper()
        try:
            if suffix in TOKEN_SUFFIXES:
                return round(float(text[:-1]) * TOKEN_SUFFIXES[suffix])
            return int(text)
        except ValueError:
            pass
    raise ValueError(f"expected a token count like 8192 or '8K', got {value!r}")


def bytes_per_s_to_gbps(bytes_per_s: float) -> float:
    return bytes_per_s * BITS_PER_BYTE / GBPS


def gbps_to_bytes_per_s(gbps: float) -> float:
    return gbps * GBPS / BITS_PER_BYTE


def format_tokens(num_tokens: float) -> str:
    """Human form in decimal thousands, as the paper prints thresholds ("19.4K")."""
    if num_tokens >= 1000:
        return f"{num_tokens / 1000:.1f}K"
    return f"{num_tokens:.0f}"
