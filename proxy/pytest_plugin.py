"""The pytest plugin (entry point `proxy`): the server in-process for a test session, offline by default.

- `--proxy-record-mode MODE` (ini `proxy_record_mode`, default `none`: a test run replays and never calls out),
  `--proxy-config FILE` (ini `proxy_config`), `--proxy-cassettes DIR` (ini `proxy_cassettes`).
- The session fixture `proxy_server` runs the server on a free loopback port; `.url` is its base URL.
- `@pytest.mark.proxy_record_mode("once")` sets the mode for one test: while it runs, every request the
  server receives without an `X-Proxy-Record-Mode` header gets one, so any client (the galtea SDK, an OpenAI
  client on the forward route, plain httpx) is covered without passing anything.
- A replay miss during a test fails that test with the miss message.
- Cassette use is merged into `cassette-usage.json` in `--proxy-data-dir` (ini `proxy_data_dir`, default `.proxy`
  in the rootdir) when the session ends, so `proxy cassettes prune` run there afterwards knows what the tests used.

Nothing of the server is imported until a test asks for `proxy_server`. A `conftest.py` fixture of the same
name wins over the plugin's, as pytest's own rules have it; `-p no:proxy` turns the plugin off.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import tempfile
import threading
import time
import warnings
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from proxy.record_mode import RECORD_MODE_HEADER, RecordMode

if TYPE_CHECKING:
    from proxy.runtime import Runtime
    from proxy.transports.cassette import ParseCache

MARKER = "proxy_record_mode"
CASSETTE_MARKER = "proxy_cassette"
DEFAULT_PLUGIN_RECORD_MODE = RecordMode.NONE  # CI stays offline unless asked
SERVER_START_TIMEOUT_S = 10.0
SERVER_STOP_TIMEOUT_S = 300.0  # the last flush of a long recording session on a loaded machine


@dataclass
class _PluginState:
    """What the hooks share with the fixture's server (which runs in its own thread)."""

    mode: str | None = None  # the running test's marker
    running: contextlib.ExitStack | None = None  # a server started with the session (--proxy-env)
    mapped_scopes: set[str] = field(default_factory=set)  # every collected test's folder, deselected ones too
    collected_modules: set[str] = field(default_factory=set)
    collected: bool = False
    served: bool = False  # a server ran in this session: only then is anything written about the cassettes
    scope: str | None = None  # the running test's cassette folder (None: calls outside tests)
    test_id: str | None = None  # the running test's node id, its X-Proxy-Test-Id
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
    group.addoption(
        "--proxy-upstream",
        action="append",
        default=[],
        metavar="NAME=URL",
        help="a forward-only upstream, no config needed: /forward/NAME/... goes to URL with the client's credential",
    )
    group.addoption(
        "--proxy-env",
        action="append",
        default=[],
        metavar="VAR=NAME",
        help="set VAR to the forward URL of upstream NAME for the session (OPENAI_BASE_URL=openai)",
    )
    group.addoption(
        "--proxy-strict-replay",
        action="store_true",
        default=False,
        help="fail a test that passes without playing every recording of its cassettes (else a warning)",
    )
    group.addoption(
        "--proxy-data-dir",
        default=None,
        metavar="DIR",
        help="where cassette use is kept for `proxy cassettes prune` (default .proxy in the rootdir)",
    )
    parser.addini("proxy_record_mode", "record mode of the proxy_server fixture", default=None)
    parser.addini("proxy_config", "proxy YAML config file for proxy_server (relative to the ini file)", default=None)
    parser.addini("proxy_cassettes", "cassette folder for proxy_server (relative to the ini file)", default=None)
    parser.addini("proxy_upstreams", "forward-only upstreams, NAME=URL, one a line", type="linelist", default=[])
    parser.addini("proxy_env", "VAR=NAME: VAR set to upstream NAME's forward URL", type="linelist", default=[])
    parser.addini("proxy_strict_replay", "as --proxy-strict-replay (true/false)", default="false")
    parser.addini("proxy_data_dir", "where cassette use is kept for prune (relative to the ini file)", default=None)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", f"{MARKER}(mode): the proxy record mode for this test's calls")
    config.addinivalue_line("markers", f"{CASSETTE_MARKER}(name): cassettes shared by every test marked with name")
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
def proxy_server(request: pytest.FixtureRequest) -> Iterator[ProxyServer]:
    """The proxy server, in-process on a free loopback port, for the whole test session."""
    state = request.config.stash[_STATE]
    if state.server is not None:  # started with the session, for --proxy-env
        yield state.server
        return
    with _running(request.config, state) as server:
        yield server


def pytest_sessionstart(session: pytest.Session) -> None:
    """With --proxy-env the server starts with the session, before test modules are imported, so an app that
    reads its base URL from the environment at import time already sees the proxy's."""
    config = session.config
    if not _assignments(config, "--proxy-env", "proxy_env") or _is_xdist_controller(config):
        return
    state = config.stash[_STATE]
    state.running = contextlib.ExitStack()
    state.running.enter_context(_running(config, state))


