"""The table of a small entity kind (endpoint connections, versions, connectors).

Every stored entity of the kind is held in memory by id, in the order of its last write, loaded once at
start-up; each change goes through the store's group commit before memory changes; and the kind's secrets
are known to the redactor for exactly as long as the entity is stored.

On disk each kind has a table of real columns (what lists and look-ups read, indexed), `data` (a JSON
document of the rest) and `sealed` (a Fernet token of its secrets). A data dir from before holds a kind in
its earlier layout (versions and connectors as a JSON document a row, connections with `spec` and
`secrets`): the table is rewritten into this one when the kind first loads, and the pages of the old rows
are erased from the file rather than left in its free space. Secrets sealed with a retired key (a passphrase's
key from before scrypt) are sealed again with the current one when the kind loads, and erased alike.
"""

from __future__ import annotations

import functools
import itertools
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from typing import Any, ClassVar, Generic, Protocol, TypeVar

from proxy.errors import NotFound
from proxy.security.redaction import Redactor
from proxy.storage.store import Store

# Columns every kind's table has, around the kind's own.
HEAD_COLUMNS: dict[str, type] = {"id": str, "seq": int}
TAIL_COLUMNS: dict[str, type] = {"deleted_at": str, "data": str, "sealed": str}
LEGACY_SUFFIX = "_before_columns"
log = logging.getLogger("proxy")


def now_iso() -> str:
    """Now in UTC to the millisecond (`2024-05-01T12:00:00.123Z`), as every stored record is stamped."""
    now = time.time()
    second = int(now)
    return f"{_second_text(second)}.{int((now - second) * 1000):03d}Z"


@functools.lru_cache(maxsize=1)
def _second_text(second: int) -> str:
    # Formatted once a second: stamping a turn's rows is on every turn's path.
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))


class Entity(Protocol):
    @property
    def id(self) -> str: ...


E = TypeVar("E", bound=Entity)


class EntityKind(ABC, Generic[E]):
    """How one kind is kept in its table."""

    table: ClassVar[str]
    label: ClassVar[str]  # as "<label> <id> not found" names it
    columns: ClassVar[dict[str, type]]  # the kind's own real columns, besides HEAD_COLUMNS and TAIL_COLUMNS
    indexes: ClassVar[tuple[tuple[str, ...], ...]] = ()
    owner: ClassVar[str | None] = None  # the redactor owner kind of its secrets; None when it holds none
    soft_delete: ClassVar[bool] = False  # a deleted row stays, with `deleted_at`

    @abstractmethod
    def row(self, entity: E, store: Store) -> dict[str, Any]:
        """Its own columns, `data` and `sealed` (the table adds id, seq and deleted_at)."""

    @abstractmethod
    def revive(self, row: dict[str, Any], store: Store) -> E:
        """The entity a stored row holds."""

    @abstractmethod
    def upgrade(self, old: dict[str, Any], store: Store) -> dict[str, Any]:
        """A row of the earlier layout as `row` makes it (its id, seq and deleted_at are kept)."""

    def secrets(self, entity: E, store: Store) -> Iterable[str]:
        """What the redactor must know while the entity is stored."""
        return ()

    def secrets_in(self, row: dict[str, Any], store: Store) -> Iterable[str]:
        """The secrets of a stored row, read without reviving it where the kind can."""
        return self.secrets(self.revive(row, store), store)


def redactor_owner(kind: EntityKind[Any], entity_id: str) -> tuple[str, str]:
    assert kind.owner is not None
    return (kind.owner, entity_id)


class EntityTable(Generic[E]):
    """The stored entities of one kind: read from memory, written through."""

    def __init__(self, store: Store, kind: EntityKind[E], redactor: Redactor | None = None) -> None:
        assert (redactor is None) == (kind.owner is None), "a kind with secrets keeps the redactor knowing them"
        self.store = store
        self.kind = kind
        self.redactor = redactor
        self._by_id: dict[str, E] = {}
        self._seq = itertools.count(1)

    def load(self) -> None:
        """Read every live entity, after bringing the table to this layout."""
        rows, top = self.store.call(read_live, self.store, self.kind)
        for row in rows:
            self._by_id[row["id"]] = self.kind.revive(row, self.store)
            if self.redactor is not None:
                self.redactor.register(redactor_owner(self.kind, row["id"]), self.kind.secrets_in(row, self.store))
        self._seq = itertools.count(top + 1)

    # -- reads -------------------------------------------------------------------------------

    def all(self) -> list[E]:
        return list(self._by_id.values())

    def __iter__(self) -> Iterator[E]:
        return iter(self._by_id.values())

    def find(self, entity_id: str) -> E | None:
        return self._by_id.get(entity_id)

    def get(self, entity_id: str) -> E:
        entity = self._by_id.get(entity_id)
        if entity is None:
            raise NotFound(f"{self.kind.label} {entity_id} not found")
        return entity

    # -- writes ------------------------------------------------------------------------------

    async def save(self, entity: E) -> None:
        """Store it (new, or in place of the one with its id) and then hold it; its secrets replace the old."""
        row = {"id": entity.id, "seq": next(self._seq), "deleted_at": None, **self.kind.row(entity, self.store)}
        await self.store.write(write_row, self.store, self.kind.table, row)
        self._by_id[entity.id] = entity
        if self.redactor is not None:
            self.redactor.register(redactor_owner(self.kind, entity.id), self.kind.secrets(entity, self.store))

    async def delete(self, entity_id: str, deleted_at: str) -> None:
        self.get(entity_id)
        del self._by_id[entity_id]
        await self.store.write(delete_row, self.store, self.kind, entity_id, deleted_at)
        if self.redactor is not None:
            self.redactor.forget(redactor_owner(self.kind, entity_id))


