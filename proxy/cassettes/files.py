"""Cassette files shared between processes: rewritten under a per-cassette lock, written atomically (temporary
file, fsync, rename), and the temporary files a crashed writer left behind removed."""

from __future__ import annotations

import hashlib
import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from filelock import FileLock

from proxy.cassettes.cassette import Interaction, load_interactions, serialize, sha256_of
from proxy.config.settings import CASSETTE_LOCK_TIMEOUT_S
from proxy.security.data_dir import PRIVATE_DIR_MODE, PRIVATE_FILE_MODE

if TYPE_CHECKING:  # for annotations only: the parse cache writes its entries with atomic_write
    from proxy.cassettes.parse_cache import ParseCache

TEMP_MARKER = ".tmp-"


def lock_of(path: Path) -> FileLock:
    """The lock every process takes to write the cassette at `path` (servers, `proxy run`, drift, xdist workers).
    The lock file lives in a folder of this user's, named by the cassette's real path, so the cassettes folder
    holds nothing but cassettes and a read-only folder still works."""
    key = hashlib.sha256(os.path.realpath(path).encode("utf-8", "surrogatepass")).hexdigest()[:32]
    return FileLock(_lock_folder() / f"{key}.lock", timeout=CASSETTE_LOCK_TIMEOUT_S, mode=PRIVATE_FILE_MODE)


def _lock_folder() -> Path:
    """`<temp>/proxy-cassette-locks-<uid>`, unless another user made (or replaced) it first: a folder of another
    owner, open to others, or a symlink could block every recording or reach this user's lock files, so then
    `~/.cache/proxy/cassette-locks` serves instead."""
    uid = os.getuid() if hasattr(os, "getuid") else 0
    for folder in (
        Path(tempfile.gettempdir()) / f"proxy-cassette-locks-{uid}",
        Path.home() / ".cache" / "proxy" / "cassette-locks",
    ):
        try:
            folder.mkdir(mode=PRIVATE_DIR_MODE, parents=True, exist_ok=True)
            info = os.lstat(folder)
        except OSError:
            continue
        if stat.S_ISDIR(info.st_mode) and info.st_uid == uid and not info.st_mode & 0o077:
            return folder
    raise ValueError(
        f"no private folder for cassette lock files: {Path(tempfile.gettempdir()) / f'proxy-cassette-locks-{uid}'} "
        "belongs to another user or is open to others, and ~/.cache/proxy/cassette-locks cannot be made"
    )


def update_cassette(
    path: Path, change: Callable[[list[Interaction]], list[Interaction]], cache: ParseCache | None = None
) -> list[Interaction]:
    """Rewrite the cassette at `path` as `change` makes it from what is on disk now, under the cassette's lock,
    so two processes that write it in turn each build on the other's file and neither loses what the other
    recorded. Returns what was written. A file on disk that cannot be read is left alone (ValueError)."""
    with lock_of(path):
        on_disk = load_interactions(path, cache) if path.exists() else []
        interactions = change(on_disk)
        write_cassette(path, serialize(interactions), interactions, cache)
        return interactions


def write_cassette(path: Path, text: str, interactions: list[Interaction], cache: ParseCache | None = None) -> None:
    """The YAML atomically; then `cache` holds the new content and drops the old (a lost entry only costs one
    slow load). Nothing but the YAML is written into the cassette folder. Writers that another process may race
    go through `update_cassette`."""
    if cache is None:
        atomic_write(path, text)
        return
    try:
        previous: str | None = sha256_of(path.read_bytes())
    except OSError:
        previous = None
    atomic_write(path, text)
    digest = sha256_of(text.encode("utf-8"))
    cache.write(digest, interactions)
    if previous is not None and previous != digest:
        cache.forget(previous)


def atomic_write(path: Path, text: str, private: bool = False) -> None:
    """Temporary file, fsync, rename: a reader (or a crash) never sees half a cassette. A `private` file is 0600
    from its creation (the data dir's); a cassette is made as the umask says, to be committed and shared."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}{TEMP_MARKER}{os.getpid()}")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE_MODE if private else 0o666)
    if private:
        os.fchmod(fd, PRIVATE_FILE_MODE)  # a temporary file a crash left behind keeps the mode it was made with
    with open(fd, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temp, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def remove_temp_files(root: Path) -> int:
    """Temporary files a crashed writer left behind; one whose writer is still running (another server or
    worker on this folder) is that writer's to finish."""
    removed = 0
    if root.exists():
        for temp in root.rglob(f".*{TEMP_MARKER}*"):
            if _writer_alive(temp.name.rsplit(TEMP_MARKER, 1)[-1]):
                continue
            temp.unlink(missing_ok=True)
            removed += 1
    return removed


def _writer_alive(pid_text: str) -> bool:
    if not pid_text.isdigit() or int(pid_text) == os.getpid():
        return False
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return False
    except OSError:  # alive, another user's
        return True
    return True
