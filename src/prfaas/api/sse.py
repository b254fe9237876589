"""Server-sent events as OpenAI streams them: ``data: {json}`` blocks, then ``data: [DONE]``."""

from __future__ import annotations

import json

from pydantic import BaseModel

DONE = b"data: [DONE]\n\n"


def event(payload: BaseModel) -> bytes:
    """One event; ``None`` fields are left out, as the OpenAI clients expect of chunks."""
    return b"data: " + payload.model_dump_json(exclude_none=True).encode() + b"\n\n"


def error_event(payload: BaseModel) -> bytes:
    return b"data: " + json.dumps(payload.model_dump()).encode() + b"\n\n"
