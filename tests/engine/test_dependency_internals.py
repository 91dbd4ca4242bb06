"""The private pieces of aiohttp and uvicorn the server builds on, and the behaviour it relies on from them.

`InStepConnector` (proxy/engine/transports/client.py) overrides aiohttp's `TCPConnector._release` and replaces its
`_factory`; `OneWriteHttpProtocol` (proxy/server/listener.py) subclasses uvicorn's `HttpToolsProtocol`. Neither is a
public API, so pyproject.toml pins both to the minor versions tested; these tests say which piece moved, and in
which version, before a newer release is allowed in.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

import aiohttp
import httpx
import pytest
import uvicorn
from aiohttp.client_proto import ResponseHandler
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from proxy.engine.transports.client import InStepConnector, InStepProtocol
from proxy.server import listener
from tests.raw_http import answering, ok, raw_server
from tests.servers import serve_in_thread

AIOHTTP = f"aiohttp {aiohttp.__version__}"
UVICORN = f"uvicorn {uvicorn.__version__}"


def parameters(function: Any) -> list[tuple[str, inspect._ParameterKind, Any]]:
    return [(p.name, p.kind, p.default) for p in inspect.signature(function).parameters.values()]


def test_aiohttp_still_has_the_private_pieces_the_in_step_pool_overrides() -> None:
    kinds = inspect.Parameter
    assert parameters(aiohttp.TCPConnector._release) == [
        ("self", kinds.POSITIONAL_OR_KEYWORD, kinds.empty),
        ("key", kinds.POSITIONAL_OR_KEYWORD, kinds.empty),
        ("protocol", kinds.POSITIONAL_OR_KEYWORD, kinds.empty),
        ("should_close", kinds.KEYWORD_ONLY, False),
    ], f"{AIOHTTP}: TCPConnector._release(key, protocol, *, should_close) changed; InStepConnector overrides it"
    for name in ("set_response_params", "data_received", "is_connected", "__len__"):
        assert callable(getattr(ResponseHandler, name, None)), f"{AIOHTTP}: ResponseHandler.{name} is gone"


async def test_aiohttp_makes_pooled_connections_with_the_factory_and_releases_them_at_an_answers_end() -> None:
    released: list[tuple[type, bool]] = []

    class Watched(InStepConnector):
        def _release(self, key: Any, protocol: ResponseHandler, *, should_close: bool = False) -> None:
            super()._release(key, protocol, should_close=should_close)
            released.append((type(protocol), getattr(protocol, "pooled", False)))

    async with raw_server(answering(ok(b"one"), ok(b"two"))) as (server, url):
        connector = Watched()
        factory = connector._factory
        assert isinstance(factory, functools.partial) and factory.func is InStepProtocol, (
            f"{AIOHTTP}: TCPConnector._factory is no longer where connections are made"
        )
        async with aiohttp.ClientSession(connector=connector) as session:
            bodies = [await (await session.get(url)).read() for _ in range(2)]
    assert bodies == [b"one", b"two"] and server.connections == 1
    assert released == [(InStepProtocol, True)] * 2, (
        f"{AIOHTTP}: TCPConnector._release is no longer called with the connection at the end of each answer"
    )


def test_uvicorn_still_has_the_protocol_the_listener_subclasses() -> None:
    kinds = inspect.Parameter
    assert parameters(HttpToolsProtocol.connection_made) == [
        ("self", kinds.POSITIONAL_OR_KEYWORD, kinds.empty),
        ("transport", kinds.POSITIONAL_OR_KEYWORD, kinds.empty),
    ], f"{UVICORN}: HttpToolsProtocol.connection_made(transport) changed; OneWriteHttpProtocol overrides it"


def test_uvicorn_writes_an_answers_head_through_the_transport_handed_to_connection_made(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    heads: list[bytes] = []

    class Watched(listener._HeadWithBody):
        def write(self, data: bytes) -> None:
            if data.startswith(b"HTTP/1.1 "):
                heads.append(data)
            super().write(data)

    async def small(request: Request) -> JSONResponse:
        return JSONResponse({"reply": "hi"})

    monkeypatch.setattr(listener, "_HeadWithBody", Watched)
    with serve_in_thread(Starlette(routes=[Route("/", small)]), http=listener.OneWriteHttpProtocol) as base:
        assert httpx.get(base).json() == {"reply": "hi"}
    assert len(heads) == 1 and heads[0].endswith(b"\r\n\r\n"), (
        f"{UVICORN}: HttpToolsProtocol no longer writes a response's head alone through its transport, "
        f"which OneWriteHttpProtocol joins to the body (writes seen: {heads!r})"
    )
