"""`proxy cassettes prune`: cassettes no longer used since a date, or test folders no test maps to, listed and
deleted only on `--delete` and only where a record of their use exists."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, NoReturn

import click

from proxy.cassettes.words import counted
from proxy.cli.options import (
    CASSETTES_OPTION,
    CONFIG_OPTION,
    build_settings,
    data_dir_option,
    read_config,
)
from proxy.errors import InvalidField


def _since(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    """A date (`2026-01-31`), a time (`2026-01-31T12:00Z`), or an age (`30d`, `12h`) before now."""
    if value is None:
        return None
    from datetime import UTC, datetime, timedelta

    from proxy.config.expiry import parse_max_age, parse_time

    when = parse_time(value)
    if when is not None:
        return when
    try:
        return datetime.now(UTC) - timedelta(seconds=parse_max_age(value, "--unused-since"))
    except InvalidField:
        raise click.BadParameter(f"{value!r} is not a date (2026-01-31), a time or an age (30d, 12h, 90m)") from None


@click.command("prune")
@click.option("--unused-since", "since", callback=_since, metavar="DATE", help="A date, or an age (30d).")
@click.option("--orphans", is_flag=True, help="The test folders the last test run found no test for.")
@click.option("--delete", is_flag=True, help="Delete the cassettes listed (otherwise only list them).")
@CASSETTES_OPTION
@CONFIG_OPTION
@data_dir_option("where the server noted each cassette's last use.")
def cassettes_prune(
    since: Any, orphans: bool, delete: bool, cassettes: Path | None, config_path: Path | None, data_dir: Path | None
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
    from proxy.cassettes.inventory import unused
    from proxy.cassettes.usage import covers, read_usage

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
    from proxy.cassettes.inventory import cassette_files
    from proxy.cassettes.orphans import orphans_of

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
