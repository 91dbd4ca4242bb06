"""ANY /forward/{connection}/{path}: the raw reverse proxy, for clients that already speak the endpoint's format."""

from __future__ import annotations

import json
from urllib.parse import urlsplit, urlunsplit

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from proxy.api.galtea import runtime
from proxy.engine import CallResult

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
MISS_STATUS = 404  # not retried by HTTP clients, unlike 5xx/429
METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]


async def forward(request: Request) -> Response:
    """Forward the request as it is to the connection's origin."""
    rt = runtime(request)
    conn = rt.connections.resolve(request.path_params["connection"])
    origin = urlsplit(conn.spec.url.split("{{")[0])
    url = urlunsplit((origin.scheme, origin.netloc, "/" + request.path_params["path"], request.url.query, ""))
    headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
    handle = rt.library.server_handle("connections", conn.name, "forward", rt.library.mode_for(conn.name))
    result = await rt.engine.forward(conn, request.method, url, headers, await request.body(), handle)
    return _response(result)


def _response(result: CallResult) -> Response:
    outcome = result.outcome or "live"
    reply = result.reply
    if reply is None:
        status = MISS_STATUS if outcome == "miss" else 502
        body = {"message": result.error or "no reply from the upstream"}
        return Response(
            json.dumps(body), status_code=status, media_type="application/json", headers={"X-Proxy-Cassette": outcome}
        )
    headers = {k: v for k, v in reply.headers.items() if k.lower() not in HOP_BY_HOP}
    headers["X-Proxy-Cassette"] = outcome
    return Response(reply.text.encode(), status_code=reply.status, headers=headers)


ROUTES = [Route("/forward/{connection}/{path:path}", forward, methods=METHODS)]
