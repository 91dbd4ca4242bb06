"""The `proxy` command line."""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import click
from click.core import ParameterSource

from proxy.api.guard import normalize_host_name, normalize_origin
from proxy.config import CLIENT_LIMITS, Config, load_config
from proxy.errors import ConfigError, InvalidField
from proxy.record_mode import RecordMode
from proxy.runner import DEFAULT_CONCURRENCY
from proxy.settings import (
    DEFAULT_CASSETTES_DIR,
    DEFAULT_DATA_DIR,
    DEFAULT_FLOW_LOG_SIZE,
    DEFAULT_HOST,
    DEFAULT_PORT,
    DEFAULT_REPLAY_SPEED,
    ON_EXPIRED,
    REPLAY_LATENCIES,
    Settings,
)
from proxy.words import counted, noun

RECORD_MODES = tuple(mode.value for mode in RecordMode)


CONFIG_OPTION = click.option(
    "--config", "config_path", type=click.Path(path_type=Path), help="YAML config file (connections, settings…)."
)
DATA_DIR_OPTION = click.option(
    "--data-dir", type=click.Path(path_type=Path), default=DEFAULT_DATA_DIR, help="Data folder (SQLite store, key)."
)
CASSETTES_OPTION = click.option(
    "--cassettes", type=click.Path(path_type=Path), default=DEFAULT_CASSETTES_DIR, help="Cassette folder."
)
RECORD_MODE_OPTION = click.option(
    "--record-mode",
    type=click.Choice(RECORD_MODES, case_sensitive=False),
    default=RecordMode.ONCE.value,
    help="Record mode, with vcrpy's names (off: live, cassettes untouched).",
)


def common_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Options every command that touches connections or cassettes shares."""
    for option in reversed([CONFIG_OPTION, DATA_DIR_OPTION, CASSETTES_OPTION, RECORD_MODE_OPTION]):
        fn = option(fn)
    return fn


def replay_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """How replayed answers are paced (`serve` and `run`)."""
    options = [
        click.option(
            "--replay-latency",
            type=click.Choice(REPLAY_LATENCIES, case_sensitive=False),
            default=REPLAY_LATENCIES[0],
            help="On replay: answer at once (none), or sleep each answer's recorded latency (recorded).",
        ),
        click.option(
            "--replay-speed",
            type=click.FloatRange(min=0, min_open=True),
            default=DEFAULT_REPLAY_SPEED,
            metavar="F",
            help="With --replay-latency recorded: divide the recorded delays by F (2 replays twice as fast).",
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def build_settings(config: Config, **flags: Any) -> Settings:
    """Flags beat the config file's settings, which beat the defaults. A flag that only holds the
    default its --help shows was not given, so the file's setting still counts."""
    file = config.settings
    ctx = click.get_current_context(silent=True)
    if ctx is not None:
        flags = {k: v for k, v in flags.items() if ctx.get_parameter_source(k) is not ParameterSource.DEFAULT}

    def pick(name: str, default: Any) -> Any:
        value = flags.get(name)
        return value if value is not None else file.get(name, default)

    return Settings(
        host=pick("host", DEFAULT_HOST),
        port=int(pick("port", DEFAULT_PORT)),
        data_dir=Path(pick("data_dir", DEFAULT_DATA_DIR)),
        cassettes_dir=Path(pick("cassettes", file.get("cassettes_dir", DEFAULT_CASSETTES_DIR))),
        record_mode=RecordMode.parse(pick("record_mode", RecordMode.ONCE)).value,
        allow_http=bool(flags.get("allow_http") or file.get("allow_http", False)),
        traceparent=bool(file.get("traceparent", True)),
        api_key=pick("api_key", None) or os.environ.get("PROXY_API_KEY"),
        replay_latency=str(pick("replay_latency", "none")).lower(),
        allowed_hosts=tuple(flags.get("allowed_hosts") or ()),
        cors_origins=tuple(flags.get("cors_origins") or ()),
        replay_speed=float(pick("replay_speed", DEFAULT_REPLAY_SPEED)),
        fault_seed=None if file.get("fault_seed") is None else int(file["fault_seed"]),
        cassette_max_age=file.get("cassette_max_age"),
        on_expired=str(file.get("on_expired", ON_EXPIRED[0])),
        flow_log_size=flow_log_size(file.get("flow_log_size", DEFAULT_FLOW_LOG_SIZE)),
        # Checked when the file was read; what it leaves out keeps its default.
        **{key: kind(file[key]) for key, (kind, _) in CLIENT_LIMITS.items() if file.get(key) is not None},
    )


