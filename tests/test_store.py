"""The store's group commit: concurrent writes share commits, each caller waits for its own."""

from __future__ import annotations

import asyncio
import sqlite3
from contextlib import closing
from pathlib import Path

from proxy.secrets import Vault, load_fernet
from proxy.store import Store


def open_store(tmp_path: Path) -> Store:
    return Store(tmp_path / "data", Vault(load_fernet(tmp_path / "data")))


def committed_rows(store: Store, table: str) -> list[tuple[str, str]]:
    """What another connection sees: only committed data."""
    with closing(sqlite3.connect(store.path)) as other:
        return list(other.execute(f"SELECT id, data FROM [{table}] ORDER BY seq"))


async def test_concurrent_writes_are_all_committed_before_their_callers_resume(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    commits = 0
    in_one_transaction = store._in_one_transaction

    def counting(writes):  # type: ignore[no-untyped-def]
        nonlocal commits
        commits += 1
        return in_one_transaction(writes)

    store._in_one_transaction = counting  # type: ignore[method-assign]

    async def put(n: int) -> int:
        await store.write(store.put, "sessions", f"s{n}", n, f'{{"n": {n}}}')
        assert (f"s{n}", f'{{"n": {n}}}') in committed_rows(store, "sessions")  # committed when write returns
        return n

    assert await asyncio.gather(*(put(n) for n in range(200))) == list(range(200))
    assert len(committed_rows(store, "sessions")) == 200
    assert commits < 200 / 4  # writes queued behind a commit went together
    seqs = await asyncio.gather(
        *(store.write(store.journal_append, "c", "interaction", str(n), "/c.yaml") for n in range(20))
    )
    assert seqs == sorted(seqs) and len(set(seqs)) == 20  # each caller gets its own row's number, in order
    store.close()


async def test_a_failing_write_takes_back_only_itself(tmp_path: Path) -> None:
    store = open_store(tmp_path)

    def put_then_fail() -> None:
        store.put("sessions", "half-done", 1, "{}")
        raise RuntimeError("disk says no")

    results = await asyncio.gather(
        store.write(store.put, "sessions", "before", 2, "{}"),
        store.write(put_then_fail),
        store.write(store.put, "sessions", "after", 3, "{}"),
        return_exceptions=True,
    )
    assert results[0] is None and results[2] is None
    assert isinstance(results[1], RuntimeError) and str(results[1]) == "disk says no"
    assert [row[0] for row in committed_rows(store, "sessions")] == ["before", "after"]
    await store.write(store.put, "sessions", "later", 4, "{}")  # the store keeps working
    assert [row[0] for row in committed_rows(store, "sessions")] == ["before", "after", "later"]
    store.close()


def test_blocking_calls_commit_what_they_write(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    seq = store.call(store.journal_append, "sessions/tc", "interaction", "recorded", "/c/sessions/tc.yaml")
    with closing(sqlite3.connect(store.path)) as other:
        assert list(other.execute("SELECT seq, cassette, data FROM journal")) == [(seq, "sessions/tc", "recorded")]
    store.close()


def file_bytes(store: Store) -> bytes:
    return b"".join(path.read_bytes() for path in sorted(store.path.parent.glob(f"{store.path.name}*")))


def test_put_erasing_leaves_no_trace_of_the_old_row_where_sqlite_would_keep_it(tmp_path: Path) -> None:
    plain = '{"client_id": "cid-Plain-Marker-31337", "pad": "%s"}' % ("x" * 200)
    sealed = '{"client_id": null, "sealed": "%s"}' % ("y" * 100)
    for rewrite, left in (("put_many", True), ("put_erasing", False)):
        store = open_store(tmp_path / rewrite)
        # Many builds keep freed cells as they were; Debian's turns secure_delete on by default.
        store.call(store.db.conn.execute, "PRAGMA secure_delete = OFF")
        store.call(store.put, "sessions", "wiki", 1, plain)
        store.call(store.db.conn.execute, "PRAGMA wal_checkpoint(TRUNCATE)")
        store.call(getattr(store, rewrite), [("sessions", "wiki", 2, sealed)])
        assert (b"cid-Plain-Marker-31337" in file_bytes(store)) is left, rewrite
        assert store.call(store.load, "sessions") == [{"client_id": None, "sealed": "y" * 100}]
        assert store.call(store.db.conn.execute, "PRAGMA secure_delete").fetchone() == (0,)  # put back as it was
        store.close()
