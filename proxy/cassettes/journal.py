"""The cassette journal: each recorded interaction (or `reset`) is a row of the database before its caller is
answered, until a flush has written it to its cassette file; a start-up after a crash folds the rows left into
their files (`CassetteLibrary.recover`). Its queries run on the store's writer thread (`append` through
`Store.write`)."""

from __future__ import annotations

from collections.abc import Callable

from proxy.storage.store import Store

JournalRows = dict[str, tuple[str, list[tuple[int, str, str]]]]  # {file path: (cassette name, [(seq, kind, data)])}


class Journal:
    def __init__(self, store: Store) -> None:
        self.store = store
        store.call(self._migrate)

    def _migrate(self) -> None:
        db = self.store.db
        if not db.table("journal").exists():
            db.execute(
                "CREATE TABLE journal (seq INTEGER PRIMARY KEY AUTOINCREMENT, cassette TEXT NOT NULL,"
                " kind TEXT NOT NULL, data TEXT NOT NULL, path TEXT)"
            )
        elif "path" not in db.table("journal").columns_dict:
            # Rows from before each row named its cassette file: the first cassettes folder to start
            # claims them (see `claim_unplaced`), as every folder did then.
            db.execute("ALTER TABLE journal ADD COLUMN path TEXT")
        db.execute("CREATE INDEX IF NOT EXISTS journal_path ON journal (path, seq)")

    def append(self, cassette: str, kind: str, data: str, path: str) -> int:
        """One recorded interaction (or a `reset`) of the cassette file at `path` (absolute: a data dir
        may serve several cassettes folders, one after another or at once); returns its sequence number."""
        cursor = self.store.db.conn.execute(
            "INSERT INTO journal (cassette, kind, data, path) VALUES (?, ?, ?, ?)", (cassette, kind, data, path)
        )
        return int(cursor.lastrowid or 0)

    def claim_unplaced(self, path_of: Callable[[str], str]) -> None:
        """Give rows journaled without a path (by an older version) the file `path_of(cassette name)`."""
        db = self.store.db
        for (name,) in list(db.execute("SELECT DISTINCT cassette FROM journal WHERE path IS NULL")):
            db.conn.execute("UPDATE journal SET path = ? WHERE path IS NULL AND cassette = ?", (path_of(name), name))

    def rows(self) -> JournalRows:
        """Per cassette file (its path): the cassette's name and its rows (seq, kind, data), in order."""
        rows: JournalRows = {}
        query = "SELECT seq, cassette, kind, data, path FROM journal WHERE path IS NOT NULL ORDER BY seq"
        for seq, cassette, kind, data, path in self.store.db.execute(query):
            rows.setdefault(path, (cassette, []))[1].append((seq, kind, data))
        return rows

    def forget(self, path: str, upto_seq: int) -> None:
        """The cassette file at `path` now holds everything up to `upto_seq`."""
        self.store.db.conn.execute("DELETE FROM journal WHERE path = ? AND seq <= ?", (path, upto_seq))
