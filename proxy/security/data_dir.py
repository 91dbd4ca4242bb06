"""The data dir is its user's alone: it holds the key (or the passphrase's salt), the sealed secrets and what
upstreams answered. A data dir the server creates is mode 0700; every file it writes there is 0600 (the
database's `-wal` and `-shm` files too: SQLite gives them the database file's mode). A data dir that already
existed is left as it is, with a warning when other users may read it (it may be a folder the user shares on
purpose, such as a project root), and the files that hold secrets in it are brought to 0600."""

from __future__ import annotations

import contextlib
import logging
import os
import stat
from pathlib import Path

PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600
log = logging.getLogger("proxy")


def make_private_dir(path: Path) -> bool:
    """Create `path` 0700 (its missing parents as usual); True when this call created it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        path.mkdir(mode=PRIVATE_DIR_MODE)
    except FileExistsError:
        return False
    os.chmod(path, PRIVATE_DIR_MODE)  # a umask that takes the owner's own bits does not get to decide
    return True


def open_data_dir(path: Path) -> None:
    """Create the data dir 0700, or warn when one that already exists lets other users in."""
    if make_private_dir(path):
        return
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        log.warning(
            "data dir %s has mode %04o: other users can list it (its files are kept 0600); chmod 700 it to hide"
            " them entirely",
            path,
            mode,
        )


def make_private_file(path: Path) -> None:
    """Create `path` empty and 0600 unless it exists; an existing one is brought to 0600."""
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE))
    tighten(path, PRIVATE_FILE_MODE)


def tighten(path: Path, mode: int) -> None:
    """Take every permission `mode` lacks off `path`, if it exists; one we cannot change is logged, not fatal."""
    try:
        current = stat.S_IMODE(path.stat().st_mode)
        if current & ~mode:
            os.chmod(path, current & mode)
    except FileNotFoundError:
        return
    except OSError as exc:
        log.warning("cannot make %s private (mode %04o): %s", path, mode, exc.strerror or exc)


def create_once(path: Path, content: bytes) -> bytes:
    """The content of `path`, a file written once and 0600: `content` when this call creates it, else what the
    first writer put there. A reader never sees it half-written: it appears, whole, under its name by a hard link."""
    try:
        tighten(path, PRIVATE_FILE_MODE)
        return path.read_bytes()
    except FileNotFoundError:
        pass
    temp = path.with_name(f".{path.name}.{os.urandom(8).hex()}.tmp")  # one per writer, threads included
    try:
        _write_new(temp, content)
        try:
            os.link(temp, path)
        except FileExistsError:
            raise
        except OSError:  # a file system without hard links: written in place, as exclusively
            _write_new(path, content)
        _sync_dir(path.parent)  # after a power cut, secrets sealed with this key must not outlive it
    except FileExistsError:
        tighten(path, PRIVATE_FILE_MODE)
        return path.read_bytes()
    finally:
        temp.unlink(missing_ok=True)
    return content


def _write_new(path: Path, content: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE)
    with os.fdopen(fd, "wb") as f:
        f.write(content)
        f.flush()
        os.fsync(f.fileno())


def _sync_dir(path: Path) -> None:
    directory = os.open(path, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
