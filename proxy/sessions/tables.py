"""The SQLite tables of sessions, turns (`inference_results`) and lifecycle calls, and the queries lists run.

Each table has the columns its lists filter and sort on, with indexes, and the rest of a row as a JSON
document (`data`): a session's every field, a turn's API answer (the bytes the turn was answered with, so
lists and look-ups answer without decoding), a lifecycle call's record. `seq` (the rowid) is creation order.
Tables from before (one JSON document a row: `id, seq, data`) are migrated in place at start-up, in one
transaction, so an interrupted migration leaves the old layout to migrate again.

Functions here run on the store's writer thread.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlite_utils

from proxy.sessions.entities import Session, Turn, encode

SESSIONS, TURNS, CALLS = "sessions", "inference_results", "lifecycle_calls"
OLD_LAYOUT = {"id", "seq", "data"}
MIGRATION_BATCH = 5_000

SESSION_COLUMNS = (
    "version_id",
    "product_id",
    "test_case_id",
    "test_id",
    "run_id",
    "custom_id",
    "external_session_id",
    "status",
    "created_at",
    "deleted",
)
FILTERED_SESSION_COLUMNS = ("version_id", "product_id", "test_case_id", "custom_id", "test_id")  # indexed
TURN_COLUMNS = ("session_id", "idx", "status", "created_at")
CALL_COLUMNS = ("session_id", "phase", "created_at")

_SCHEMAS: dict[str, tuple[dict[str, type], list[tuple[str, ...]]]] = {
    SESSIONS: (
        {"seq": int, "id": str, **dict.fromkeys(SESSION_COLUMNS[:-1], str), "deleted": int, "data": str},
        [("deleted", "created_at", "seq"), *[(c,) for c in FILTERED_SESSION_COLUMNS]],
    ),
    TURNS: (
        {"seq": int, "id": str, "session_id": str, "idx": int, "status": str, "created_at": str, "data": str},
        [("session_id", "created_at", "idx", "seq"), ("created_at", "idx", "seq")],
    ),
    CALLS: (
        {"seq": int, "id": str, "session_id": str, "phase": str, "created_at": str, "data": str},
        [("session_id", "seq")],
    ),
}

_SESSION_MARKS = ", ".join("?" * (len(SESSION_COLUMNS) + 2))
# What a session's update may change; the rest is fixed at creation (an index not in the SET is not rewritten).
_SESSION_CHANGES = ("custom_id", "external_session_id", "status", "deleted", "data")
_SESSION_UPSERT = (
    f"INSERT INTO {SESSIONS} (id, {', '.join(SESSION_COLUMNS)}, data) VALUES ({_SESSION_MARKS})"
    f" ON CONFLICT(id) DO UPDATE SET {', '.join(f'{c} = excluded.{c}' for c in _SESSION_CHANGES)}"
)
_TURN_INSERT = f"INSERT INTO {TURNS} (id, {', '.join(TURN_COLUMNS)}, data) VALUES (?, ?, ?, ?, ?, ?)"
_CALL_INSERT = f"INSERT INTO {CALLS} (id, {', '.join(CALL_COLUMNS)}, data) VALUES (?, ?, ?, ?, ?)"
# A turn of a deleted session is gone with it.
_LIVE_TURN = f"NOT EXISTS (SELECT 1 FROM {SESSIONS} s WHERE s.id = t.session_id AND s.deleted)"


def migrate(db: sqlite_utils.Database) -> None:
    """Create the tables, or bring tables of the old layout over (idempotent; one transaction)."""
    with db.conn:
        for name, (columns, indexes) in _SCHEMAS.items():
            table = db.table(name)
            old = None
            if table.exists():
                if set(table.columns_dict) != OLD_LAYOUT:
                    continue
                old = f"_old_{name}"
                db.rename_table(name, old)
            db.table(name).create(columns, pk="seq", not_null={"id", "data"})
            db.table(name).create_index(["id"], unique=True)
            for index in indexes:
                db.table(name).create_index(list(index), find_unique_name=True)
            if old is not None:
                _copy_old_rows(db, name, old)
                db.execute(f"DROP TABLE [{old}]")


def _copy_old_rows(db: sqlite_utils.Database, name: str, old: str) -> None:
    conn = db.conn
    # Old rows' `seq` is the order of their last write; creation time comes first.
    rows = conn.execute(f"SELECT data FROM [{old}] ORDER BY json_extract(data, '$.created_at'), seq")
    while batch := rows.fetchmany(MIGRATION_BATCH):
        if name == SESSIONS:
            conn.executemany(_SESSION_UPSERT, [session_row(Session.from_json(data)) for (data,) in batch])
        elif name == TURNS:
            conn.executemany(_TURN_INSERT, [turn_row(Turn(**json.loads(data)), None) for (data,) in batch])
        else:
            conn.executemany(_CALL_INSERT, [_old_call_row(data) for (data,) in batch])


def _old_call_row(data: str) -> tuple[Any, ...]:
    call = json.loads(data)
    return (call["id"], call["session_id"], call["phase"], call["created_at"], data)


# -- rows ----------------------------------------------------------------------------------------


def session_row(session: Session, data: str | None = None) -> tuple[Any, ...]:
    """A session's row (encoded on the event loop's side, so the writer thread reads no live object);
    `data` is its document when the caller already has it."""
    s = session
    return (
        s.id,
        s.version_id,
        s.product_id,
        s.test_case_id,
        s.test_id,
        s.run_id,
        s.custom_id,
        s.external_session_id,
        s.status,
        s.created_at,
        int(s.deleted),
        data if data is not None else s.to_json(),
    )


def turn_row(turn: Turn, answer: str | None) -> tuple[Any, ...]:
    """A turn's row; `answer` is its API JSON when the caller already has it."""
    return (
        turn.id,
        turn.session_id,
        turn.index,
        turn.status,
        turn.created_at,
        answer if answer is not None else encode(turn.to_api()),
    )


