"""ANY /forward/{connection}/{path}: the raw reverse proxy, for clients that already speak the endpoint's format."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable

import httpx
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from proxy.config.settings import MASK
from proxy.connections.spec import Protocol
from proxy.engine.results import CallResult, CutReply
from proxy.engine.streaming import Relay
from proxy.engine.transports import BodyTooLarge
from proxy.engine.transports.client import TOKEN
from proxy.errors import InvalidField
from proxy.server.api.common import record_mode_header, runtime
from proxy.server.api.openapi import ANY_BYTES, ApiRoute

# Per-hop headers, and those httpx sets itself for the upstream.
HOP_BY_HOP = frozenset(
    {
        "host",
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
        "content-encoding",
        "accept-encoding",
    }
)
# Never sent upstream: the browser's ambient credentials and provenance, and the proxy's own control headers.
CLIENT_ONLY = frozenset({"cookie", "origin", "referer"})
PROXY_HEADER_PREFIX = "x-proxy-"
# Never passed back: an upstream cookie or CORS grant would otherwise apply to the proxy's own origin, which
# also serves the admin API. The server's guard sets CORS itself for the origins it allows.
UPSTREAM_ONLY = frozenset({"set-cookie", "set-cookie2"})
UPSTREAM_ONLY_PREFIX = "access-control-"
# Upstream content is shown as an opaque, script-less document, never as the proxy's own origin.
SAFETY_HEADERS = {
    "Content-Security-Policy": "sandbox",
    "X-Content-Type-Options": "nosniff",
    "Cross-Origin-Resource-Policy": "same-origin",
}
_SAFETY_NAMES = frozenset(name.lower() for name in SAFETY_HEADERS)
HEADER_MASK = "********"
MISS_STATUS = 404  # not retried by HTTP clients, unlike 5xx/429
NO_REPLY = "no reply from the upstream"  # a failure that left no reason (there always is one)
METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
# How a relayed stream can break off: the upstream cut it, it ran past the attempt's timeout or the body cap.
STREAM_CUTS = (httpx.TransportError, TimeoutError, BodyTooLarge)

log = logging.getLogger("proxy")


async def forward(request: Request) -> Response:
    """Forward the request as it is to the connection's origin."""
    rt = runtime(request)
    mode = record_mode_header(request)
    name = request.path_params["connection"]
    headers = upstream_headers(request.headers.items(), rt.settings.api_key is not None)
    upstream = rt.upstreams.get(name)
    if upstream is not None:  # forward-only: the client's own credential goes up, masked like any secret
        rt.client_secrets.note(name, headers)
        target, base_url, protocol = upstream.target, upstream.origin.base_url(), upstream.protocol
    else:
        conn = rt.connections.resolve(name)
        if conn.origin is None:  # a host the template decides is known only per call: nothing to render it with
            raise InvalidField(
                "url", f"the forward route needs a connection whose URL has a fixed origin, not {conn.shown_url}"
            )
        name, target, base_url, protocol = conn.name, conn.target, conn.origin.base_url(), conn.spec.protocol
    raw_query = request.scope["query_string"]  # as sent: building request.url would parse the whole URL again
    query = f"?{raw_query.decode('latin-1')}" if raw_query else ""
    url = f"{base_url}/{request.path_params['path']}{query}"
    if protocol is Protocol.MCP:
        from proxy.server.api.mcp_forward import mcp_forward  # it builds its answers with this module's

        return await mcp_forward(request, rt, name, target, url, headers, mode)
    handle = rt.library.server_handle("connections", name, "forward", rt.library.mode_for(name))
    handle = handle.for_call(mode)
    result = await rt.engine.forward(target, request.method, url, headers, await request.body(), handle)
    return _response(result)


def upstream_headers(client_headers: Iterable[tuple[str, str]], api_key_in_use: bool) -> dict[str, str]:
    """The client's headers as the upstream may see them. With --api-key set, the client's Authorization carried
    the proxy's own key (the API-key check let the request through), so it never leaves the server."""
    kept = {}
    for name, value in client_headers:
        lower = name.lower()
        if lower in HOP_BY_HOP or lower in CLIENT_ONLY or lower.startswith(PROXY_HEADER_PREFIX):
            continue
        if api_key_in_use and lower == "authorization":
            continue
        kept[name] = value
    return kept


