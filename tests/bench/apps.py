"""Servers the benchmarks run in their own processes (uvicorn tests.bench.apps:upstream)."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route


async def chat(request: Request) -> JSONResponse:
    body = await request.json()
    return JSONResponse({"reply": f"echo {body.get('message', '')}", "docs": ["a", "b"]})


upstream = Starlette(routes=[Route("/chat", chat, methods=["POST"])])
