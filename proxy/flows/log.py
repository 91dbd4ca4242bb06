"""The flow log: every upstream call the server makes (turns, lifecycle calls, testConnection, forward,
connector searches), masked, for the inspector to list, filter, show and export.

The engine tells `FlowLog.observe` of each finished call; the row is built there (masked again with
the server's redactor, while a throwaway testConnection credential is still known) and queued. The queue
is written in batches through the store's writer, off the event loop: at once when `FLOW_BATCH_ROWS` are
queued, else `FLOW_BATCH_DELAY_S` after the first, and whatever is left on shutdown; no call waits on a
commit of its own flow. Every read writes the queue first, so a flow is listed as soon as its call has
answered. The table keeps the newest `flow_log_size` rows: each batch deletes what fell off the end, by
primary key. A relayed stream's flow is written when its head arrives, marked `streaming`, and written again
over the same row when the stream is over (whole or cut), with its body, events and real timing; viewers are told
of the row both times. Live viewers subscribe to the rows as they are committed: each one costs every flow a
little, so at most `max_viewers` are served (a newer one ends the oldest's stream), and one that falls behind is
ended too.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from proxy.config.settings import (
    DEFAULT_FLOW_LOG_SIZE,
    DEFAULT_MAX_FLOW_VIEWERS,
    FLOW_BATCH_DELAY_S,
    FLOW_BATCH_ROWS,
    FLOW_EVENTS_QUEUE,
    FLOWS_PAGE_SIZE,
    OFF_LOOP_REPLY_BYTES,
)
from proxy.connections.targets import CallSubject
from proxy.engine.results import CallLabel, CallResult
from proxy.security.redaction import Redactor
from proxy.storage.store import Store

log = logging.getLogger("proxy")
OUTCOMES = ("hit", "recorded", "miss", "live", "injected", "error")  # error: a cassette that cannot be used
STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx", "none")
SUMMARY_COLUMNS = (
    "id",
    "at",
    "kind",
    "method",
    "url",
    "status",
    "latency_ms",
    "ttfb_ms",
    "size",
    "outcome",
    "connection",
    "connection_id",
    "session_id",
    "error",
    "stream",  # a relayed stream: streaming, complete or cut
)
TABLE = f"""CREATE TABLE IF NOT EXISTS flows (
    id INTEGER PRIMARY KEY AUTOINCREMENT, at TEXT NOT NULL, kind TEXT NOT NULL, method TEXT, url TEXT,
    status INTEGER, latency_ms REAL, ttfb_ms REAL, size INTEGER, outcome TEXT, connection TEXT,
    connection_id TEXT, session_id TEXT, error TEXT, data TEXT NOT NULL, stream TEXT);
