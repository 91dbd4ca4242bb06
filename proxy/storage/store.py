"""SQLite persistence through sqlite-utils, in WAL mode, behind one writer thread.

Every database call runs on a single dedicated thread, so the event loop never waits on disk
and SQLite never sees two writers; `call` and `run` commit what they run. The hot writes (entities,
journal) go through one queue and are group-committed: those queued while one commit is on the disk go
together in the next. A caller of `write` waits for its own write to be committed (a recorded exchange
is in the journal before it is answered); `enqueue` queues a write without waiting (session and turn rows),
and a read queued behind it through `write` sees it. Queued-only writes wait up to ROW_BATCH_DELAY_S for
company, so a replay's turns share commits instead of paying one each (a commit per turn cost more than
the rest of the turn's writes together); a `write` commits at once and takes them along. Every entity
kind has a table of real columns: endpoint connections, versions and connectors (`proxy.storage.entity_tables`, held in
memory), sessions, turns and lifecycle calls (`proxy.sessions.tables`, read from SQL).
Secrets are stored Fernet-encrypted. The database and its `-wal` and `-shm` files are 0600, in a data dir
made 0700 (see `proxy.security.data_dir`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import sqlite_utils

from proxy.config.settings import MAX_QUEUED, ROW_BATCH_DELAY_S
from proxy.security.data_dir import PRIVATE_FILE_MODE, make_private_file, open_data_dir, tighten
from proxy.security.vault import Vault

T = TypeVar("T")
Outcome = tuple[bool, Any]  # (True, result) or (False, the exception)
DB_FILE_NAME = "proxy.db"
SQLITE_SIDE_FILES = ("-wal", "-shm", "-journal")  # made by SQLite beside the database, with its mode
log = logging.getLogger("proxy")


class Store:
    def __init__(self, data_dir: Path, vault: Vault) -> None:
        open_data_dir(data_dir)
        self.path = data_dir / DB_FILE_NAME
        self.vault = vault
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="proxy-store")
        self._db: sqlite_utils.Database | None = None
        self._queued: list[tuple[Callable[..., Any], tuple[Any, ...], asyncio.Future[Any]]] = []
        self._committing = False
        self._urgent = False  # a caller waits on a queued write: commit as soon as the disk is free
        self._timer: asyncio.TimerHandle | None = None  # the delayed commit of queued-only writes
        self._executor.submit(self._open).result()

    # -- plumbing ----------------------------------------------------------------------------

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run on the writer thread, committed, and wait (start-up, shutdown and CLI use)."""
        return self._executor.submit(self._committed, fn, *args).result()

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run on the writer thread, committed, without blocking the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._committed, fn, *args)

    def _committed(self, fn: Callable[..., T], *args: Any) -> T:
        with self.db.conn:
            return fn(*args)

    async def write(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn` (which must not commit) in the next group commit and wait until it is committed."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._queued.append((fn, args, future))
        self._urgent = True
        if not self._committing:
            self._commit_queued(loop)
        return await future

    def enqueue(self, fn: Callable[..., Any], *args: Any) -> None:
        """`write` without waiting for the commit; a failure is logged (the caller has moved on)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        future.add_done_callback(_log_failure)
        self._queued.append((fn, args, future))
        if not self._committing and self._timer is None:
            self._timer = loop.call_later(ROW_BATCH_DELAY_S, self._commit_later, loop)

    def _commit_later(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        if self._queued and not self._committing:
            self._commit_queued(loop)

    async def room(self) -> None:
        """Wait while more than MAX_QUEUED writes are queued: callers of `enqueue` that outpace the disk
        are held back here, so the queue (and the memory it holds) stays bounded."""
        if len(self._queued) > MAX_QUEUED:
            await self.write(_nothing)

    async def drain(self) -> None:
        """Wait until everything queued so far is committed."""
        if self._queued or self._committing:
            await self.write(_nothing)

    def _commit_queued(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        queued, self._queued = self._queued, []
        self._committing, self._urgent = True, False
        done = self._executor.submit(self._in_one_transaction, [(fn, args) for fn, args, _ in queued])
        futures = [future for _, _, future in queued]
        done.add_done_callback(lambda d: loop.call_soon_threadsafe(self._hand_back, loop, d, futures))

    def _hand_back(
        self, loop: asyncio.AbstractEventLoop, done: Future[list[Outcome]], futures: list[asyncio.Future[Any]]
    ) -> None:
        self._committing = False
        commit_error = done.exception()
        for index, future in enumerate(futures):
            if future.cancelled():
                continue
            if commit_error is not None:
                future.set_exception(commit_error)
                continue
            ok, value = done.result()[index]
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)
        if self._urgent or len(self._queued) > MAX_QUEUED:
            self._commit_queued(loop)
        elif self._queued and self._timer is None:
            self._timer = loop.call_later(ROW_BATCH_DELAY_S, self._commit_later, loop)

    def _in_one_transaction(self, writes: list[tuple[Callable[..., Any], tuple[Any, ...]]]) -> list[Outcome]:
        """One commit for all; a savepoint each, so a write that fails takes back only itself."""
        conn = self.db.conn
        outcomes: list[Outcome] = []
        conn.execute("BEGIN")
        try:
            for fn, args in writes:
                conn.execute("SAVEPOINT write")
                try:
                    outcomes.append((True, fn(*args)))
                except Exception as exc:
                    conn.execute("ROLLBACK TO write")
                    outcomes.append((False, exc))
                conn.execute("RELEASE write")
            conn.commit()
        except BaseException:
            conn.rollback()
            raise
        return outcomes

    @property
    def db(self) -> sqlite_utils.Database:
        assert self._db is not None, "store is closed"
        return self._db

    def _open(self) -> None:
        # SQLite gives the files it makes beside the database the database file's mode: that one is made
        # 0600 first, and side files left by an earlier version (or a crash) are brought to it.
        make_private_file(self.path)
        for suffix in SQLITE_SIDE_FILES:
            tighten(self.path.with_name(self.path.name + suffix), PRIVATE_FILE_MODE)
        conn = sqlite3.connect(self.path, check_same_thread=False)
        db = sqlite_utils.Database(conn)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        self._db = db

    def close(self) -> None:
        if self._timer is not None:  # queued rows nobody drained: written, not dropped
            self._timer.cancel()
            self._timer = None
        if self._queued and self._db is not None:
            queued, self._queued = self._queued, []
            self._executor.submit(self._in_one_transaction, [(fn, args) for fn, args, _ in queued]).result()
        if self._db is not None:
            self._executor.submit(self._db.conn.close).result()
            self._db = None
        self._executor.shutdown(wait=True)

    # -- secrets -----------------------------------------------------------------------------

    def seal(self, values: dict[str, Any]) -> str:
        return self.vault.encrypt(json.dumps(values))

    def unseal(self, token: str | None) -> dict[str, Any]:
        return json.loads(self.vault.decrypt(token)) if token else {}


def _nothing() -> None:
    return None


def _log_failure(future: asyncio.Future[Any]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.error("a queued database write failed: %s", future.exception(), exc_info=future.exception())
