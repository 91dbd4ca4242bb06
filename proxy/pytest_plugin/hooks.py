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
import shlex
import threading
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pytest

from proxy.config.record_mode import RecordMode
from proxy.pytest_plugin.options import DEFAULT_PLUGIN_RECORD_MODE, _assignments, _cassettes_dir, _flag, _lasting_dir

if TYPE_CHECKING:
    from proxy.pytest_plugin.server import ProxyServer

MARKER = "proxy_record_mode"
CASSETTE_MARKER = "proxy_cassette"


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


@pytest.fixture(scope="session")
def proxy_server(request: pytest.FixtureRequest) -> Iterator[ProxyServer]:
    """The proxy server, in-process on a free loopback port, for the whole test session."""
    state = request.config.stash[_STATE]
    if state.server is not None:  # started with the session, for --proxy-env
        yield state.server
        return
    from proxy.pytest_plugin.server import _running

    with _running(request.config, state) as server:
        yield server


def pytest_sessionstart(session: pytest.Session) -> None:
    """With --proxy-env the server starts with the session, before test modules are imported, so an app that
    reads its base URL from the environment at import time already sees the proxy's."""
    config = session.config
    if not _assignments(config, "--proxy-env", "proxy_env") or _is_xdist_controller(config):
        return
    from proxy.pytest_plugin.server import _running

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


def _test_scope(item: pytest.Item) -> str:
    """The test's cassette folder: `<module path>/<test name>` (pytest-recording's layout), or the folder named by
    `@pytest.mark.proxy_cassette("name")`, shared on purpose. Each part is made file-safe as cassette names are."""
    from proxy.cassettes.names import file_name

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
            cause = _innermost(exc)
            raise pytest.fail.Exception(_miss_report(state, misses, told=str(cause)), pytrace=False) from cause
        raise
    misses = state.take_misses()
    if misses:
        pytest.fail(_miss_report(state, misses), pytrace=False)
    _check_unplayed(item, state)
    return outcome


def _innermost(exc: BaseException) -> BaseException:
    """The error inside an exception group (an async client's task group): pytest prints a failure caused by a
    group with the failure's own message twice."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


class ProxyUnplayedWarning(UserWarning):
    """A test passed without playing some of its recordings: calls it no longer makes."""


def _check_unplayed(item: pytest.Item, state: _PluginState) -> None:
    """After a passing test, the recordings in its own folder it did not play: a warning naming the test and how
    many, or with --proxy-strict-replay a failure (shared folders are left out: other tests play them)."""
    server = state.server
    if server is None or state.scope is None or item.get_closest_marker(CASSETTE_MARKER) is not None:
        return
    from proxy.cassettes.orphans import unplayed_recordings

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
    from proxy.cassettes.names import file_name

    module = item.nodeid.partition("::")[0].removesuffix(".py")
    return "/".join(file_name(part) for part in module.split("/") if part not in ("", ".", ".."))


def _note_orphans(session: pytest.Session) -> None:
    """At the end of a run that collected its tests (each xdist worker collects them all): the test folders no
    collected test maps to, recorded for `prune --orphans` and shown in the summary."""
    config = session.config
    state = config.stash[_STATE]
    if not (state.collected and state.served) or session.shouldfail or session.shouldstop:
        return
    from proxy.cassettes.orphans import orphans, orphans_file, write_orphans

    root = _cassettes_dir(config)
    found = orphans(root, state.mapped_scopes, state.collected_modules, config.rootpath)
    write_orphans(orphans_file(_lasting_dir(config)), root, found)


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    state = config.stash[_STATE]
    if hasattr(config, "workerinput") or not (state.served or _is_xdist_controller(config)):
        return
    if not (_lasting_dir(config) / "cassette-orphans.json").exists():  # a suite that never ran the server
        return
    from proxy.cassettes.orphans import orphans_of

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


def _miss_report(state: _PluginState, misses: list[str], told: str = "") -> str:
    """The test's misses and how to record them. Those the client's own error (`told`, printed just above) quotes
    already, as an MCP client does the proxy's JSON-RPC error, are counted, not repeated."""
    server = state.server
    mode = state.mode or (server.record_mode if server else "?")
    untold = [message for message in misses if message not in told]
    above = f", {len(misses) - len(untold)} told above" if len(untold) < len(misses) else ""
    head = f"proxy: {len(misses)} replay {'miss' if len(misses) == 1 else 'misses'} (record mode {mode}){above}"
    lines = [f"{head}:" if untold else head]
    lines += [f"  {message}" for message in untold]
    # new_episodes records what is missing whether the test's cassette exists or not; `once` would not add to one.
    lines.append(
        f"record them with --proxy-record-mode new_episodes (all: record the test afresh), or mark the test "
        f'@pytest.mark.{MARKER}("new_episodes")'
    )
    return "\n".join(lines)
