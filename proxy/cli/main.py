"""The `proxy` command line: the main group, `serve`, `run` and `check` (the `cassettes` group lives in
proxy/cli/cassettes.py, the shared options in proxy/cli/options.py)."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from proxy.cassettes.words import counted, noun
from proxy.cli.cassettes import cassettes
from proxy.cli.options import build_settings, common_options, load_runtime, read_config, replay_options, shown_default
from proxy.config.settings import DEFAULT_CONCURRENCY, DEFAULT_HOST, DEFAULT_PORT
from proxy.config.web_access import normalize_host_name, normalize_origin
from proxy.errors import ConfigError


def _checked(normalize: Callable[[str], str]) -> Callable[[click.Context, click.Parameter, tuple[str, ...]], Any]:
    """A click callback that normalizes each value of a repeatable option, or names the bad one."""

    def callback(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> tuple[str, ...]:
        try:
            return tuple(normalize(v) for v in values)
        except ValueError as exc:
            raise click.BadParameter(str(exc)) from None

    return callback


@click.group(context_settings={"show_default": True})
@click.version_option(package_name="proxy")
def main() -> None:
    """Local mock-and-record server for Galtea endpoint connections and Cohere connectors.

    An option left out takes its value from the config file's settings, else the default shown.

    Exit status: 0 on success, 1 when the command failed (see each command), 2 on bad usage.
    """


@main.command()
@common_options
@click.option("--host", **shown_default(DEFAULT_HOST), help="Address to listen on (loopback unless you change it).")
@click.option("--port", type=click.IntRange(0, 65535), **shown_default(DEFAULT_PORT), help="Port (0: any free port).")
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
    from proxy.security.log_scrubbing import install_log_redaction
    from proxy.server.app import create_app
    from proxy.server.limits import server_config
    from proxy.server.listener import AnnouncingServer, listen, url_of, why_not
    from proxy.server.runtime import Runtime

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

    from proxy.config.settings import GC_THRESHOLDS

    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


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

    from proxy.sessions.dataset import DatasetError, load_dataset

    if bool(version_name) == bool(connection_name):
        raise click.UsageError("give exactly one of --version NAME or --connection NAME")
    try:
        cases = load_dataset(dataset)
    except DatasetError as exc:
        raise click.UsageError(str(exc)) from None  # exit 2: nothing ran
    runtime = load_runtime(config_path, flags)
    results = asyncio.run(_run(runtime, cases, version_name, connection_name, concurrency))
    if out:
        out.write_text("".join(r.to_json_line() + "\n" for r in results), encoding="utf-8")
    from proxy.cli.runner import summary

    click.echo("\n".join(["Summary", *summary(results)]))
    if out:
        click.echo(f"  results   {out}")
    if not all(r.passed for r in results):
        sys.exit(1)


async def _run(
    runtime: Any, cases: Any, version_name: str | None, connection_name: str | None, concurrency: int
) -> Any:
    from proxy.cli.runner import run_dataset
    from proxy.errors import ProxyError

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

    from proxy.config.settings import DEFAULT_TEST_INPUT
    from proxy.engine.results import CallContext
    from proxy.flows.explain import explain

    test_input = _parse_json_option(input_json, "--input")
    context = _parse_json_option(context_json, "--context")
    if context is not None and not isinstance(context, dict):
        raise click.BadParameter("must be a JSON object", param_hint="--context")
    runtime = load_runtime(config_path, flags)

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


main.add_command(cassettes)
