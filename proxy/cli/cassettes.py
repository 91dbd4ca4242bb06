"""The `proxy cassettes` commands: list, show, verify, import and check for drift (prune lives in
proxy/cli/prune.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from proxy.cassettes.words import counted, noun
from proxy.cli.options import (
    CASSETTES_OPTION,
    CONFIG_OPTION,
    DATA_DIR_OPTION,
    build_settings,
    cassette_root,
    data_dir_option,
    load_runtime,
    read_config,
)
from proxy.cli.prune import cassettes_prune
from proxy.errors import ConfigError, InvalidField


@click.group()
def cassettes() -> None:
    """List, show, verify and import cassettes, and check them for drift against the live endpoints.

    Exit status: see each command; 2 on bad usage.
    """


@cassettes.command("list")
@CASSETTES_OPTION
@CONFIG_OPTION
def cassettes_list(cassettes: Path | None, config_path: Path | None) -> None:
    """List cassettes with their interaction counts.

    Exit status: 0 (an unreadable cassette is listed as such), 1 when the config file is unusable.
    """
    from proxy.cassettes.inventory import inventory

    root = cassette_root(cassettes, config_path)
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
def cassettes_show(name: str, cassettes: Path | None, config_path: Path | None) -> None:
    """Pretty-print one cassette (by name, e.g. sessions/tc-1, or path).

    Exit status: 0 when shown, 1 when there is no such cassette or it does not parse.
    """
    from proxy.cassettes.inventory import find, show

    root = cassette_root(cassettes, config_path)
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
@click.option(
    "--upstream",
    "upstreams",
    multiple=True,
    metavar="NAME=URL",
    help="A forward-only upstream, as the pytest plugin's --proxy-upstream (mcp+URL for an MCP server): its "
    "cassettes (connections/NAME) are re-sent to URL's origin. Repeatable.",
)
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable report (JSON) instead of text.")
def cassettes_drift(
    names: tuple[str, ...],
    config_path: Path | None,
    update: bool,
    upstreams: tuple[str, ...],
    as_json: bool,
    **flags: Any,
) -> None:
    """Re-send recorded requests live and report where the answers drifted from the recordings.

    NAMES are cassettes (e.g. connections/chat, sessions/tc-1); all of them by default. Each recorded
    request is sent again, live, with its connection's current credentials. A different status, a key
    added or missing, or a value whose JSON type changed is drift (named by JSONPath, e.g.
    `$.usage.total_tokens: number → string`); a value that changed within its type is not. A streamed
    answer (server-sent events) is read to its end within the connection's timeout and compared event by
    event: the first event whose name or data shape differs (`event #0 $.choices[0].delta.content: string →
    array`), how the stream ends (`data: [DONE]`, `message_stop`), and its event count when far off.

    Cassettes the pytest plugin recorded through a forward-only upstream need that upstream again:
    `--upstream openai=https://api.openai.com/v1`, as given to the plugin. It holds no credential (the client sent
    its own, masked in the cassette): the request is re-sent without the masked headers, and an answer of 401 or
    403 is reported, not taken for drift. A recording on another origin than URL's is never sent.

    Exit status: 0 when nothing drifted (with --update: once what drifted is re-recorded), 1 when an
    interaction drifted or could not be re-sent, a cassette is unknown or refused, or the config file is unusable.
    """
    import asyncio

    from proxy.cassettes.inventory import cassette_files, find
    from proxy.cli.drift import drift, report_lines, summary
    from proxy.engine.upstreams import parse_assignment

    runtime = load_runtime(config_path, flags)
    for text in upstreams:  # validated as the pytest plugin validates its --proxy-upstream
        try:
            runtime.add_upstream(*parse_assignment(text, "upstream"))
        except InvalidField as exc:
            runtime.store.close()
            shown = exc.message if exc.field.startswith("upstream") else f"{text!r}: {exc.message}"
            raise click.BadParameter(shown, param_hint="--upstream") from None
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
def cassettes_verify(cassettes: Path | None, config_path: Path | None, data_dir: Path | None) -> None:
    """Check that every cassette parses, loads in vcrpy and holds no secret (status lines and header names
    included), and that the data dir's parse cache holds none either.

    Exit status: 0 when every cassette passed, 1 on any problem (each is printed), 2 when there is no cassettes
    folder (run from the wrong folder, a CI step would otherwise pass having checked nothing).
    """
    from proxy.cassettes.inventory import verify
    from proxy.cassettes.parse_cache import ParseCache
    from proxy.server.runtime import known_secrets

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
    paths: tuple[Path, ...],
    connection_name: str | None,
    cassettes: Path | None,
    config_path: Path | None,
    data_dir: Path | None,
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
    from proxy.cassettes.importing import Connections, import_cassettes
    from proxy.cassettes.inventory import verify_files
    from proxy.server.runtime import known_connection_urls, known_secrets

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
        from proxy.engine.upstreams import parse_assignment

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
    from proxy.security.origins import fixed_origin

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


cassettes.add_command(cassettes_prune)