def stored_secrets(store: Store, kind: EntityKind[Any]) -> list[tuple[tuple[str, str], list[str]]]:
    """Every live stored entity's redactor owner and secrets, without loading the kind."""
    rows, _ = store.call(read_live, store, kind)
    return [(redactor_owner(kind, row["id"]), list(kind.secrets_in(row, store))) for row in rows]


# -- writer thread ---------------------------------------------------------------------------


def read_live(store: Store, kind: EntityKind[Any]) -> tuple[list[dict[str, Any]], int]:
    """The live rows in order, and the highest `seq` the table has given (deleted rows included)."""
    prepare(store, kind)
    reseal(store, kind)
    table = store.db.table(kind.table)
    rows = list(table.rows_where("deleted_at is null", order_by="seq"))
    (top,) = store.db.execute(f"SELECT coalesce(max(seq), 0) FROM [{kind.table}]").fetchone()
    return rows, int(top)


def write_row(store: Store, table: str, row: dict[str, Any]) -> None:
    """Through `write`: in the group commit's transaction."""
    store.db.table(table).insert(row, pk="id", replace=True)


def delete_row(store: Store, kind: EntityKind[Any], entity_id: str, deleted_at: str) -> None:
    if kind.soft_delete:
        store.db.table(kind.table).update(entity_id, {"deleted_at": deleted_at})
    else:
        store.db.table(kind.table).delete(entity_id)


def erase_and_update(store: Store, table: str, updates: dict[str, dict[str, Any]]) -> None:
    """Change stored rows (by id) whose old values must not stay readable, such as a secret moving from plain
    text to sealed: the old text is erased from the file and its WAL, not left in free space. Through `call`."""
    if not updates:
        return
    conn = store.db.conn
    (was,) = conn.execute("PRAGMA secure_delete").fetchone()
    conn.execute("PRAGMA secure_delete = ON")
    try:
        for entity_id, values in updates.items():
            store.db.table(table).update(entity_id, values)
        conn.commit()
    finally:
        conn.execute(f"PRAGMA secure_delete = {int(was)}")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def prepare(store: Store, kind: EntityKind[Any]) -> None:
    """Create the kind's table, or rewrite it from the earlier layout, in one transaction."""
    db = store.db
    if "sealed" in db.table(kind.table).columns_dict:
        return
    conn = db.conn
    (was,) = conn.execute("PRAGMA secure_delete").fetchone()
    conn.execute("PRAGMA secure_delete = ON")  # the old rows may hold a secret in plain text
    try:
        with db.atomic():
            legacy = db.table(kind.table).exists()
            if legacy:
                db.rename_table(kind.table, kind.table + LEGACY_SUFFIX)
            table = db.table(kind.table)
            table.create({**HEAD_COLUMNS, **kind.columns, **TAIL_COLUMNS}, pk="id", not_null={"seq"})
            for columns in kind.indexes:
                table.create_index(columns, if_not_exists=True)
            if legacy:
                old_table = db.table(kind.table + LEGACY_SUFFIX)
                rows = [
                    {"id": old["id"], "seq": old["seq"], "deleted_at": old.get("deleted_at")} | kind.upgrade(old, store)
                    for old in old_table.rows_where(order_by="seq")
                ]
                table.insert_all(rows, pk="id")
                old_table.drop()
    finally:
        conn.execute(f"PRAGMA secure_delete = {int(was)}")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # the old page images leave the WAL and the file


def reseal(store: Store, kind: EntityKind[Any]) -> None:
    """Seal every row's secrets (deleted rows' too) with the current key, when the vault holds a retired one
    that sealed some; the old tokens are erased from the file and its WAL, so the weaker key opens nothing."""
    if not store.vault.has_retired:
        return
    db = store.db
    rows = list(db.execute(f"SELECT id, sealed FROM [{kind.table}] WHERE sealed IS NOT NULL"))
    resealed = [(token, row_id) for row_id, old in rows if (token := store.vault.reseal(old)) is not None]
    if not resealed:
        return
    conn = db.conn
    (was,) = conn.execute("PRAGMA secure_delete").fetchone()
    conn.execute("PRAGMA secure_delete = ON")
    try:
        with db.atomic():
            conn.executemany(f"UPDATE [{kind.table}] SET sealed = ? WHERE id = ?", resealed)
    finally:
        conn.execute(f"PRAGMA secure_delete = {int(was)}")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    log.info("%s: %d stored secrets sealed again with the current key", kind.table, len(resealed))