def flow_log_size(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise click.ClickException(f"settings.flow_log_size: {value!r} is not a positive whole number of flows")
    return value


def _checked(normalize: Callable[[str], str]) -> Callable[[click.Context, click.Parameter, tuple[str, ...]], Any]:
    """A click callback that normalizes each value of a repeatable option, or names the bad one."""

    def callback(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> tuple[str, ...]:
        try:
            return tuple(normalize(v) for v in values)
        except ValueError as exc:
            raise click.BadParameter(str(exc)) from None

    return callback


def read_config(path: Path | None) -> Config:
    if path is None:
        return Config()
    try:
        return load_config(path)
    except ConfigError as exc:
        raise click.ClickException(exc.message) from None


@click.group(context_settings={"show_default": True})
@click.version_option(package_name="proxy")
def main() -> None:
    """Local mock-and-record server for Galtea endpoint connections and Cohere connectors.

    An option left out takes its value from the config file's settings, else the default shown.

    Exit status: 0 on success, 1 when the command failed (see each command), 2 on bad usage.
    """


@main.command()
@common_options
@click.option("--host", default=DEFAULT_HOST, help="Address to listen on (loopback unless you change it).")
@click.option("--port", type=click.IntRange(0, 65535), default=DEFAULT_PORT, help="Port (0: any free port).")
@click.option("--api-key", default=None, help="Require 'Authorization: Bearer KEY' (or set PROXY_API_KEY).")
@click.option("--allow-http", is_flag=True, help="Accept http:// connection URLs without acknowledgement.")
@click.option(
    "--allowed-host",
    "allowed_hosts",
    multiple=True,
    metavar="NAME",
    callback=_checked(normalize_host_name),
    help="Also answer requests whose Host is NAME (repeatable); by default only the bind address, "
    "localhost and loopback addresses.",
)
@click.option(
    "--cors-origin",
    "cors_origins",
    multiple=True,
    metavar="ORIGIN",
    callback=_checked(normalize_origin),
    help="Let web pages of ORIGIN (scheme://host[:port]) call the API, with CORS headers (repeatable).",
)
@replay_options
def serve(config_path: Path | None, **flags: Any) -> None:
    """Run the server. Prints its URL on standard output once it is listening; logs go to standard error.

    Exit status: 0 after a clean shutdown (Ctrl-C, SIGTERM), 1 when the config file or the data dir is
    unusable, 2 on bad usage or when it cannot listen (e.g. the port is in use).
    """
    from proxy.app import create_app
    from proxy.http_limits import server_config
    from proxy.listener import AnnouncingServer, listen, url_of, why_not
    from proxy.runtime import Runtime
    from proxy.secrets import install_log_redaction

    config = read_config(config_path)
    settings = build_settings(config, **flags)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # its INFO lines carry full upstream URLs
    try:
        runtime = Runtime(settings, config)
        runtime.check_config()
    except ConfigError as exc:
        raise click.ClickException(exc.message) from None
    except (OSError, RuntimeError) as exc:
        raise click.ClickException(str(exc)) from None
    try:
        sock = listen(settings.host, settings.port)
    except (OSError, OverflowError) as exc:
        runtime.store.close()
        click.echo(f"proxy: cannot listen on {settings.host}:{settings.port}: {why_not(exc, settings.port)}", err=True)
        sys.exit(2)

    def announce() -> None:
        settle_heap()
        click.echo(f"proxy listening on {url_of(sock)}")
        sys.stdout.flush()

    install_log_redaction(runtime.redactor)  # this process is this server's: every log line is scrubbed
    app = create_app(runtime)
    server = AnnouncingServer(server_config(app, settings, log_level="info", access_log=False), announce)
    server.run(sockets=[sock])
    if server.stopped_by is not None:  # a clean shutdown, as asked: exit 0 (the help's promise)
        click.echo(f"proxy stopped ({server.stopped_by.name})")


def settle_heap() -> None:
    """Once start-up has loaded what lives as long as the server, keep the collector from walking it again
    (`proxy serve` only: this process is the server's, so its collector is too)."""
    import gc

    from proxy.settings import GC_THRESHOLDS

    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def _runtime(config_path: Path | None, flags: dict[str, Any]) -> Any:
    """A Runtime for the in-process commands, with config errors as clean CLI errors."""
    from proxy.runtime import Runtime

    config = read_config(config_path)
    settings = build_settings(config, **flags)
    try:
        runtime = Runtime(settings, config)
        runtime.check_config()
    except ConfigError as exc:
        raise click.ClickException(exc.message) from None
    return runtime


def _parse_json_option(value: str | None, name: str) -> Any:
    if value is None:
        return None
    try:
        return json.loads(value)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not valid JSON: {exc.msg} (column {exc.colno})", param_hint=name) from None


@main.command()
@click.argument("dataset", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--version", "version_name", help="Version (name or id) whose lifecycle runs each test case.")
@click.option("--connection", "connection_name", help="Or: one CONVERSATION connection (name or id), no lifecycle.")
@common_options
@click.option("--concurrency", type=click.IntRange(1, 256), default=DEFAULT_CONCURRENCY, help="Sessions run at once.")
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False), help="Write results here, one JSON line each.")
@replay_options
def run(
    dataset: Path,
    version_name: str | None,
    connection_name: str | None,
    config_path: Path | None,
    concurrency: int,
    out: Path | None,
    **flags: Any,
) -> None:
    """Run a dataset in-process: one session per test case, sessions concurrent.

    DATASET is JSONL (one test case a line) or a JSON array. On a terminal a progress bar is drawn on
    standard error; otherwise one line per finished session goes to standard output. The summary follows
    on standard output.

    Exit status: 0 when every session passed, 1 when any failed (or the config file is unusable),
    2 on bad usage or a bad dataset (every bad line is named; nothing ran).
    """
    import asyncio

    from proxy.dataset import DatasetError, load_dataset

    if bool(version_name) == bool(connection_name):
        raise click.UsageError("give exactly one of --version NAME or --connection NAME")
    try:
        cases = load_dataset(dataset)
    except DatasetError as exc:
        raise click.UsageError(str(exc)) from None  # exit 2: nothing ran
    runtime = _runtime(config_path, flags)
    results = asyncio.run(_run(runtime, cases, version_name, connection_name, concurrency))
    if out:
        out.write_text("".join(r.to_json_line() + "\n" for r in results), encoding="utf-8")
    from proxy.runner import summary

    click.echo("\n".join(["Summary", *summary(results)]))
    if out:
        click.echo(f"  results   {out}")
    if not all(r.passed for r in results):
        sys.exit(1)


async def _run(
    runtime: Any, cases: Any, version_name: str | None, connection_name: str | None, concurrency: int
) -> Any:
    from proxy.errors import ProxyError
    from proxy.runner import run_dataset

    await runtime.start()
    try:
        try:
            version = (
                _resolve_version(runtime, version_name)
                if version_name
                else await _connection_version(runtime, connection_name or "")
            )
        except ProxyError as exc:
            raise click.ClickException(exc.message) from None
        progress = Progress(len(cases))
        results = await run_dataset(runtime, version, cases, concurrency, progress.done)
        progress.close()
        return results
    finally:
        await runtime.close()


def _resolve_version(runtime: Any, ref: str) -> Any:
    from proxy.errors import NotFound

    for version in runtime.versions.all():
        if ref in (version.id, version.name):
            return version
    names = ", ".join(sorted(v.name for v in runtime.versions.all())) or "none"
    raise NotFound(f"--version: no version {ref!r} (known: {names})")


async def _connection_version(runtime: Any, ref: str) -> Any:
    conn = runtime.connections.find(ref)
    if conn is None:
        from proxy.errors import NotFound

        names = ", ".join(sorted(c.name for c in runtime.connections.all())) or "none"
        raise NotFound(f"--connection: no connection {ref!r} (known: {names})")
    data = {"name": f"{conn.name} (proxy run)", "product_id": conn.spec.product_id, "conversation": conn.id}
    return await runtime.versions.upsert_by_name(data)


class Progress:
    """A progress bar on a terminal (standard error); otherwise a line per finished session on standard
    output, where the summary follows them (CI logs, captured output)."""

    def __init__(self, total: int) -> None:
        self.total, self.finished, self.failed = total, 0, 0
        self.tty = sys.stderr.isatty()

    def done(self, result: Any) -> None:
        self.finished += 1
        self.failed += not result.passed
        if self.tty:
            filled = int(30 * self.finished / self.total)
            bar = "#" * filled + "." * (30 - filled)
            sessions = noun(self.total, "session")
            click.echo(f"\r[{bar}] {self.finished}/{self.total} {sessions}, {self.failed} failed", nl=False, err=True)
        else:
            click.echo(f"{result.test_case_id}: {result.status} ({counted(len(result.turns), 'turn')})")

    def close(self) -> None:
        if self.tty:
            click.echo("", err=True)


@main.command()
@click.argument("connection")
@click.option("--input", "input_json", help='Input as JSON, e.g. \'{"user_message": "Hi"}\' (or a JSON string).')
@click.option("--context", "context_json", help="Context as a JSON object.")
@click.option("--dry-run", is_flag=True, help="Render the request and stop: send nothing.")
@common_options
def check(
    connection: str,
    input_json: str | None,
    context_json: str | None,
    dry_run: bool,
    config_path: Path | None,
    **flags: Any,
) -> None:
    """Debug one connection: the rendered request, the reply, what each JSONPath extracted.

    CONNECTION is a name or an id. The call goes through the connection's cassette, as testConnection does.

    Exit status: 0 when the call and every required output-mapping key succeeded, 1 when one failed (or
    the connection is unknown, or the config file unusable), 2 on bad usage (e.g. --input is not JSON).
    """
    import asyncio

    from proxy.engine import CallContext
    from proxy.explain import explain
    from proxy.settings import DEFAULT_TEST_INPUT

    test_input = _parse_json_option(input_json, "--input")
    context = _parse_json_option(context_json, "--context")
    if context is not None and not isinstance(context, dict):
        raise click.BadParameter("must be a JSON object", param_hint="--context")
    runtime = _runtime(config_path, flags)

    async def go() -> tuple[Any, Any, bool]:
        await runtime.start()
        try:
            conn = runtime.connections.find(connection)
            if conn is None:
                names = ", ".join(sorted(c.name for c in runtime.connections.all())) or "none"
                raise click.ClickException(f"no connection {connection!r} (known: {names})")
            mode = runtime.library.mode_for(conn.name)
            handle = runtime.library.server_handle("connections", conn.name, "check", mode)
            ctx = CallContext(
                input=DEFAULT_TEST_INPUT if test_input is None else test_input,
                context=context or {},
                cassette=handle,
                warn_undefined=True,
            )
            if dry_run:
                return conn, runtime.engine.render(conn, ctx), False
            return conn, await runtime.engine.call(conn, ctx), True
        finally:
            await runtime.close()

    conn, result, sent = asyncio.run(go())
    click.echo("\n".join(explain(conn, result, sent)))
    if result.error or result.request is None:
        sys.exit(1)


@main.group()
def cassettes() -> None:
    """List, show, verify and import cassettes, and check them for drift against the live endpoints.

    Exit status: see each command; 2 on bad usage.
    """


def data_dir_option(what_for: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """`--data-dir` for a cassettes command, saying what it reads there."""
    return click.option(
        "--data-dir", type=click.Path(path_type=Path), default=DEFAULT_DATA_DIR, help=f"Data folder: {what_for}"
    )


def _cassette_root(cassettes: Path, config_path: Path | None) -> Path:
    config = read_config(config_path)
    return build_settings(config, cassettes=cassettes).cassettes_dir


@cassettes.command("list")
@CASSETTES_OPTION
@CONFIG_OPTION
def cassettes_list(cassettes: Path, config_path: Path | None) -> None:
    """List cassettes with their interaction counts.

    Exit status: 0 (an unreadable cassette is listed as such), 1 when the config file is unusable.
    """
    from proxy.transports.inventory import inventory

    root = _cassette_root(cassettes, config_path)
    entries = inventory(root)
    if not entries:
        click.echo(f"no cassettes under {root}")
    for entry in entries:
        n = entry.interactions
        count = f"{n:>6} {noun(n, 'interaction'):<12}" if n is not None else f"{'UNREADABLE':>19}"
        click.echo(f"{count}  {entry.name}" + (f"  ({entry.error})" if entry.error else ""))


@cassettes.command("show")
@click.argument("name")
@CASSETTES_OPTION
@CONFIG_OPTION
def cassettes_show(name: str, cassettes: Path, config_path: Path | None) -> None:
    """Pretty-print one cassette (by name, e.g. sessions/tc-1, or path).

    Exit status: 0 when shown, 1 when there is no such cassette or it does not parse.
    """
    from proxy.transports.inventory import find, show

    root = _cassette_root(cassettes, config_path)
    path = find(root, name)
    if path is None:
        raise click.ClickException(f"no cassette {name!r} under {root} (see: proxy cassettes list)")
    try:
        click.echo("\n".join(show(path)))
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None


@cassettes.command("drift")
@click.argument("names", nargs=-1)
@CONFIG_OPTION
@DATA_DIR_OPTION
@CASSETTES_OPTION
@click.option(
    "--update", is_flag=True, help="Re-record the interactions that drifted (each cassette written atomically)."
)
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable report (JSON) instead of text.")
def cassettes_drift(
    names: tuple[str, ...], config_path: Path | None, update: bool, as_json: bool, **flags: Any
) -> None:
    """Re-send recorded requests live and report where the answers drifted from the recordings.

    NAMES are cassettes (e.g. connections/chat, sessions/tc-1); all of them by default. Each recorded
    request is sent again, live, with its connection's current credentials. A different status, a key
    added or missing, or a value whose JSON type changed is drift (named by JSONPath, e.g.
    `$.usage.total_tokens: number → string`); a value that changed within its type is not.

    Exit status: 0 when nothing drifted (with --update: once what drifted is re-recorded), 1 when an
    interaction drifted or could not be re-sent, a cassette is unknown or refused, or the config file is unusable.
    """
    import asyncio

    from proxy.drift import drift, report_lines, summary
    from proxy.transports.inventory import cassette_files, find

    runtime = _runtime(config_path, flags)
    root = runtime.settings.cassettes_dir
    paths = []
    for name in names:
        path = find(root, name)
        if path is None:
            runtime.store.close()
            raise click.ClickException(f"no cassette {name!r} under {root} (see: proxy cassettes list)")
        paths.append(path)

    async def go() -> Any:
        await runtime.start()
        try:
            return await drift(runtime, paths or cassette_files(root), update)
        finally:
            await runtime.close()

    try:
        checked = asyncio.run(go())
    except ValueError as exc:  # a cassette that cannot be read or is refused: the line naming it, not a traceback
        raise click.ClickException(str(exc)) from None
    counts = summary(checked)
    if as_json:
        click.echo(json.dumps({"interactions": [c.to_json() for c in checked], "summary": counts}, ensure_ascii=False))
    else:
        click.echo("\n".join(report_lines(checked)))
    if counts["errors"] or counts["drifted"] > counts["updated"]:
        sys.exit(1)


@cassettes.command("verify")
@CASSETTES_OPTION
@CONFIG_OPTION
@data_dir_option("the secrets stored there are looked for too, and in its parse cache.")
def cassettes_verify(cassettes: Path, config_path: Path | None, data_dir: Path) -> None:
    """Check that every cassette parses, loads in vcrpy and holds no secret (status lines and header names
    included), and that the data dir's parse cache holds none either.

    Exit status: 0 when every cassette passed, 1 on any problem (each is printed), 2 when there is no cassettes
    folder (run from the wrong folder, a CI step would otherwise pass having checked nothing).
    """
    from proxy.runtime import known_secrets
    from proxy.transports.inventory import verify
    from proxy.transports.parse_cache import ParseCache

    config = read_config(config_path)
    settings = build_settings(config, cassettes=cassettes, data_dir=data_dir)
    if not settings.cassettes_dir.is_dir():
        click.echo(f"proxy: no cassettes folder at {settings.cassettes_dir.absolute()}: nothing verified", err=True)
        sys.exit(2)
    try:
        redactor = known_secrets(settings, config)
    except ConfigError as exc:
        raise click.ClickException(exc.message) from None
    except RuntimeError as exc:  # a key that does not decrypt the stored secrets
        raise click.ClickException(str(exc)) from None
    entries, problems = verify(settings.cassettes_dir, redactor, ParseCache.in_data_dir(settings.data_dir))
    for problem in problems:
        click.echo(f"PROBLEM  {problem}")
    total = sum(e.interactions or 0 for e in entries)
    click.echo(
        f"{counted(len(entries), 'cassette')}, {counted(total, 'interaction')}, {counted(len(problems), 'problem')}"
    )
    if problems:
        sys.exit(1)


@cassettes.command("import")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--connection",
    "connection_name",
    metavar="NAME",
    help="The connection the interactions replay on (/forward/NAME/…), or NAME=URL for a forward-only upstream "
    "(the pytest plugin's --proxy-upstream). Default: for each interaction, the one connection whose URL has its "
    "origin.",
)
@CASSETTES_OPTION
@CONFIG_OPTION
@data_dir_option("its connections can be imported for, and the secrets stored there are masked too.")
def cassettes_import(
    paths: tuple[Path, ...], connection_name: str | None, cassettes: Path, config_path: Path | None, data_dir: Path
) -> None:
    """Import cassettes written by vcrpy or pytest-recording, with their secrets masked, so that the forward
    route replays them.

    PATHS are cassette files (.yaml, .yml, or .json from vcrpy's JSON serializer), each imported into
    connections/<connection>.yaml, or folders of per-test cassettes (pytest-recording's <module>/<test>.yaml),
    each file imported into <module>/<test>/connections/<connection>.yaml, where the pytest plugin replays it.
    An interaction on another origin than its connection's is skipped. Credential headers, credential-named
    query values, the secrets the config file and data dir hold, the credentials the cassettes carry (wherever
    they appear again) and token-shaped values are masked. Compressed answers are stored decoded. Importing a
    file again adds nothing. What was written is then checked as `proxy cassettes verify` checks it.

    Exit status: 0 when every interaction was imported and the check passed, 1 when a file could not be read, an
    interaction was skipped or the check found a problem (each is printed), 2 on bad usage (an unknown
    connection).
    """
    from proxy.runtime import known_connection_urls, known_secrets
    from proxy.transports.importing import Connections, import_cassettes
    from proxy.transports.inventory import verify_files

    config = read_config(config_path)
    settings = build_settings(config, cassettes=cassettes, data_dir=data_dir)
    try:
        redactor = known_secrets(settings, config)
        urls = known_connection_urls(settings, config)
    except ConfigError as exc:
        raise click.ClickException(exc.message) from None
    except RuntimeError as exc:  # a key that does not decrypt the stored secrets
        raise click.ClickException(str(exc)) from None
    if connection_name is not None and "=" in connection_name:  # a forward-only upstream, as the pytest plugin's
        from proxy.upstreams import parse_assignment

        try:
            name, url = parse_assignment(connection_name, "--connection")
        except InvalidField as exc:
            raise click.BadParameter(exc.message, param_hint="--connection") from None
        connection_name, urls[name] = name, url
    if connection_name is not None:
        _check_import_connection(connection_name, urls)
    root = settings.cassettes_dir
    results = import_cassettes(paths, root, Connections(urls, connection_name), redactor)
    for result in results:
        for line in result.lines():
            click.echo(line)
    written = sorted({w.path for result in results for w in result.written})
    entries, problems = verify_files(root, written, redactor)
    for problem in problems:
        click.echo(f"PROBLEM  {problem}")
    total = sum(e.interactions or 0 for e in entries)
    click.echo(
        f"checked {counted(len(entries), 'cassette')}, {counted(total, 'interaction')}: "
        f"{counted(len(problems), 'problem')}"
    )
    if problems or not all(result.complete for result in results):
        sys.exit(1)


def _check_import_connection(name: str, urls: dict[str, str]) -> None:
    from proxy.origins import fixed_origin

    if name not in urls:
        known = ", ".join(sorted(urls)) or "none"
        raise click.BadParameter(
            f"no connection {name!r} in the config file or the data dir (known: {known})", param_hint="--connection"
        )
    if fixed_origin(urls[name]) is None:
        raise click.BadParameter(
            f"connection {name!r} has no fixed origin (its URL template decides it: {urls[name]}), so the forward "
            "route cannot replay for it",
            param_hint="--connection",
        )


def _since(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    """A date (`2026-01-31`), a time (`2026-01-31T12:00Z`), or an age (`30d`, `12h`) before now."""
    if value is None:
        return None
    from datetime import UTC, datetime, timedelta

    from proxy.expiry import parse_max_age, parse_time

    when = parse_time(value)
    if when is not None:
        return when
    try:
        return datetime.now(UTC) - timedelta(seconds=parse_max_age(value, "--unused-since"))
    except InvalidField:
        raise click.BadParameter(f"{value!r} is not a date (2026-01-31), a time or an age (30d, 12h, 90m)") from None


@cassettes.command("prune")
@click.option("--unused-since", "since", callback=_since, metavar="DATE", help="A date, or an age (30d).")
@click.option("--orphans", is_flag=True, help="The test folders the last test run found no test for.")
@click.option("--delete", is_flag=True, help="Delete the cassettes listed (otherwise only list them).")
@CASSETTES_OPTION
@CONFIG_OPTION
@data_dir_option("where the server noted each cassette's last use.")
def cassettes_prune(
    since: Any, orphans: bool, delete: bool, cassettes: Path, config_path: Path | None, data_dir: Path
) -> None:
    """List the cassettes no session, connection or connector has used since DATE (never used counts as
    unused), as the server whose data dir this is noted their use; --delete deletes them. With --orphans instead:
    the per-test folders that no test of the last pytest run maps to (a test renamed or removed).

    Use is read from the data dir's database and its cassette-usage.json (where the pytest plugin notes it), and
    orphans from its cassette-orphans.json. With no record for this cassettes folder there, nothing is listed or
    deleted: every cassette would only look unused.

    Exit status: 0 (also when there is nothing to prune), 1 when the config file is unusable, 2 when the data dir
    holds no record for the cassettes folder (or neither --unused-since nor --orphans is given).
    """
    if (since is None) == (not orphans):
        raise click.UsageError("give --unused-since DATE or --orphans (one of them)")
    config = read_config(config_path)
    settings = build_settings(config, cassettes=cassettes, data_dir=data_dir)
    if orphans:
        _prune_orphans(settings.cassettes_dir, settings.data_dir, delete)
        return
    from proxy.transports.inventory import unused
    from proxy.transports.usage import covers, read_usage

    root = settings.cassettes_dir
    usage = read_usage(settings.data_dir)
    if usage is None or not covers(usage, root):
        _no_record("cassette use", root, settings.data_dir, "the server or test run that used them")
    stale, total = unused(root, usage, since)
    for entry in stale:
        click.echo(f"{entry.name}  {entry.last_use}")
        if delete:
            entry.path.unlink(missing_ok=True)
    verb = "deleted" if delete else "unused"
    click.echo(
        f"{len(stale)} of {counted(total, 'cassette')} under {root} {verb}: not used since {since:%Y-%m-%d %H:%M}"
    )


def _inside(root: Path, folder: str) -> bool:
    """Whether `folder` names a folder strictly inside `root`, as written and as resolved (no `..`, no absolute path,
    no symlink out)."""
    parts = Path(folder).parts
    if not parts or Path(folder).is_absolute() or any(part in ("..", ".", "") for part in parts):
        return False
    return (root / folder).resolve().is_relative_to(root.resolve()) and (root / folder).resolve() != root.resolve()


def _no_record(what: str, root: Path, data_dir: Path, whose: str) -> NoReturn:
    message = f"proxy: no record of {what} under {root} in {data_dir}: nothing pruned (give --data-dir of {whose})"
    click.echo(message, err=True)
    sys.exit(2)


def _prune_orphans(root: Path, data_dir: Path, delete: bool) -> None:
    """The orphaned test folders the last pytest run recorded for `root`, listed, and with `delete` removed (their
    cassettes, then the folders left empty)."""
    from proxy.pytest_cassettes import orphans_of
    from proxy.transports.inventory import cassette_files

    found = orphans_of(data_dir, root)
    if found is None:
        _no_record("orphaned test folders", root, data_dir, "the pytest run (its .proxy folder)")
    removed = 0
    for folder in found:
        path = root / folder
        if not _inside(root, folder):  # the record is a file anyone can commit: it never reaches outside the folder
            click.echo(f"{folder!r}  refused: not a test folder inside {root}", err=True)
            continue
        files = cassette_files(path) if path.is_dir() else []
        click.echo(f"{folder}  {counted(len(files), 'cassette')}")
        if delete:
            for file in files:
                file.unlink(missing_ok=True)
            for empty in sorted((p for p in path.rglob("*") if p.is_dir()), reverse=True):
                if not any(empty.iterdir()):
                    empty.rmdir()
            if path.is_dir() and not any(path.iterdir()):
                path.rmdir()
            removed += 1
    verb = "deleted" if delete else "orphaned"
    click.echo(f"{len(found) if not delete else removed} test folder(s) under {root} {verb}")
