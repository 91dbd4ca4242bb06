"""A small demo upstream, answered in-process at the virtual host `http://demo.local` (never on the
network), so the bundled example works out of the box for `serve` and `run` alike, and cassettes
recorded against it are portable. It behaves like a typical chat API: bearer auth, a JSON reply
with the answer, retrieval context and a trace."""

from __future__ import annotations

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from proxy.security import jsonbounds

DEMO_TOKEN_HEADER = "authorization"


async def demo_chat(request: Request) -> JSONResponse:
    if not request.headers.get(DEMO_TOKEN_HEADER, "").startswith("Bearer "):
        return JSONResponse({"detail": "missing bearer token"}, status_code=401)
    try:
        body = jsonbounds.loads(await request.body())
    except ValueError as exc:  # not JSON, not UTF-8, or refused by its bounds
        return JSONResponse({"detail": f"the body is not usable JSON: {exc}"}, status_code=400)
    message = body.get("message") if isinstance(body, dict) else None
    if not isinstance(message, str):
        return JSONResponse({"detail": "field 'message' (string) is required"}, status_code=422)
    answer = f"You said: {message}"
    return JSONResponse(
        {
            "response": answer,
            "sources": [f"doc://demo/{len(message) % 3}"],
            "trace": [{"name": "echo", "type": "TOOL", "inputData": {"message": message}, "outputData": answer}],
        }
    )


DEMO_HOST = "demo.local"
demo_app = Starlette(routes=[Route("/chat", demo_chat, methods=["POST"])])


class DemoHostTransport(httpx.AsyncBaseTransport):
    """Routes requests for the demo host to the in-process demo app; everything else goes on."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner
        self.demo = httpx.ASGITransport(app=demo_app)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.host == DEMO_HOST:
            return await self.demo.handle_async_request(request)
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()
