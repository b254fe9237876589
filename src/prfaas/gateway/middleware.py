"""ASGI middleware: a bounded request body, and the ``x-prfaas-route`` header on every response.

The body is read here, up to ``max_body_bytes`` (413 beyond, whatever Content-Length
claims) and within ``body_timeout_s`` of the headers (408 after: a slow-loris trickle holds
nothing for longer), and replayed to the app, so no handler ever buffers an unbounded body.
"""

from __future__ import annotations

import asyncio

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from prfaas.api.errors import APIError

ROUTE_HEADER = "x-prfaas-route"
VERSION_HEADER = "x-prfaas-model-version"  # name@version of the model version that served
SESSION_HEADER = "x-prfaas-session"  # a client's session key: it keeps one model version


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_body_bytes: int, body_timeout_s: float) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.body_timeout_s = body_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        send = _with_route_header(send)
        try:
            body = await asyncio.wait_for(self._read_body(scope, receive), self.body_timeout_s)
        except TimeoutError:
            message = f"the request body did not arrive within {self.body_timeout_s:g} s"
            await APIError(408, message).response()(scope, receive, send)
            return
        except APIError as exc:
            await exc.response()(scope, receive, send)
            return
        if body is None:
            return  # the client went away while sending
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: wait for the disconnect, as usual

        await self.app(scope, replay, send)

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes | None:
        for name, value in scope["headers"]:
            if name == b"content-length":
                if not value.isdigit():
                    raise APIError(400, "invalid Content-Length header")
                if int(value) > self.max_body_bytes:
                    raise self._too_large()
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                raise self._too_large()
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    def _too_large(self) -> APIError:
        return APIError(413, f"the request body is larger than {self.max_body_bytes} bytes")


def _with_route_header(send: Send) -> Send:
    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = list(message.get("headers", []))
            if not any(name.lower() == ROUTE_HEADER.encode() for name, _ in headers):
                headers.append((ROUTE_HEADER.encode(), b"gateway"))
                message = {**message, "headers": headers}
        await send(message)

    return wrapped
