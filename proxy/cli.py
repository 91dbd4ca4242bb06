"""The `proxy` command line."""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from proxy.config import Config, load_config
from proxy.errors import ConfigError
from proxy.runner import DEFAULT_CONCURRENCY
from proxy.settings import DEFAULT_CASSETTES_DIR, DEFAULT_DATA_DIR, DEFAULT_HOST, DEFAULT_PORT, Settings

RECORD_MODES = ("none", "once", "new_episodes", "all", "off")


def common_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Options every command that touches connections or cassettes shares."""
    options = [
        click.option("--config", "config_path", type=click.Path(path_type=Path), help="YAML config file."),
        click.option("--data-dir", type=click.Path(path_type=Path), default=None, help="SQLite data folder."),
        click.option("--cassettes", type=click.Path(path_type=Path), default=None, help="Cassette folder."),
        click.option(
            "--record-mode",
            type=click.Choice(RECORD_MODES, case_sensitive=False),
            default=None,
            help="Record mode (vcrpy's names); default: once.",
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def build_settings(config: Config, **flags: Any) -> Settings:
    """Flags beat the config file's settings, which beat the defaults."""
    file = config.settings

    def pick(name: str, default: Any) -> Any:
        value = flags.get(name)
        return value if value is not None else file.get(name, default)

    return Settings(
        host=pick("host", DEFAULT_HOST),
        port=int(pick("port", DEFAULT_PORT)),
        data_dir=Path(pick("data_dir", DEFAULT_DATA_DIR)),
        cassettes_dir=Path(pick("cassettes", file.get("cassettes_dir", DEFAULT_CASSETTES_DIR))),
        record_mode=str(pick("record_mode", "once")).lower(),
        allow_http=bool(flags.get("allow_http") or file.get("allow_http", False)),
        traceparent=bool(file.get("traceparent", True)),
        api_key=pick("api_key", None) or os.environ.get("PROXY_API_KEY"),
        replay_latency=str(pick("replay_latency", "none")).lower(),
    )


def read_config(path: Path | None) -> Config:
    if path is None:
        return Config()
    try:
        return load_config(path)
    except ConfigError as exc:
        raise click.ClickException(exc.message) from None


@click.group()
@click.version_option(package_name="proxy")
def main() -> None:
    """Local mock-and-record server for Galtea endpoint connections and Cohere connectors."""


@main.command()
@common_options
@click.option("--host", default=None, help=f"Address to bind (default {DEFAULT_HOST}).")
@click.option("--port", type=int, default=None, help=f"Port (default {DEFAULT_PORT}).")
@click.option("--api-key", default=None, help="Require 'Authorization: Bearer KEY' (or set PROXY_API_KEY).")
@click.option(
    "--allow-http", is_flag=True, default=None, help="Accept http:// connection URLs without acknowledgement."
)
def serve(config_path: Path | None, **flags: Any) -> None:
    """Run the server."""
    import uvicorn

    from proxy.app import create_app
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
    install_log_redaction(runtime.redactor)  # this process is this server's: every log line is scrubbed
    app = create_app(runtime)
    click.echo(f"proxy listening on http://{settings.host}:{settings.port}", err=False)
    sys.stdout.flush()
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="info", access_log=False)


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
@click.option("--concurrency", type=click.IntRange(1, 256), default=DEFAULT_CONCURRENCY, show_default=True)
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False), help="Write results here, one JSON line each.")
@click.option("--replay-latency", type=click.Choice(["none", "recorded"]), default=None, help="Sleep recorded latency.")
def run(
    dataset: Path,
    version_name: str | None,
    connection_name: str | None,
    config_path: Path | None,
    concurrency: int,
    out: Path | None,
    **flags: Any,
) -> None:
    """Run a dataset in-process: one session per test case, sessions concurrent."""
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
    """A progress bar on a terminal; plain lines otherwise (CI logs)."""

    def __init__(self, total: int) -> None:
        self.total, self.finished, self.failed = total, 0, 0
        self.tty = sys.stderr.isatty()

    def done(self, result: Any) -> None:
        self.finished += 1
        self.failed += not result.passed
        if self.tty:
            filled = int(30 * self.finished / self.total)
            bar = "#" * filled + "." * (30 - filled)
            click.echo(f"\r[{bar}] {self.finished}/{self.total} sessions, {self.failed} failed", nl=False, err=True)
        else:
            click.echo(f"{result.test_case_id}: {result.status} ({len(result.turns)} turns)", err=True)

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
    """Debug one connection: the rendered request, the reply, what each JSONPath extracted."""
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
                input=DEFAULT_TEST_INPUT if test_input is None else test_input, context=context or {}, cassette=handle
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
    """List, show and verify cassettes."""


