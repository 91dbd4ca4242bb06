"""Plain ASGI middleware: API key check and request body cap (the request guard is in guard.py)."""

from __future__ import annotations

import hmac
import json
from typing import Protocol

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from proxy.config.settings import MAX_API_BODY_BYTES
from proxy.errors import PayloadTooLarge

OPEN_PATHS = frozenset({"/healthz"})


async def send_json(send: Send, status: int, body: dict[str, str], extra: list[tuple[bytes, bytes]] = []) -> None:  # noqa: B006
    payload = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()), *extra]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


class BrowserLogin(Protocol):
    """Another way in for the pages it covers (the inspector's login cookie), with its own challenge."""

    def covers(self, path: str) -> bool: ...

    def lets_in(self, scope: Scope) -> bool: ...

    async def challenge(self, scope: Scope, receive: Receive, send: Send) -> None: ...


class ApiKeyMiddleware:
    """With an API key set, every route but /healthz requires `Authorization: Bearer <key>`; the paths a
    browser login covers also take its cookie, and answer its login form instead of the JSON 401."""

    def __init__(self, app: ASGIApp, api_key: str | None, login: BrowserLogin | None = None) -> None:
        self.app = app
        self.expected = f"Bearer {api_key}".encode() if api_key else None
        self.login = login

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.expected is None or scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        given = dict(scope["headers"]).get(b"authorization", b"")
        if not hmac.compare_digest(given, self.expected):
            if self.login is not None and self.login.covers(scope["path"]):
                if self.login.lets_in(scope):
                    await self.app(scope, receive, send)
                else:
                    await self.login.challenge(scope, receive, send)
                return
            await send_json(
                send,
                401,
                {"message": "Authorization: a valid 'Bearer <api key>' header is required"},
                [(b"www-authenticate", b"Bearer")],
            )
            return
        await self.app(scope, receive, send)


class BodyLimitMiddleware:
    """Refuse request bodies over the cap with 413, by Content-Length or by counting a chunked body."""

    def __init__(self, app: ASGIApp, max_bytes: int = MAX_API_BODY_BYTES) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(send)
            return
        seen = 0

        async def counting_receive() -> Message:
            # A chunked body has no Content-Length: count it as it arrives. The app's
            # ProxyError handler turns the exception into the 413 answer.
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise PayloadTooLarge(too_large_message(self.max_bytes))
            return message

        await self.app(scope, counting_receive, send)

    async def _refuse(self, send: Send) -> None:
        await send_json(send, 413, {"message": too_large_message(self.max_bytes)})


def too_large_message(max_bytes: int) -> str:
    return f"request body: larger than the {max_bytes // (1024 * 1024)} MB limit"
