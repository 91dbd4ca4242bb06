"""The pytest plugin's in-process server: started on a free loopback port for the test session, its
requests scoped to the running test, the --proxy-env variables set, and cassette use kept when it stops."""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from proxy.config.record_mode import RECORD_MODE_HEADER, RecordMode
from proxy.config.settings import SERVER_START_TIMEOUT_S, SERVER_STOP_TIMEOUT_S
from proxy.pytest_plugin.options import _assignments, _lasting_dir, _option_path, _record_mode

if TYPE_CHECKING:
    from proxy.cassettes.parse_cache import ParseCache
    from proxy.pytest_plugin.hooks import _PluginState
    from proxy.server.runtime import Runtime


@dataclass
class ProxyServer:
    """The running server: `url` for `Galtea(base_url=...)`, `f"{url}/forward/<connection>/v1"` for OpenAI."""

    url: str
    runtime: Runtime
    record_mode: RecordMode
    cassettes_dir: Path


class _TestScope:
    """ASGI middleware: what the running test decides for the calls it makes. Its cassettes are its own folder's
    (set on the event loop, between requests); a request gets the test's node id as `X-Proxy-Test-Id` and, in a
    marked test, the marker's `X-Proxy-Record-Mode`, unless it carries its own."""

    def __init__(self, app: Any, state: _PluginState, runtime: Runtime) -> None:
        from proxy.connections.fault_rules import TEST_ID_HEADER

        self.app = app
        self.state = state
        self.library = runtime.library
        self.mode_header = RECORD_MODE_HEADER.lower().encode()
        self.test_id_header = TEST_ID_HEADER.lower().encode()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            state = self.state
            self.library.set_scope(state.scope)
            added = [(name, value) for name, value in self._headers(state) if not _has_header(scope, name)]
            if added:
                scope = {**scope, "headers": [*scope["headers"], *added]}
        await self.app(scope, receive, send)

    def _headers(self, state: _PluginState) -> Iterator[tuple[bytes, bytes]]:
        if state.mode:
            yield self.mode_header, state.mode.encode()
        if state.test_id:
            yield self.test_id_header, state.test_id.encode("latin-1", "replace")


def _has_header(scope: Any, name: bytes) -> bool:
    return any(key.lower() == name for key, _ in scope["headers"])


@contextlib.contextmanager
def _running(config: pytest.Config, state: _PluginState) -> Iterator[ProxyServer]:
    """The server, from its start to the block's end: `state.server` meanwhile, and the --proxy-env variables set."""
    with tempfile.TemporaryDirectory(prefix="proxy-data-") as temporary:
        with _server(config, state, Path(temporary)) as server, _environment(config, server):
            state.server = server
            state.served = True
            try:
                yield server
            finally:
                state.server = None


@contextlib.contextmanager
def _environment(config: pytest.Config, server: ProxyServer) -> Iterator[None]:
    """Each `VAR=NAME` of --proxy-env: VAR is the forward URL of upstream (or connection) NAME, for the session."""
    assignments = _assignments(config, "--proxy-env", "proxy_env")
    values = {}
    for variable, name in assignments:
        upstream = server.runtime.upstreams.get(name)
        if upstream is None and server.runtime.connections.find(name) is None:
            known = sorted([*server.runtime.upstreams, *(c.spec.name for c in server.runtime.connections.all())])
            raise pytest.UsageError(
                f"proxy_server: --proxy-env {variable}={name}: no upstream or connection is named {name!r} "
                f"(known: {', '.join(known) or 'none'}); add one with --proxy-upstream {name}=URL"
            )
        values[variable] = f"{server.url}/forward/{name}{upstream.path if upstream else ''}"
    before = {variable: os.environ.get(variable) for variable in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for variable, value in before.items():
            if value is None:
                os.environ.pop(variable, None)
            else:
                os.environ[variable] = value


@contextlib.contextmanager
def _server(config: pytest.Config, state: _PluginState, temporary: Path) -> Iterator[ProxyServer]:
    import uvicorn

    from proxy.config.file import Config, load_config
    from proxy.config.sources import merge_settings
    from proxy.errors import ConfigError, InvalidField
    from proxy.server.app import create_app
    from proxy.server.limits import server_config
    from proxy.server.listener import listen, url_of
    from proxy.server.runtime import Runtime

    mode = _record_mode(config)
    config_path = _option_path(config, "--proxy-config", "proxy_config")
    try:
        proxy_config = load_config(config_path) if config_path else Config()
        # The plugin's options are its flags; the record mode is the plugin's own (the file's does not count), and
        # the data dir a temporary one unless the file names one.
        flags = {
            "host": "127.0.0.1",
            "port": 0,
            "record_mode": mode,
            "cassettes_dir": _option_path(config, "--proxy-cassettes", "proxy_cassettes"),
        }
        defaults = {"cassettes_dir": config.rootpath / "cassettes", "data_dir": temporary}
        settings = merge_settings(proxy_config.settings, flags, os.environ, defaults)
        cassettes, data_dir = settings.cassettes_dir, settings.data_dir
        runtime = Runtime(settings, proxy_config)
        runtime.check_config()
        for name, url in _assignments(config, "--proxy-upstream", "proxy_upstreams"):
            runtime.add_upstream(name, url)
    except ConfigError as exc:
        raise pytest.UsageError(f"proxy_server: {exc.message}") from None
    except InvalidField as exc:
        raise pytest.UsageError(f"proxy_server: {exc.message}") from None
    runtime.library.miss_listeners.append(state.missed)
    if data_dir == temporary:  # parsed cassettes outlive the session: the next run skips parsing their YAML
        runtime.library.cache = _lasting_cache(config)
    sock = listen("127.0.0.1", 0)
    app = _TestScope(create_app(runtime), state, runtime)
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
        yield ProxyServer(url_of(sock), runtime, settings.record_mode, cassettes)
    finally:
        server.should_exit = True
        # Its shutdown writes the session's recordings into the cassettes: waited for whole, however busy the
        # machine, before the temporary data dir (and its journal) goes.
        thread.join(timeout=SERVER_STOP_TIMEOUT_S)
        if thread.is_alive():
            warnings.warn(
                f"proxy_server: the server did not stop within {SERVER_STOP_TIMEOUT_S:g} s; recordings of this "
                "session may be missing from the cassettes",
                stacklevel=1,
            )
        sock.close()
        _keep_usage(config, data_dir)


def _lasting_cache(config: pytest.Config) -> ParseCache:
    """The parse cache in the lasting folder (its entries are signed with the user's key, so one that folder
    brought along is never trusted)."""
    from proxy.cassettes.parse_cache import ParseCache
    from proxy.cassettes.usage import ignored_by_git
    from proxy.security.data_dir import make_private_dir

    lasting = _lasting_dir(config)
    make_private_dir(lasting)
    ignored_by_git(lasting)
    return ParseCache.in_data_dir(lasting)


def _keep_usage(config: pytest.Config, data_dir: Path) -> None:
    """The session's cassette use, from its (temporary) data dir into the lasting usage file."""
    from proxy.cassettes.usage import merge_usage_file, read_cassette_usage, usage_file

    lasting = _lasting_dir(config)
    if lasting.resolve() != data_dir.resolve():
        merge_usage_file(usage_file(lasting), read_cassette_usage(data_dir))
