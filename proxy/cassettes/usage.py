"""When each cassette file was last used, for `proxy cassettes prune`, kept where it outlives a test session.

A server notes use in its data dir's database (the `cassette_usage` table, on the store's writer thread). A
process whose data dir is thrown away afterwards (the pytest plugin's server, one per xdist worker) also merges
what it noted into `cassette-usage.json` in a lasting folder (`.proxy/` beside the tests by default): under a file
lock, each entry keeping its newest use, replaced atomically, so parallel workers lose nothing. `prune` reads both.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

from filelock import FileLock

from proxy.cassettes.files import atomic_write
from proxy.security.data_dir import make_private_dir, tighten
from proxy.storage.store import DB_FILE_NAME, Store

USAGE_FILE_NAME = "cassette-usage.json"
Usage = dict[str, tuple[str, str]]  # {absolute cassette path: (last used, ISO 8601 UTC; by whom)}
USAGE_TABLE = "cassette_usage"  # each cassette file's last use: when, and by which session, connection or connector


def create_usage_table(store: Store) -> None:
    store.db.execute(
        f"CREATE TABLE IF NOT EXISTS {USAGE_TABLE}"
        " (path TEXT PRIMARY KEY, last_used TEXT NOT NULL, used_by TEXT NOT NULL)"
    )


def note_use(store: Store, path: str, used_at: str, used_by: str) -> None:
    """Note a cassette file's use (writer thread; through `Store.write`), for `proxy cassettes prune`."""
    store.db.conn.execute(
        f"INSERT INTO {USAGE_TABLE} (path, last_used, used_by) VALUES (?, ?, ?) ON CONFLICT(path) DO UPDATE "
        "SET last_used = excluded.last_used, used_by = excluded.used_by",
        (path, used_at, used_by),
    )


def read_cassette_usage(data_dir: Path) -> Usage:
    """{cassette file: (last used, by whom)} from a data dir's database, read-only and without its key;
    empty when there is no database yet."""
    path = data_dir / DB_FILE_NAME
    if not path.exists():
        return {}
    conn = sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True)
    try:
        if not conn.execute("SELECT 1 FROM sqlite_master WHERE name = ?", (USAGE_TABLE,)).fetchone():
            return {}
        return {row[0]: (row[1], row[2]) for row in conn.execute(f"SELECT path, last_used, used_by FROM {USAGE_TABLE}")}
    finally:
        conn.close()


def usage_file(folder: Path) -> Path:
    return folder / USAGE_FILE_NAME


def read_record(path: Path) -> dict[str, Any]:
    """A JSON object kept in a lasting folder; a missing or unreadable one holds nothing (a record, never a must)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def read_usage_file(path: Path) -> Usage:
    """The usage file's entries."""
    return read_usage_file_from(read_record(path))


def read_usage_file_from(data: dict[str, Any]) -> Usage:
    return {
        str(path_text): (str(entry[0]), str(entry[1]))
        for path_text, entry in data.items()
        if isinstance(entry, list) and len(entry) == 2
    }


def merge_usage_file(path: Path, uses: Usage) -> None:
    """Add `uses` to the usage file, keeping each cassette's newest use, under the file's lock."""
    if not uses:
        return

    def merged(record: dict[str, Any]) -> dict[str, Any]:
        known = read_usage_file_from(record)
        for cassette, (used_at, used_by) in uses.items():
            if cassette not in known or known[cassette][0] <= used_at:  # ISO 8601 UTC sorts as time
                known[cassette] = (used_at, used_by)
        return {key: list(value) for key, value in sorted(known.items())}

    update_record(path, merged)


def update_record(path: Path, change: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
    """Rewrite a JSON record of a lasting folder as `change` makes it from what is there now, under the record's
    file lock (parallel test workers add up) and atomically; 0600 in a 0700 folder that git ignores, like every
    file of a data dir (it names the project's cassettes and tests)."""
    make_private_dir(path.parent)
    ignored_by_git(path.parent)
    with FileLock(str(path) + ".lock", timeout=60, mode=0o600):
        atomic_write(path, json.dumps(change(read_record(path)), indent=1, sort_keys=True))
        tighten(path, 0o600)


def ignored_by_git(folder: Path) -> None:
    """A folder we create in a user's project keeps itself out of git, as `.pytest_cache` does."""
    ignore = folder / ".gitignore"
    if not ignore.exists():
        try:
            with open(ignore, "x", encoding="utf-8") as f:
                f.write("# written by proxy: this folder holds local state only\n*\n")
        except FileExistsError:
            pass


def read_usage(data_dir: Path) -> Usage | None:
    """Every use noted in `data_dir` (its database and its usage file), newest per cassette; None when the folder
    holds no usage record at all."""
    database = read_cassette_usage(data_dir)
    file = usage_file(data_dir)
    if not database and not file.exists():
        return None
    merged = dict(database)
    for cassette, use in read_usage_file(file).items():
        if cassette not in merged or merged[cassette][0] <= use[0]:
            merged[cassette] = use
    return merged


def covers(usage: Usage, root: Path) -> bool:
    """Whether the record knows any cassette under `root` (else it was kept for another folder)."""
    prefix = str(root.resolve()) + os.sep
    return any(cassette.startswith(prefix) for cassette in usage)
