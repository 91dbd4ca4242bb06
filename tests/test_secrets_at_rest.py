"""The data dir against someone who reads it: another local user, or whoever gets a copy of it.

The data dir is 0700 and every file in it 0600.
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import running_proxy
from tests.helpers import chat_config, run_session
from tests.upstream import Upstream


@pytest.fixture
def usual_umask() -> Iterator[None]:
    """The umask most systems give users (022): a file made without care is readable by every local user."""
    was = os.umask(0o022)
    yield
    os.umask(was)


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def walk_modes(data_dir: Path) -> dict[str, int]:
    """Every folder and file under the data dir (itself included), with its permission bits."""
    found = {".": mode_of(data_dir)}
    for path in data_dir.rglob("*"):
        found[str(path.relative_to(data_dir))] = mode_of(path)
    return found


def test_no_other_local_user_can_read_the_data_dir(
    tmp_path: Path, upstream: Upstream, upstream_url: str, monkeypatch: pytest.MonkeyPatch, usual_umask: None
) -> None:
    """Another user on the machine reads `proxy.db` (sealed secrets, recorded answers, the flow log), its WAL, the
    key or the parse cache: after a recorded session, the data dir is 0700 and every file in it 0600."""
    monkeypatch.delenv("PROXY_SECRET_KEY", raising=False)
    data = tmp_path / "data"
    with running_proxy(tmp_path, chat_config(upstream_url)) as proxy, httpx.Client(base_url=proxy.url) as client:
        turns = run_session(client, ["hello", "again"], testCaseId="tc-at-rest")
        assert [t["exchange"]["cassette"] for t in turns] == ["recorded", "recorded"]
        assert len(upstream.requests_to("/chat")) == 2
        running = walk_modes(data)
    closed = walk_modes(data)
    assert {"proxy.db", "proxy.db-wal", "proxy.db-shm", "secret.key"} <= set(running)
    assert any(name.startswith("cassette-cache/") and name.endswith(".json") for name in closed), closed
    for seen in (running, closed):
        for name, mode in seen.items():
            is_dir = name == "." or (data / name).is_dir()
            assert mode == (0o700 if is_dir else 0o600), (name, oct(mode))


def test_a_readable_data_dir_an_earlier_version_left_keeps_its_mode_but_its_files_become_0600(
    tmp_path: Path, upstream_url: str, caplog: pytest.LogCaptureFixture, usual_umask: None
) -> None:
    """Another local user reads what an earlier version (or a crash) left world-readable: a 0755 data dir with the
    database, its WAL and shared memory, the key and the parse cache 0644. At start-up the files become 0600 and
    the cache folder 0700; the data dir, which the user may share on purpose, is left as it is, with a warning."""
    first = tmp_path / "first"
    with running_proxy(first, chat_config(upstream_url)) as proxy, httpx.Client(base_url=proxy.url) as client:
        run_session(client, ["hello"], testCaseId="tc-left")
        data = tmp_path / "data"
        shutil.copytree(first / "data", data)  # as a crash leaves it: the WAL and shared memory still there
    for path in (data, *data.rglob("*")):
        os.chmod(path, 0o755 if path.is_dir() else 0o644)
    assert {"proxy.db-wal", "proxy.db-shm", "secret.key"} <= {p.name for p in data.iterdir()}
    caplog.set_level(logging.WARNING, logger="proxy")
    with running_proxy(tmp_path, chat_config(upstream_url)):
        running = walk_modes(data)
    assert running.pop(".") == 0o755
    assert f"data dir {data} has mode 0755: other users can list it" in caplog.text
    assert running.pop("cassette-cache") == 0o700
    for name in ("proxy.db", "proxy.db-wal", "proxy.db-shm", "secret.key"):
        assert running[name] == 0o600, name