def pytest_sessionfinish(session: pytest.Session) -> None:
    state = session.config.stash[_STATE]
    if state.running is not None:
        state.running.close()
        state.running = None
    _note_orphans(session)


def _is_xdist_controller(config: pytest.Config) -> bool:
    """pytest-xdist's controller runs no test: each worker runs its own server."""
    return bool(getattr(config.option, "numprocesses", None)) and not hasattr(config, "workerinput")


def _assignments(config: pytest.Config, option: str, ini: str) -> list[tuple[str, str]]:
    """`NAME=VALUE` pairs from a repeatable option and its ini list; a malformed one stops the run."""
    given = [*config.getini(ini), *(config.getoption(option) or [])]
    if not given:
        return []
    from proxy.errors import InvalidField
    from proxy.upstreams import parse_assignment

    try:
        return [parse_assignment(str(text), option.removeprefix("--")) for text in given if str(text).strip()]
    except InvalidField as exc:
        raise pytest.UsageError(f"proxy_server: {exc.message}") from None


class _TestScope:
    """ASGI middleware: what the running test decides for the calls it makes. Its cassettes are its own folder's
    (set on the event loop, between requests); a request gets the test's node id as `X-Proxy-Test-Id` and, in a
    marked test, the marker's `X-Proxy-Record-Mode`, unless it carries its own."""

    def __init__(self, app: Any, state: _PluginState, runtime: Runtime) -> None:
        from proxy.faults import TEST_ID_HEADER

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

    from proxy.app import create_app
    from proxy.cli_options import build_settings
    from proxy.config import Config, load_config
    from proxy.errors import ConfigError, InvalidField
    from proxy.http_limits import server_config
    from proxy.listener import listen, url_of
    from proxy.runtime import Runtime

    mode = _record_mode(config)
    config_path = _option_path(config, "--proxy-config", "proxy_config")
    try:
        proxy_config = load_config(config_path) if config_path else Config()
        file = proxy_config.settings
        cassettes = _option_path(config, "--proxy-cassettes", "proxy_cassettes")
        if cassettes is None:
            cassettes = Path(file["cassettes_dir"]) if file.get("cassettes_dir") else config.rootpath / "cassettes"
        data_dir = Path(file["data_dir"]) if file.get("data_dir") else temporary
        settings = build_settings(
            proxy_config, host="127.0.0.1", port=0, record_mode=mode.value, cassettes=cassettes, data_dir=data_dir
        )
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
        yield ProxyServer(url_of(sock), runtime, mode.value, cassettes)
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
    from proxy.data_dir import make_private_dir
    from proxy.transports.cassette import ParseCache
    from proxy.transports.usage import ignored_by_git

    lasting = _lasting_dir(config)
    make_private_dir(lasting)
    ignored_by_git(lasting)
    return ParseCache.in_data_dir(lasting)


def _lasting_dir(config: pytest.Config) -> Path:
    """Where what outlives the session is kept: cassette use and orphans."""
    return _option_path(config, "--proxy-data-dir", "proxy_data_dir") or config.rootpath / ".proxy"


def _cassettes_dir(config: pytest.Config) -> Path:
    """The cassette folder as the server will use it, without loading the config when an option names it."""
    given = _option_path(config, "--proxy-cassettes", "proxy_cassettes")
    if given is not None:
        return given
    config_path = _option_path(config, "--proxy-config", "proxy_config")
    if config_path is not None:
        from proxy.config import load_config
        from proxy.errors import ConfigError

        try:
            folder = load_config(config_path).settings.get("cassettes_dir")
        except ConfigError:
            folder = None
        if folder:
            return Path(folder)
    return config.rootpath / "cassettes"


def _keep_usage(config: pytest.Config, data_dir: Path) -> None:
    """The session's cassette use, from its (temporary) data dir into the lasting usage file."""
    from proxy.store import read_cassette_usage
    from proxy.transports.usage import merge_usage_file, usage_file

    lasting = _lasting_dir(config)
    if lasting.resolve() != data_dir.resolve():
        merge_usage_file(usage_file(lasting), read_cassette_usage(data_dir))


def _test_scope(item: pytest.Item) -> str:
    """The test's cassette folder: `<module path>/<test name>` (pytest-recording's layout), or the folder named by
    `@pytest.mark.proxy_cassette("name")`, shared on purpose. Each part is made file-safe as cassette names are."""
    from proxy.cassette_names import file_name

    marker = item.get_closest_marker(CASSETTE_MARKER)
    if marker is not None:
        name = marker.args[0] if marker.args else marker.kwargs.get("name")
        parts = str(name or "").split("/")
        if not isinstance(name, str) or not any(part not in ("", ".", "..") for part in parts):
            pytest.fail(f"@pytest.mark.{CASSETTE_MARKER} needs a cassette folder name, got {name!r}", pytrace=False)
    else:
        module, _, test = item.nodeid.partition("::")
        parts = [*module.removesuffix(".py").split("/"), test.replace("::", ".")]
    return "/".join(file_name(part) for part in parts if part not in ("", ".", ".."))