def call_row(call_id: str, session_id: str, phase: str, created_at: str, data: str) -> tuple[Any, ...]:
    return (call_id, session_id, phase, created_at, data)


@dataclass
class Rows:
    """Rows to write in one go (a turn and its session change together)."""

    sessions: list[tuple[Any, ...]] = field(default_factory=list)
    turns: list[tuple[Any, ...]] = field(default_factory=list)
    calls: list[tuple[Any, ...]] = field(default_factory=list)


def put(conn: Any, rows: Rows) -> None:
    """Write rows (through the store's `write`/`enqueue`: this does not commit)."""
    if rows.sessions:
        conn.executemany(_SESSION_UPSERT, rows.sessions)
    if rows.turns:
        conn.executemany(_TURN_INSERT, rows.turns)
    if rows.calls:
        conn.executemany(_CALL_INSERT, rows.calls)


# -- reads ---------------------------------------------------------------------------------------


@dataclass
class ListQuery:
    """A list's filters, order and page, as SQL: `where` clauses with their arguments."""

    where: list[str] = field(default_factory=list)
    args: list[Any] = field(default_factory=list)
    descending: bool = True
    offset: int = 0
    limit: int | None = None

    def any_of(self, column: str, values: Sequence[str]) -> None:
        if values:
            self.where.append(f"{column} IN ({', '.join('?' * len(values))})")
            self.args.extend(values)

    def at_least(self, column: str, value: str | None) -> None:
        if value:
            self.where.append(f"{column} >= ?")
            self.args.append(value)

    def at_most(self, column: str, value: str | None) -> None:
        if value:
            self.where.append(f"{column} <= ?")
            self.args.append(value)

    def sql(self, select: str, order: Iterable[str]) -> tuple[str, list[Any]]:
        direction = "DESC" if self.descending else "ASC"
        sql = select
        if self.where:
            sql += " WHERE " + " AND ".join(self.where)
        sql += " ORDER BY " + ", ".join(f"{column} {direction}" for column in order)
        args = list(self.args)
        if self.limit is not None or self.offset:
            sql += " LIMIT ? OFFSET ?"
            args += [self.limit if self.limit is not None else -1, self.offset]
        return sql, args


def session_data(conn: Any, session_id: str) -> str | None:
    found = conn.execute(f"SELECT data FROM {SESSIONS} WHERE id = ?", (session_id,)).fetchone()
    return found[0] if found else None


def session_with_turns(conn: Any, session_id: str) -> tuple[str, list[str]] | None:
    """A session's document and its turns' answers, in one read (a session coming into memory)."""
    data = session_data(conn, session_id)
    return None if data is None else (data, session_turns(conn, session_id))


def list_sessions(conn: Any, query: ListQuery) -> list[str]:
    query.where.insert(0, "deleted = 0")
    sql, args = query.sql(f"SELECT data FROM {SESSIONS}", ("created_at", "seq"))
    return [data for (data,) in conn.execute(sql, args)]


def live_session_ids(conn: Any, ids: Sequence[str]) -> set[str]:
    marks = ", ".join("?" * len(ids))
    return {i for (i,) in conn.execute(f"SELECT id FROM {SESSIONS} WHERE deleted = 0 AND id IN ({marks})", ids)}


def turn_answer(conn: Any, turn_id: str) -> str | None:
    found = conn.execute(f"SELECT data FROM {TURNS} t WHERE id = ? AND {_LIVE_TURN}", (turn_id,)).fetchone()
    return found[0] if found else None


def list_turns(conn: Any, query: ListQuery) -> list[str]:
    query.where.append(_LIVE_TURN)
    sql, args = query.sql(f"SELECT data FROM {TURNS} t", ("created_at", "idx", "seq"))
    return [data for (data,) in conn.execute(sql, args)]


def live_turn_ids(conn: Any, ids: Sequence[str]) -> set[str]:
    marks = ", ".join("?" * len(ids))
    return {i for (i,) in conn.execute(f"SELECT id FROM {TURNS} t WHERE id IN ({marks}) AND {_LIVE_TURN}", ids)}


def session_turns(conn: Any, session_id: str) -> list[str]:
    """A session's turns' answers, in order."""
    return [d for (d,) in conn.execute(f"SELECT data FROM {TURNS} WHERE session_id = ? ORDER BY seq", (session_id,))]


def session_calls(conn: Any, session_id: str) -> list[str]:
    return [d for (d,) in conn.execute(f"SELECT data FROM {CALLS} WHERE session_id = ? ORDER BY seq", (session_id,))]


def turn_counts(conn: Any, session_ids: Sequence[str]) -> dict[str, int]:
    marks = ", ".join("?" * len(session_ids))
    sql = f"SELECT session_id, count(*) FROM {TURNS} WHERE session_id IN ({marks}) GROUP BY session_id"
    return dict(conn.execute(sql, session_ids))
