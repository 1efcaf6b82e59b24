"""Plain ASGI middleware (streaming-safe): API-key check on `/v1`, request body size limit."""

from __future__ import annotations

import secrets

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import APIError


async def _send_error(err: APIError, scope: Scope, receive: Receive, send: Send) -> None:
    await err.response(scope.get("path"))(scope, receive, send)


class APIKeyMiddleware:
    """Every `/v1` route needs the key, as `Authorization: Bearer <key>` (OpenAI clients) or
    `x-api-key: <key>` (Anthropic clients); 401 otherwise."""

    def __init__(self, app: ASGIApp, api_key: str) -> None:
        self.app = app
        self._key = api_key.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/v1") \
                or scope.get("method") == "OPTIONS":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        auth = headers.get(b"authorization", b"")
        scheme, _, token = auth.partition(b" ")
        if scheme.lower() != b"bearer":
            token = headers.get(b"x-api-key", b"")
        if not token or not secrets.compare_digest(token.strip(), self._key):
            given = auth or headers.get(b"x-api-key")
            message = ("Missing API key: send 'Authorization: Bearer <key>' or 'x-api-key: "
                       "<key>'" if not given else "Incorrect API key provided")
            err = APIError(message, status=401, code="invalid_api_key")
            await _send_error(err, scope, receive, send)
            return
        await self.app(scope, receive, send)


class BodyLimitMiddleware:
    """Refuses request bodies over `max_bytes` with 413, before any route reads them.

    The body is read here (bounded) and handed to the app again, so chunked uploads that
    send no Content-Length are bounded too.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _too_large(self, size: int | None) -> APIError:
        what = f"{size} bytes" if size is not None else "the body"
        return APIError(f"request body too large: {what} over the limit of {self.max_bytes} "
                        "bytes", status=413, code="request_too_large")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            await _send_error(self._too_large(int(length)), scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body = message.get("body", b"")
            size += len(body)
            if size > self.max_bytes:
                await _send_error(self._too_large(None), scope, receive, send)
                return
            chunks.append(body)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

