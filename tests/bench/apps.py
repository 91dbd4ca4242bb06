"""Servers the benchmarks run in their own processes (uvicorn tests.bench.apps:upstream)."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send


async def chat(request: Request) -> JSONResponse:
    body = await request.json()
    return JSONResponse({"reply": f"echo {body.get('message', '')}", "docs": ["a", "b"]})


upstream = Starlette(routes=[Route("/chat", chat, methods=["POST"])])


def _canned_turn() -> Starlette:
    """The turn API's shape with no work behind it: parse the turn request, answer a recorded turn's JSON.
    What the HTTP and JSON of a turn cost on their own, beside the bare endpoint's small body."""
    import json
    import os
    from pathlib import Path

    path = os.environ.get("CANNED_TURN")
    turn = json.loads(Path(path).read_text()) if path else {}

    async def answer(request: Request) -> JSONResponse:
        body = await request.json()
        return JSONResponse({**turn, "input": body.get("input")}, status_code=201)

    return Starlette(routes=[Route("/turn", answer, methods=["POST"])])


canned_turn = _canned_turn()


def _passthrough() -> Starlette:
    """The minimal Starlette + one shared httpx client pass-through proxy the forward route is held against."""
    import os

    import httpx
    from starlette.responses import Response

    target = os.environ.get("PASSTHROUGH_TARGET", "http://127.0.0.1:9")
    client = httpx.AsyncClient(base_url=target)

    async def forward(request: Request) -> Response:
        upstream_response = await client.request(
            request.method,
            "/" + request.path_params["path"],
            content=await request.body(),
            headers={"content-type": request.headers.get("content-type", "application/json")},
        )
        return Response(upstream_response.content, upstream_response.status_code, media_type="application/json")

    return Starlette(routes=[Route("/{path:path}", forward, methods=["GET", "POST"])])


passthrough = _passthrough()


def _streams() -> Starlette:
    """An upstream that streams OpenAI-shaped chunks: `?chunks=N&gap_ms=G&first_ms=F` (its head at once, the
    first chunk after F ms, G ms between chunks), as a model's answer does: head, think, then tokens."""
    import asyncio
    import json

    from starlette.responses import StreamingResponse

    async def stream(request: Request) -> StreamingResponse:
        await request.body()
        count = int(request.query_params.get("chunks", "50"))
        gap = float(request.query_params.get("gap_ms", "0")) / 1000
        first = float(request.query_params.get("first_ms", "0")) / 1000

        async def chunks():  # type: ignore[no-untyped-def]
            for index in range(count):
                if not index and first:
                    await asyncio.sleep(first)
                if index and gap:
                    await asyncio.sleep(gap)
                delta = {"choices": [{"index": 0, "delta": {"content": f"word{index} "}}]}
                yield f"data: {json.dumps(delta)}\n\n".encode()

        return StreamingResponse(chunks(), media_type="text/event-stream")

    return Starlette(routes=[Route("/v1/stream", stream, methods=["POST"])])


streams = _streams()


# The generated test suite's upstream (bench_suite): a JSON route and a streamed one.
suite = Starlette(routes=[*upstream.routes, *streams.routes])


def _bare_relay() -> ASGIApp:
    """The floor under the forward route: uvicorn and one aiohttp session relaying a stream piece by piece, plain
    ASGI with nothing else (no guard, no engine, no masking, no flow log, no recording)."""
    import os

    import aiohttp

    target = os.environ.get("RELAY_TARGET", "http://127.0.0.1:9")
    sessions: list[aiohttp.ClientSession] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        if not sessions:  # aiohttp binds a session to the running loop
            sessions.append(aiohttp.ClientSession(auto_decompress=False))
        body, more = b"", True
        while more:
            message = await receive()
            body, more = body + message.get("body", b""), message.get("more_body", False)
        query = scope["query_string"].decode("latin-1")
        url = target + scope["path"] + (f"?{query}" if query else "")
        headers = {"content-type": "application/json"}
        async with sessions[0].request(scope["method"], url, data=body, headers=headers) as answer:
            head = [(b"content-type", answer.headers.get("content-type", "").encode("latin-1"))]
            await send({"type": "http.response.start", "status": answer.status, "headers": head})
            async for piece in answer.content.iter_any():
                await send({"type": "http.response.body", "body": piece, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    return app


bare_relay = _bare_relay()
