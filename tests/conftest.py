from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from galtea import Galtea

from proxy.config.file import Config
from proxy.config.settings import Settings
from proxy.server.app import create_app
from proxy.server.runtime import Runtime
from tests.servers import serve_in_thread
from tests.streams import Streaming, StreamingUpstream
from tests.upstream import Upstream, serve_upstream

TEST_TOKEN = "tok-Sup3rSecret-4242"
TEST_PASSWORD = "pw-Hunter2-ZZZ"


@pytest.fixture(scope="session")
def upstream_server() -> Iterator[tuple[Upstream, str]]:
    with serve_upstream() as served:
        yield served


@pytest.fixture
def upstream(upstream_server: tuple[Upstream, str]) -> Iterator[Upstream]:
    upstream_server[0].clear()
    yield upstream_server[0]
    upstream_server[0].clear()  # a script left behind would answer the next test's calls


@pytest.fixture
def upstream_url(upstream_server: tuple[Upstream, str]) -> str:
    return upstream_server[1]


@pytest.fixture
def attacker() -> Iterator[tuple[Upstream, str]]:
    """A listener on another port: another origin than the stored connection's."""
    with serve_upstream() as served:
        yield served


@pytest.fixture
def streaming() -> Iterator[Streaming]:
    """A fresh `StreamingUpstream` on its own loopback port: (upstream, base URL)."""
    upstream = StreamingUpstream()
    with serve_in_thread(upstream.app) as url:
        yield upstream, url


@dataclass
class RunningProxy:
    url: str
    runtime: Runtime
    data_dir: Path


@contextlib.contextmanager
def running_proxy(
    tmp_path: Path, config: Config | None = None, transport: httpx.AsyncBaseTransport | None = None, **settings: Any
) -> Iterator[RunningProxy]:
    settings.setdefault("data_dir", tmp_path / "data")
    settings.setdefault("cassettes_dir", tmp_path / "cassettes")
    settings.setdefault("allow_http", True)
    runtime = Runtime(Settings(**settings), config, transport)
    with serve_in_thread(create_app(runtime)) as url:
        yield RunningProxy(url, runtime, settings["data_dir"])


@pytest.fixture
def proxy_server(tmp_path: Path) -> Iterator[RunningProxy]:
    with running_proxy(tmp_path) as running:
        yield running


@pytest.fixture
def api(proxy_server: RunningProxy) -> Iterator[httpx.Client]:
    """An HTTP client of `proxy_server`."""
    with httpx.Client(base_url=proxy_server.url, timeout=60) as client:
        yield client


@pytest.fixture
def galtea(proxy_server: RunningProxy) -> Iterator[Galtea]:
    """The official galtea SDK pointed at `proxy_server`."""
    client = Galtea(api_key="galtea-key", base_url=proxy_server.url, suppress_updatable_version_message=True)
    yield client
    client.shutdown()


def chat_connection(upstream_url: str, **overrides: Any) -> dict[str, Any]:
    """A valid CONVERSATION connection to the test upstream's /chat."""
    data: dict[str, Any] = {
        "name": "chat",
        "productId": "prod-1",
        "url": f"{upstream_url}/chat",
        "type": "CONVERSATION",
        "authType": "BEARER",
        "authToken": TEST_TOKEN,
        "inputTemplate": '{"message": "{{ input.user_message }}"}',
        "outputMapping": {"output": "$.reply"},
        "acknowledgedInsecureHttp": True,
    }
    data.update(overrides)
    return data


def csrf_token(html: str) -> str:
    """The CSRF token an inspector page puts in its forms."""
    found = re.search(r'name="csrf_token" value="([0-9a-f]+)"', html)
    assert found, "the page has no CSRF field"
    return found.group(1)


class NoNetwork(httpx.AsyncBaseTransport):
    """A live transport that counts calls and refuses them: proves a replay touched no network."""

    def __init__(self) -> None:
        self.calls = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.calls += 1
        raise httpx.ConnectError(f"network disabled in this test: {request.url}", request=request)
