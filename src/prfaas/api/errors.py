"""Errors as the OpenAI API reports them: ``{"error": {"message", "type", "param", "code"}}``."""

from __future__ import annotations

import json

from starlette.responses import Response

from prfaas.api.protocol import ErrorInfo, ErrorResponse

_TYPES = {  # any other status (4xx: 400, 401, 404, 405, 413, ...): invalid_request_error
    429: "rate_limit_exceeded",
    500: "server_error",
    502: "server_error",
    503: "service_unavailable",
}


class APIError(Exception):
    """A request refused with an HTTP status; the message never echoes raw client input."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.headers = headers or {}

    def body(self) -> ErrorResponse:
        kind = _TYPES.get(self.status, "invalid_request_error")
        return ErrorResponse(
            error=ErrorInfo(message=self.message, type=kind, param=self.param, code=self.code)
        )

    def response(self) -> Response:
        # ASCII-escaped JSON: a message can never fail to encode (e.g. a lone surrogate).
        content = json.dumps(self.body().model_dump())
        return Response(content, self.status, self.headers, media_type="application/json")
