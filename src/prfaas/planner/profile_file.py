"""Measured prefill times from a file, for ``prfaas kv-throughput --profile FILE``.

Two formats, chosen by the suffix; lengths are uncached prompt tokens, times seconds for one
prompt on one instance:

    # profile.csv: a header row, then one row per measurement (other columns are ignored)
    num_tokens,prefill_s
    1000,0.44
    8000,0.72

    # profile.json: a list of rows, or {"points": [...]}
    [{"num_tokens": 1000, "prefill_s": 0.44}, {"num_tokens": 8000, "prefill_s": 0.72}]

At least two rows with distinct lengths; T(l) is then a least-squares polynomial of degree
min(2, rows - 1) (``TableProfile``), the fit Table 5 follows best.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

from prfaas.planner.profile import TableProfile

MAX_FILE_BYTES = 1 << 20
MAX_ROWS = 10_000


class ProfileFileError(ValueError):
    """The profile file is unreadable or malformed; the message names the row."""


def read_profile_file(path: Path) -> TableProfile:
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise ProfileFileError(f"{path}: {size} bytes, more than {MAX_FILE_BYTES}")
    text = path.read_text()
    if path.suffix.lower() == ".json":
        rows = _json_rows(path, text)
    elif path.suffix.lower() == ".csv":
        rows = list(csv.DictReader(io.StringIO(text)))
    else:
        raise ProfileFileError(f"{path}: use a .csv or .json file")
    if len(rows) > MAX_ROWS:
        raise ProfileFileError(f"{path}: more than {MAX_ROWS} rows")
    points = sorted(_point(path, i, row) for i, row in enumerate(rows))
    if len({n for n, _ in points}) != len(points) or len(points) < 2:
        raise ProfileFileError(f"{path}: need >= 2 rows with distinct num_tokens")
    return TableProfile(
        num_tokens=tuple(n for n, _ in points),
        prefill_times_s=tuple(t for _, t in points),
        degree=min(2, len(points) - 1),
    )


def _json_rows(path: Path, text: str) -> list[object]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ProfileFileError(f"{path}: not JSON: {e}") from e
    if isinstance(data, dict):
        data = data.get("points")
    if not isinstance(data, list):
        raise ProfileFileError(f"{path}: expected a list of rows or {{'points': [...]}}")
    return data


def _point(path: Path, index: int, row: object) -> tuple[float, float]:
    where = f"{path}: row {index + 1}"
    if not isinstance(row, dict):
        raise ProfileFileError(f"{where}: expected num_tokens and prefill_s")
    try:
        num_tokens, prefill_s = float(row["num_tokens"]), float(row["prefill_s"])
    except KeyError as e:
        raise ProfileFileError(f"{where}: missing {e.args[0]}") from None
    except (TypeError, ValueError):
        raise ProfileFileError(f"{where}: num_tokens and prefill_s must be numbers") from None
    if not (math.isfinite(num_tokens) and num_tokens >= 1):
        raise ProfileFileError(f"{where}: num_tokens must be >= 1, got {num_tokens}")
    if not (math.isfinite(prefill_s) and prefill_s > 0):
        raise ProfileFileError(f"{where}: prefill_s must be > 0, got {prefill_s}")
    return num_tokens, prefill_s