def answer_headers(upstream: dict[str, str], outcome: str) -> dict[str, str]:
    """Every forward answer's headers, whole, cut or streamed: the upstream's that may pass back, as HTTP can
    carry them, then the safety headers and the cassette outcome. A header whose name held a secret is masked
    (`x-tok-••••••••`), no HTTP token: it is dropped, as is any other name HTTP cannot carry (from a cassette)."""
    headers = {k: _header_text(v) for k, v in upstream.items() if _passed_back(k)}
    return {**headers, **SAFETY_HEADERS, "X-Proxy-Cassette": outcome}


def _header_text(value: str) -> str:
    """A header value as HTTP can carry it (Latin-1): a masked secret echoed in a header reads as ASCII stars."""
    return value.replace(MASK, HEADER_MASK).encode("latin-1", "replace").decode("latin-1")


def _passed_back(name: str) -> bool:
    lower = name.lower()
    return not (
        lower in HOP_BY_HOP
        or lower in UPSTREAM_ONLY
        or lower in _SAFETY_NAMES
        or lower.startswith(UPSTREAM_ONLY_PREFIX)
        or TOKEN.fullmatch(name) is None
    )


def _response(result: CallResult) -> Response:
    outcome = result.outcome or "live"
    cut = result.attempts[-1].cut if result.attempts else None
    if cut is not None:
        return CutResponse(cut, outcome)
    reply = result.reply
    if reply is None:
        body = {"message": result.error or NO_REPLY}
        headers = answer_headers({}, outcome)
        return Response(
            json.dumps(body), status_code=failure_status(outcome), media_type="application/json", headers=headers
        )
    headers = answer_headers(reply.headers, outcome)
    if reply.relay is not None:
        return RelayedStream(reply.relay, reply.status, headers)
    return WholeAnswer(reply.text.encode(), reply.status, headers)


def failure_status(outcome: str) -> int:
    """The status of an answer the proxy gives itself, no reply having come: a miss, or the upstream's failure."""
    return MISS_STATUS if outcome == "miss" else 502


class WholeAnswer(Response):
    """A whole answer, its head encoded once here and sent as one start and one body message."""

    def __init__(self, body: bytes, status: int, headers: dict[str, str]) -> None:
        self.status_code = status
        self.body = body
        self.background = None
        raw = [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers.items()]
        raw.append((b"content-length", str(len(body)).encode()))
        self.raw_headers = raw

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        await send({"type": "http.response.body", "body": self.body})


class CutResponse(Response):
    """An answer whose body broke off: its head and the bytes that came, then the connection closes, so the
    client's HTTP library sees the same short read the proxy did."""

    def __init__(self, cut: CutReply, outcome: str) -> None:
        content = cut.reply.text.encode()
        headers = answer_headers(cut.reply.headers, outcome)
        # Longer than what is sent, whatever masking did to the text: the client must see a short body.
        headers["Content-Length"] = str(max(cut.expected_bytes, len(content) + 1))
        super().__init__(content, status_code=cut.reply.status, headers=headers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        await send({"type": "http.response.body", "body": self.body, "more_body": True})
        # Returning without the rest of the body: the server closes the connection.


class RelayedStream(StreamingResponse):
    """A streamed reply passed on chunk by chunk as it arrives. One that breaks off is left unfinished, so the
    client sees it cut as it was (never a clean end to a partial body)."""

    def __init__(self, relay: Relay, status: int, headers: dict[str, str]) -> None:
        super().__init__(relay.chunks(), status_code=status, headers=headers)
        self.relay = relay

    async def stream_response(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        try:
            async for chunk in self.body_iterator:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except STREAM_CUTS as exc:
            log.warning("forward: the upstream stream broke off mid-body (%s); relayed as cut", type(exc).__name__)
            return
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            # A client that hung up before the end (the OpenAI SDK does, at `data: [DONE]`) leaves the relay
            # suspended; closed now, not whenever the garbage collector gets to it, the upstream answer is read
            # to its end and recorded, or released.
            await self.body_iterator.aclose()  # type: ignore[attr-defined]
            self.relay.finish()  # a body never started (the client left first) ends the flow's stream too


ROUTES = [
    ApiRoute(
        "/forward/{connection}/{path:path}",
        forward,
        methods=METHODS,
        body=ANY_BYTES,
        body_media="application/octet-stream",
        response=ANY_BYTES,
        media="*/*",
    )
]
