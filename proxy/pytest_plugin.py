"""The pytest plugin (entry point `proxy`): the server in-process for a test session, offline by default.

- `--proxy-record-mode MODE` (ini `proxy_record_mode`, default `none`: a test run replays and never calls out),
  `--proxy-config FILE` (ini `proxy_config`), `--proxy-cassettes DIR` (ini `proxy_cassettes`).
- The session fixture `proxy_server` runs the server on a free loopback port; `.url` is its base URL.
- `@pytest.mark.proxy_record_mode("once")` sets the mode for one test: while it runs, every request the
  server receives without an `X-Proxy-Record-Mode` header gets one, so any client (the galtea SDK, an OpenAI
  client on the forward route, plain httpx) is covered without passing anything.
- A replay miss during a test fails that test with the miss message.

Nothing of the server is imported until a test asks for `proxy_server`. A `conftest.py` fixture of the same
name wins over the plugin's, as pytest's own rules have it; `-p no:proxy` turns the plugin off.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from proxy.record_mode import RECORD_MODE_HEADER, RecordMode

if TYPE_CHECKING:
    from proxy.runtime import Runtime

MARKER = "proxy_record_mode"
DEFAULT_PLUGIN_RECORD_MODE = RecordMode.NONE  # CI stays offline unless asked
SERVER_START_TIMEOUT_S = 10.0


@dataclass
class _PluginState:
    """What the hooks share with the fixture's server (which runs in its own thread)."""

    mode: str | None = None  # the running test's marker
    misses: list[str] = field(default_factory=list)
    server: ProxyServer | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def missed(self, message: str) -> None:
        with self.lock:
            self.misses.append(message)

    def take_misses(self) -> list[str]:
        with self.lock:
            taken, self.misses = self.misses, []
        return taken


_STATE = pytest.StashKey[_PluginState]()


@dataclass
class ProxyServer:
    """The running server: `url` for `Galtea(base_url=...)`, `f"{url}/forward/<connection>/v1"` for OpenAI."""

    url: str
    runtime: Runtime
    record_mode: str
    cassettes_dir: Path


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("proxy", "proxy: record and replay upstream calls")
    modes = [m.value for m in RecordMode]
    group.addoption(
        "--proxy-record-mode",
        choices=modes,
        default=None,
        help=f"record mode of the proxy_server fixture (default {DEFAULT_PLUGIN_RECORD_MODE.value}: replay only)",
    )
    group.addoption("--proxy-config", default=None, metavar="FILE", help="proxy YAML config file for proxy_server")
    group.addoption("--proxy-cassettes", default=None, metavar="DIR", help="cassette folder for proxy_server")
    parser.addini("proxy_record_mode", "record mode of the proxy_server fixture", default=None)
    parser.addini("proxy_config", "proxy YAML config file for proxy_server (relative to the ini file)", default=None)
    parser.addini("proxy_cassettes", "cassette folder for proxy_server (relative to the ini file)", default=None)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", f"{MARKER}(mode): the proxy record mode for this test's calls")
    config.stash[_STATE] = _PluginState()


def _option_path(config: pytest.Config, option: str, ini: str) -> Path | None:
    """A path from the command line (relative to the working directory) or the ini file (relative to it)."""
    given = config.getoption(option)
    if given:
        return Path(given).absolute()
    from_ini = config.getini(ini)
    if from_ini:
        base = config.inipath.parent if config.inipath else config.rootpath
        return base / str(from_ini)
    return None


def _record_mode(config: pytest.Config) -> RecordMode:
    value = config.getoption("--proxy-record-mode") or config.getini("proxy_record_mode")
    if not value:
        return DEFAULT_PLUGIN_RECORD_MODE
    from proxy.errors import InvalidField

    try:
        return RecordMode.parse(value, "proxy_record_mode")
    except InvalidField as exc:
        raise pytest.UsageError(exc.message) from None


@pytest.fixture(scope="session")
def proxy_server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyServer]:
    """The proxy server, in-process on a free loopback port, for the whole test session."""
    config = request.config
    state = config.stash[_STATE]
    mode = _record_mode(config)
    with _running(config, mode, tmp_path_factory, state) as server:
        state.server = server
        try:
            yield server
        finally:
            state.server = None