@pytest.hookimpl(wrapper=True)
def pytest_fixture_setup(fixturedef: Any, request: pytest.FixtureRequest) -> Generator[None, Any, Any]:
    """A fixture shared beyond one test (session, package, module, class) calls outside any test: its calls go to
    the folder's own cassettes, not to the test that happened to set it up first."""
    state = request.config.stash[_STATE]
    if fixturedef.scope == "function" or state.scope is None:
        return (yield)
    scope, test_id = state.scope, state.test_id
    state.scope = state.test_id = None
    try:
        return (yield)
    finally:
        state.scope, state.test_id = scope, test_id


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    state = item.config.stash[_STATE]
    state.take_misses()
    state.scope = _test_scope(item)
    state.test_id = item.nodeid
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
    _check_unplayed(item, state)
    return outcome


class ProxyUnplayedWarning(UserWarning):
    """A test passed without playing some of its recordings: calls it no longer makes."""


def _check_unplayed(item: pytest.Item, state: _PluginState) -> None:
    """After a passing test, the recordings in its own folder it did not play: a warning naming the test and how
    many, or with --proxy-strict-replay a failure (shared folders are left out: other tests play them)."""
    server = state.server
    if server is None or state.scope is None or item.get_closest_marker(CASSETTE_MARKER) is not None:
        return
    from proxy.pytest_cassettes import unplayed_recordings

    left = unplayed_recordings(server.runtime.library, state.scope)
    if not left:
        return
    counts = "; ".join(f"{unplayed} of {total} in {name}" for name, unplayed, total in left)
    message = (
        f"proxy: {item.nodeid} did not play every recording of its cassettes ({counts}): they record calls it no "
        f"longer makes; re-record it with: pytest --proxy-record-mode all {shlex.quote(item.nodeid)}"
    )
    if _flag(item.config, "--proxy-strict-replay", "proxy_strict_replay"):
        pytest.fail(f"{message} (failed by --proxy-strict-replay)", pytrace=False)
    item.warn(ProxyUnplayedWarning(f"{message}, or --proxy-strict-replay to fail on this"))


def _flag(config: pytest.Config, option: str, ini: str) -> bool:
    return bool(config.getoption(option)) or str(config.getini(ini)).lower() in ("1", "true", "yes", "on")


def pytest_deselected(items: list[pytest.Item]) -> None:
    """Tests left out by -k or -m still own their folders: never orphans."""
    if items:
        state = items[0].config.stash[_STATE]
        state.mapped_scopes.update(_test_scope(item) for item in items)


def pytest_collection_finish(session: pytest.Session) -> None:
    state = session.config.stash[_STATE]
    state.mapped_scopes.update(_test_scope(item) for item in session.items)
    state.collected_modules.update(_module_scope(item) for item in session.items)
    state.collected = True


def _module_scope(item: pytest.Item) -> str:
    from proxy.cassette_names import file_name

    module = item.nodeid.partition("::")[0].removesuffix(".py")
    return "/".join(file_name(part) for part in module.split("/") if part not in ("", ".", ".."))


def _note_orphans(session: pytest.Session) -> None:
    """At the end of a run that collected its tests (each xdist worker collects them all): the test folders no
    collected test maps to, recorded for `prune --orphans` and shown in the summary."""
    config = session.config
    state = config.stash[_STATE]
    if not (state.collected and state.served) or session.shouldfail or session.shouldstop:
        return
    from proxy.pytest_cassettes import orphans, orphans_file, write_orphans

    root = _cassettes_dir(config)
    found = orphans(root, state.mapped_scopes, state.collected_modules, config.rootpath)
    write_orphans(orphans_file(_lasting_dir(config)), root, found)


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    state = config.stash[_STATE]
    if hasattr(config, "workerinput") or not (state.served or _is_xdist_controller(config)):
        return
    if not (_lasting_dir(config) / "cassette-orphans.json").exists():  # a suite that never ran the server
        return
    from proxy.pytest_cassettes import orphans_of

    found = orphans_of(_lasting_dir(config), _cassettes_dir(config)) or []
    if found:
        terminalreporter.write_sep("=", "proxy: orphaned cassettes", yellow=True)
        terminalreporter.write_line(
            f"{len(found)} cassette folder(s) no collected test maps to (a test renamed or removed):"
        )
        for folder in found:
            terminalreporter.write_line(f"  {folder}")
        terminalreporter.write_line("proxy cassettes prune --orphans --delete removes them")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item) -> Generator[None, None, None]:
    try:
        return (yield)
    finally:
        state = item.config.stash[_STATE]
        state.mode = state.scope = state.test_id = None


def _miss_report(state: _PluginState, misses: list[str]) -> str:
    server = state.server
    mode = state.mode or (server.record_mode if server else "?")
    lines = [f"proxy: {len(misses)} replay {'miss' if len(misses) == 1 else 'misses'} (record mode {mode}):"]
    lines += [f"  {message}" for message in misses]
    # new_episodes records what is missing whether the test's cassette exists or not; `once` would not add to one.
    lines.append(
        f"record them with --proxy-record-mode new_episodes (all: record the test afresh), or mark the test "
        f'@pytest.mark.{MARKER}("new_episodes")'
    )
    return "\n".join(lines)