def _cassette_root(cassettes_dir: Path | None, config_path: Path | None) -> Path:
    config = read_config(config_path)
    return build_settings(config, cassettes=cassettes_dir).cassettes_dir


@cassettes.command("list")
@click.option("--cassettes", "cassettes_dir", type=click.Path(path_type=Path), help="Cassette folder.")
@click.option("--config", "config_path", type=click.Path(path_type=Path), help="YAML config file.")
def cassettes_list(cassettes_dir: Path | None, config_path: Path | None) -> None:
    """List cassettes with their interaction counts."""
    from proxy.transports.inventory import inventory

    root = _cassette_root(cassettes_dir, config_path)
    entries = inventory(root)
    if not entries:
        click.echo(f"no cassettes under {root}")
    for entry in entries:
        count = f"{entry.interactions:>6} interactions" if entry.interactions is not None else "   UNREADABLE"
        click.echo(f"{count}  {entry.name}" + (f"  ({entry.error})" if entry.error else ""))


@cassettes.command("show")
@click.argument("name")
@click.option("--cassettes", "cassettes_dir", type=click.Path(path_type=Path), help="Cassette folder.")
@click.option("--config", "config_path", type=click.Path(path_type=Path), help="YAML config file.")
def cassettes_show(name: str, cassettes_dir: Path | None, config_path: Path | None) -> None:
    """Pretty-print one cassette (by name, e.g. sessions/tc-1, or path)."""
    from proxy.transports.inventory import find, show

    root = _cassette_root(cassettes_dir, config_path)
    path = find(root, name)
    if path is None:
        raise click.ClickException(f"no cassette {name!r} under {root} (see: proxy cassettes list)")
    try:
        click.echo("\n".join(show(path)))
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None


@cassettes.command("verify")
@click.option("--cassettes", "cassettes_dir", type=click.Path(path_type=Path), help="Cassette folder.")
@click.option("--config", "config_path", type=click.Path(path_type=Path), help="YAML config file.")
@click.option("--data-dir", type=click.Path(path_type=Path), help="Data folder: its stored secrets are looked for too.")
def cassettes_verify(cassettes_dir: Path | None, config_path: Path | None, data_dir: Path | None) -> None:
    """Check that every cassette parses, loads in vcrpy and holds no secret."""
    from proxy.runtime import known_secrets
    from proxy.transports.inventory import verify

    config = read_config(config_path)
    settings = build_settings(config, cassettes=cassettes_dir, data_dir=data_dir)
    try:
        redactor = known_secrets(settings, config)
    except ConfigError as exc:
        raise click.ClickException(exc.message) from None
    except RuntimeError as exc:  # a key that does not decrypt the stored secrets
        raise click.ClickException(str(exc)) from None
    entries, problems = verify(settings.cassettes_dir, redactor)
    for problem in problems:
        click.echo(f"PROBLEM  {problem}")
    total = sum(e.interactions or 0 for e in entries)
    click.echo(f"{len(entries)} cassettes, {total} interactions, {len(problems)} problems")
    if problems:
        sys.exit(1)