class _MarkedMode:
    """ASGI middleware: during a marked test, a request without `X-Proxy-Record-Mode` gets the marker's."""

    def __init__(self, app: Any, state: _PluginState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        mode = self.state.mode
        if mode and scope["type"] == "http":
            name = RECORD_MODE_HEADER.lower().encode()
            if not any(key.lower() == name for key, _ in scope["headers"]):
                scope = {**scope, "headers": [*scope["headers"], (name, mode.encode())]}
        await self.app(scope, receive, send)


@contextlib.contextmanager
def _running(
    config: pytest.Config, mode: RecordMode, tmp_path_factory: pytest.TempPathFactory, state: _PluginState
) -> Iterator[ProxyServer]:
    import uvicorn

    from proxy.app import create_app
    from proxy.cli import build_settings
    from proxy.config import Config, load_config
    from proxy.errors import ConfigError
    from proxy.http_limits import server_config
    from proxy.listener import listen, url_of
    from proxy.runtime import Runtime

    config_path = _option_path(config, "--proxy-config", "proxy_config")
    try:
        proxy_config = load_config(config_path) if config_path else Config()
        file = proxy_config.settings
        cassettes = _option_path(config, "--proxy-cassettes", "proxy_cassettes")
        if cassettes is None:
            cassettes = Path(file["cassettes_dir"]) if file.get("cassettes_dir") else config.rootpath / "cassettes"
        data_dir = Path(file["data_dir"]) if file.get("data_dir") else tmp_path_factory.mktemp("proxy-data")
        settings = build_settings(
            proxy_config, host="127.0.0.1", port=0, record_mode=mode.value, cassettes=cassettes, data_dir=data_dir
        )
        runtime = Runtime(settings, proxy_config)
        runtime.check_config()
    except ConfigError as exc:
        raise pytest.UsageError(f"proxy_server: {exc.message}") from None
    runtime.library.miss_listeners.append(state.missed)
    sock = listen("127.0.0.1", 0)
    app = _MarkedMode(create_app(runtime), state)
    # The same protocol and limits as `proxy serve`; log_config=None: the test process's logging is the user's.
    server = uvicorn.Server(server_config(app, settings, log_config=None, lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="proxy-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            sock.close()
            raise RuntimeError("proxy_server: the proxy server did not start (see the log above)")
        time.sleep(0.01)
    try:
        yield ProxyServer(url_of(sock), runtime, mode.value, cassettes)
    finally:
        server.should_exit = True
        thread.join(timeout=SERVER_START_TIMEOUT_S)
        sock.close()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    state = item.config.stash[_STATE]
    state.take_misses()
    marker = item.get_closest_marker(MARKER)
    if marker is None:
        state.mode = None
        return
    from proxy.errors import InvalidField

    value = marker.args[0] if marker.args else marker.kwargs.get("mode")
    try:
        state.mode = RecordMode.parse(value, f"@pytest.mark.{MARKER}").value
    except InvalidField as exc:
        pytest.fail(exc.message, pytrace=False)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    state = item.config.stash[_STATE]
    try:
        outcome = yield
    except BaseException as exc:
        misses = state.take_misses()
        if misses:
            raise pytest.fail.Exception(_miss_report(state, misses), pytrace=False) from exc
        raise
    misses = state.take_misses()
    if misses:
        pytest.fail(_miss_report(state, misses), pytrace=False)
    return outcome


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item) -> Generator[None, None, None]:
    try:
        return (yield)
    finally:
        state = item.config.stash[_STATE]
        state.mode = None


def _miss_report(state: _PluginState, misses: list[str]) -> str:
    server = state.server
    mode = state.mode or (server.record_mode if server else "?")
    lines = [f"proxy: {len(misses)} replay {'miss' if len(misses) == 1 else 'misses'} (record mode {mode}):"]
    lines += [f"  {message}" for message in misses]
    lines.append(f'record them with --proxy-record-mode once, or mark the test @pytest.mark.{MARKER}("once")')
    return "\n".join(lines)