CREATE INDEX IF NOT EXISTS flows_connection ON flows (connection, id);
CREATE INDEX IF NOT EXISTS flows_session ON flows (session_id, id);
-- {len(SUMMARY_COLUMNS)} summary columns and the exchange"""
ROW_COLUMNS = (*SUMMARY_COLUMNS[1:], "data")  # what a row is written with: all but the id SQLite gives it
INSERT = f"INSERT INTO flows ({', '.join(ROW_COLUMNS)}) VALUES ({', '.join('?' * len(ROW_COLUMNS))})"
UPDATED_COLUMNS = tuple(c for c in ROW_COLUMNS if c != "at")  # a stream's row, once it is over: all but its start
UPDATE = f"UPDATE flows SET {', '.join(f'{c} = ?' for c in UPDATED_COLUMNS)} WHERE id = ?"


@dataclass(frozen=True)
class FlowFilter:
    """A filtered view of the log, as the query parameters of `/flows` spell it."""

    connection: str = ""
    status: str = ""  # one of STATUS_CLASSES, or "" for all
    outcome: str = ""  # one of OUTCOMES, or ""
    q: str = ""  # free text: URL, method, error, kind or anything in the exchange
    session: str = ""

    @classmethod
    def from_query(cls, params: Any) -> FlowFilter:
        def one(name: str, allowed: tuple[str, ...] | None = None) -> str:
            value = str(params.get(name) or "").strip()
            if allowed is not None and value and value not in allowed:
                raise ValueError(f"query parameter {name}: {value!r} is not one of {', '.join(allowed)}")
            return value

        return cls(one("connection"), one("status", STATUS_CLASSES), one("outcome", OUTCOMES), one("q"), one("session"))

    def query(self) -> dict[str, str]:
        """The non-empty parameters, to build links to the same view."""
        return {k: v for k, v in vars(self).items() if v}

    def where(self) -> tuple[str, list[Any]]:
        clauses: list[str] = []
        args: list[Any] = []
        if self.connection:
            clauses.append("connection = ?")
            args.append(self.connection)
        if self.session:
            clauses.append("session_id = ?")
            args.append(self.session)
        if self.status == "none":
            clauses.append("status IS NULL")
        elif self.status:
            low = int(self.status[0]) * 100
            clauses.append("status BETWEEN ? AND ?")
            args += [low, low + 99]
        if self.outcome:
            clauses.append("outcome = ?")
            args.append(self.outcome)
        if self.q:
            like = "%" + self.q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            clauses.append(
                "(url LIKE ? ESCAPE '\\' OR method LIKE ? ESCAPE '\\' OR kind LIKE ? ESCAPE '\\'"
                " OR error LIKE ? ESCAPE '\\' OR data LIKE ? ESCAPE '\\')"
            )
            args += [like] * 5
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", args


class FlowLog:
    def __init__(
        self,
        store: Store,
        redactor: Redactor,
        size: int = DEFAULT_FLOW_LOG_SIZE,
        max_viewers: int = DEFAULT_MAX_FLOW_VIEWERS,
        batch_rows: int = FLOW_BATCH_ROWS,
        batch_delay_s: float = FLOW_BATCH_DELAY_S,
    ) -> None:
        self.store = store
        self.redactor = redactor
        self.size = size
        self.max_viewers = max_viewers
        self.batch_rows = batch_rows
        self.batch_delay_s = batch_delay_s
        self._queue: list[dict[str, Any]] = []  # observed, not yet handed to the writer
        # Streams that are over: (the row written when it began, the row now), not yet handed to the writer.
        self._updates: list[tuple[dict[str, Any], dict[str, Any]]] = []
        self._ending: set[asyncio.Task[None]] = set()  # streams over whose row is being built
        self._timer: asyncio.TimerHandle | None = None
        self._flushing: asyncio.Task[None] | None = None  # the batch on its way to the disk
        self._subscribers: dict[asyncio.Queue[dict[str, Any] | None], None] = {}  # the oldest first
        store.call(store.db.executescript, TABLE)
        store.call(_add_stream_column, store)

    # -- writing -----------------------------------------------------------------------------

    def observe(self, label: CallLabel, conn: CallSubject, result: CallResult) -> None:
        """The engine's observer: build the row now (still masked with this call's secrets), write it later.
        A stream still on its way is written again when it is over."""
        row = self._row(label, conn, result)
        self._queue.append(row)
        relay = result.reply.relay if result.reply is not None else None
        if relay is not None and not relay.tap.over:
            relay.tap.on_end.append(lambda: self._stream_over(row, label, conn, result))
        self._schedule()

    def _schedule(self) -> None:
        if self._flushing is not None:  # the queue is looked at again when that batch is written
            return
        if len(self._queue) + len(self._updates) >= self.batch_rows:
            self._flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.batch_delay_s, self._flush)

    def _stream_over(self, row: dict[str, Any], label: CallLabel, conn: CallSubject, result: CallResult) -> None:
        task = asyncio.get_running_loop().create_task(self._stream_row(row, label, conn, result))
        self._ending.add(task)  # held until done: a task nobody holds may be collected mid-way
        task.add_done_callback(self._ending.discard)

    async def _stream_row(self, row: dict[str, Any], label: CallLabel, conn: CallSubject, result: CallResult) -> None:
        relay = result.reply.relay if result.reply is not None else None
        if relay is not None and relay.tap.kept_size > OFF_LOOP_REPLY_BYTES:
            await asyncio.to_thread(relay.stream_json)  # its events parsed and read off the loop, then kept
        self._updates.append((row, self._row(label, conn, result)))
        self._schedule()

    def _row(self, label: CallLabel, conn: CallSubject, result: CallResult) -> dict[str, Any]:
        exchange = result.to_json()
        last = result.attempts[-1] if result.attempts else None
        stream = exchange.get("stream") or None
        ttfb = stream.get("timeToFirstByteMs") if isinstance(stream, dict) else None
        if ttfb is None and last is not None:
            ttfb = last.first_byte_ms
        forwarded = result.injected_headers is not None  # the forward route maps nothing: no mapping to show
        tap = result.reply.relay.tap if result.reply is not None and result.reply.relay is not None else None
        latency = result.latency_ms if result.attempts else None
        if tap is not None:  # the stream's real end, not its head's (nor a recording's): none while it runs
            latency = stream.get("durationMs") if tap.over and isinstance(stream, dict) else None
        data = {
            "exchange": exchange,
            "mapping": {} if forwarded else dict(conn.mapping),
            "forward": {"injected": result.injected_headers} if forwarded else None,
            "nearest": last.nearest if last is not None else None,
            "authType": conn.auth_type,
            "connectionType": conn.connection_type,
        }
        request = result.request
        reply = result.reply
        redact = self.redactor.redact
        return {
            "at": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "kind": label.kind,
            "method": request.method if request else None,
            "url": redact(request.url) if request else None,
            "status": reply.status if reply else None,
            "latency_ms": round(latency, 3) if latency is not None else None,
            "ttfb_ms": round(ttfb, 3) if ttfb is not None else None,
            "size": (tap.relayed_bytes if tap is not None else reply.size) if reply else None,
            "outcome": result.outcome or ("live" if result.attempts else None),
            "connection": conn.name,
            "connection_id": conn.id,
            "session_id": label.session_id,
            "error": redact(result.error) if result.error else None,
            "data": self._masked_data(json.dumps(data, ensure_ascii=False, default=str)),
            "stream": tap.outcome if tap is not None else None,
        }

    def _masked_data(self, text: str) -> str | Callable[[], str]:
        """The row's data masked now, or, when large, how to mask it later in a worker thread with the secrets
        known now (masking escape-dense text costs up to about a second a megabyte: never on the event loop)."""
        if len(text) <= OFF_LOOP_REPLY_BYTES:
            return self.redactor.redact(text)
        redact = self.redactor.frozen()
        return lambda: redact(text)

    def _flush(self) -> None:
        """Hand the queue to the writer as one batch."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        rows, self._queue = self._queue, []
        updates, self._updates = self._updates, []
        self._flushing = asyncio.get_running_loop().create_task(self._save(rows, updates))
        self._flushing.add_done_callback(self._flushed)

    def _flushed(self, _: asyncio.Task[None]) -> None:
        self._flushing = None
        if len(self._queue) + len(self._updates) >= self.batch_rows:
            self._flush()
        elif self._queue or self._updates:
            self._timer = asyncio.get_running_loop().call_later(self.batch_delay_s, self._flush)

    async def _save(self, rows: list[dict[str, Any]], updates: list[tuple[dict[str, Any], dict[str, Any]]]) -> None:
        written = rows + [new for _, new in updates]
        try:
            if any(callable(row["data"]) for row in written):
                await asyncio.to_thread(_mask_pending, written)
            updated = await self.store.write(self._insert, rows, updates)
        except Exception as exc:  # the log is for looking at: a failed write never fails a call
            log.error("%d flows could not be written: %s", len(written), self.redactor.redact(repr(exc)), exc_info=exc)
            return
        for row in rows + updated:
            self._publish({k: row[k] for k in SUMMARY_COLUMNS})

    def _publish(self, summary: dict[str, Any]) -> None:
        for queue in list(self._subscribers):
            if queue.full():  # a client that does not read: its stream ends, the browser reconnects
                self._end(queue)
            else:
                queue.put_nowait(summary)

    def _insert(
        self, rows: list[dict[str, Any]], updates: list[tuple[dict[str, Any], dict[str, Any]]]
    ) -> list[dict[str, Any]]:
        """Write the new rows (each given its id) and the streams that are over; returns the rows updated."""
        conn = self.store.db.conn
        if rows:
            conn.executemany(INSERT, [[row[k] for k in ROW_COLUMNS] for row in rows])
            # One writer, one transaction: the batch's ids are consecutive, ending at the last one given.
            (last,) = conn.execute("SELECT last_insert_rowid()").fetchone()
            for row, flow_id in zip(rows, range(last - len(rows) + 1, last + 1), strict=True):
                row["id"] = flow_id
            conn.execute("DELETE FROM flows WHERE id <= ?", (last - self.size,))
        updated = []
        for began, now in updates:
            if "id" not in began:  # its first write failed: nothing to update
                continue
            now.update(id=began["id"], at=began["at"])
            if conn.execute(UPDATE, [*(now[k] for k in UPDATED_COLUMNS), now["id"]]).rowcount:
                updated.append(now)
        return updated

    async def settled(self) -> None:
        """Write every observed call now and wait until it is committed (before a read, on shutdown)."""
        if self._ending:
            await asyncio.gather(*self._ending, return_exceptions=True)
        while self._queue or self._updates or self._flushing is not None:
            if self._flushing is None:
                self._flush()
            flushing = self._flushing
            assert flushing is not None
            if flushing.done():
                # Its done-callback (`_flushed`, which clears it) runs on the next turn of the loop: awaiting a
                # finished task does not yield, so without this the loop would spin here and never get there.
                await asyncio.sleep(0)
                continue
            # Shielded: a reader that goes away must not take the batch with it.
            await asyncio.shield(flushing)

    async def close(self) -> None:
        await self.settled()
        for queue in list(self._subscribers):
            self._end(queue)

    def _end(self, queue: asyncio.Queue[dict[str, Any] | None]) -> None:
        """Stop publishing to a viewer and tell it its stream is over (dropping its oldest summary if full)."""
        self._subscribers.pop(queue, None)
        if queue.full():
            queue.get_nowait()
        queue.put_nowait(None)

    # -- live viewers ------------------------------------------------------------------------

    def subscribe(self) -> asyncio.Queue[dict[str, Any] | None]:
        """A queue of each new flow's summary; None means the stream is over. At the cap, the oldest viewer's ends."""
        while len(self._subscribers) >= self.max_viewers:
            self._end(next(iter(self._subscribers)))
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(FLOW_EVENTS_QUEUE)
        self._subscribers[queue] = None
        return queue

    @property
    def viewers(self) -> int:
        return len(self._subscribers)

    def unsubscribe(self, queue: asyncio.Queue[dict[str, Any] | None]) -> None:
        self._subscribers.pop(queue, None)

    # -- reading -----------------------------------------------------------------------------

    async def recent(self, view: FlowFilter, limit: int = FLOWS_PAGE_SIZE, full: bool = False) -> list[dict[str, Any]]:
        """Newest first; `full` adds each flow's exchange (`data`), for exports."""
        where, args = view.where()
        return await self._read(where, args, limit, full)

    async def get(self, flow_id: int) -> dict[str, Any] | None:
        rows = await self._read(" WHERE id = ?", [flow_id], 1, full=True)
        return rows[0] if rows else None

    async def last_reply(self, connection_id: str) -> dict[str, Any] | None:
        """The newest flow of a connection that got a reply (the connection page's editor maps it again)."""
        rows = await self._read(" WHERE connection_id = ? AND status IS NOT NULL", [connection_id], 1, full=True)
        return rows[0] if rows else None

    async def _read(self, where: str, args: list[Any], limit: int, full: bool) -> list[dict[str, Any]]:
        await self.settled()
        return await self.store.run(self._select, where, args, limit, full)

    def _select(self, where: str, args: list[Any], limit: int, full: bool) -> list[dict[str, Any]]:
        columns = ", ".join(SUMMARY_COLUMNS + (("data",) if full else ()))
        cursor = self.store.db.conn.execute(
            f"SELECT {columns} FROM flows{where} ORDER BY id DESC LIMIT ?", [*args, limit]
        )
        rows = [dict(zip([d[0] for d in cursor.description], values, strict=True)) for values in cursor]
        if full:
            for row in rows:
                row["data"] = json.loads(row["data"])
        return rows

    async def connections(self) -> list[str]:
        """The connection names the log holds, for the filter's choices."""
        await self.settled()
        rows = await self.store.run(
            lambda: [r[0] for r in self.store.db.conn.execute("SELECT DISTINCT connection FROM flows ORDER BY 1")]
        )
        return [r for r in rows if r]


def _mask_pending(rows: list[dict[str, Any]]) -> None:
    for row in rows:
        if callable(row["data"]):
            row["data"] = row["data"]()


def _add_stream_column(store: Store) -> None:
    """A log from before streams were tracked gets their column (empty for its old rows)."""
    columns = {row[1] for row in store.db.conn.execute("PRAGMA table_info(flows)")}
    if "stream" not in columns:
        store.db.conn.execute("ALTER TABLE flows ADD COLUMN stream TEXT")
