"""The store: group commit (concurrent writes share commits, each caller waits for its own), the queue that
does not wait, and the session tables: SQL lists, a bounded cache, and migration of data dirs from before."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx

from proxy.cassettes.journal import Journal
from proxy.security.vault import Vault, load_fernet
from proxy.storage.store import Store
from tests.conftest import chat_connection, running_proxy
from tests.upstream import Reply, Upstream


def open_store(tmp_path: Path) -> Store:
    store = Store(tmp_path / "data", Vault(load_fernet(tmp_path / "data")))
    store.call(store.db.execute, "CREATE TABLE IF NOT EXISTS t (id TEXT PRIMARY KEY, seq INTEGER, data TEXT)")
    return store


def put(store: Store, row_id: str, seq: int, data: str) -> None:
    store.db.conn.execute("INSERT INTO t (id, seq, data) VALUES (?, ?, ?)", (row_id, seq, data))


def committed_rows(store: Store, table: str) -> list[tuple[str, str]]:
    """What another connection sees: only committed data."""
    with closing(sqlite3.connect(store.path)) as other:
        return list(other.execute(f"SELECT id, data FROM [{table}] ORDER BY seq"))


def count_commits(store: Store) -> list[int]:
    """[the number of commits so far], kept up to date."""
    commits = [0]
    in_one_transaction = store._in_one_transaction

    def counting(writes):  # type: ignore[no-untyped-def]
        commits[0] += 1
        return in_one_transaction(writes)

    store._in_one_transaction = counting  # type: ignore[method-assign]
    return commits


async def test_concurrent_writes_are_all_committed_before_their_callers_resume(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    commits = count_commits(store)

    async def one(n: int) -> int:
        await store.write(put, store, f"s{n}", n, f'{{"n": {n}}}')
        assert (f"s{n}", f'{{"n": {n}}}') in committed_rows(store, "t")  # committed when write returns
        return n

    assert await asyncio.gather(*(one(n) for n in range(200))) == list(range(200))
    assert len(committed_rows(store, "t")) == 200
    assert commits[0] < 200 / 4  # writes queued behind a commit went together
    journal = Journal(store)
    seqs = await asyncio.gather(
        *(store.write(journal.append, "c", "interaction", str(n), "/c.yaml") for n in range(20))
    )
    assert seqs == sorted(seqs) and len(set(seqs)) == 20  # each caller gets its own row's number, in order
    store.close()


async def test_a_failing_write_takes_back_only_itself(tmp_path: Path) -> None:
    store = open_store(tmp_path)

    def put_then_fail() -> None:
        put(store, "half-done", 1, "{}")
        raise RuntimeError("disk says no")

    results = await asyncio.gather(
        store.write(put, store, "before", 2, "{}"),
        store.write(put_then_fail),
        store.write(put, store, "after", 3, "{}"),
        return_exceptions=True,
    )
    assert results[0] is None and results[2] is None
    assert isinstance(results[1], RuntimeError) and str(results[1]) == "disk says no"
    assert [row[0] for row in committed_rows(store, "t")] == ["before", "after"]
    await store.write(put, store, "later", 4, "{}")  # the store keeps working
    assert [row[0] for row in committed_rows(store, "t")] == ["before", "after", "later"]
    store.close()


def test_blocking_calls_commit_what_they_write(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    seq = store.call(Journal(store).append, "sessions/tc", "interaction", "recorded", "/c/sessions/tc.yaml")
    with closing(sqlite3.connect(store.path)) as other:
        assert list(other.execute("SELECT seq, cassette, data FROM journal")) == [(seq, "sessions/tc", "recorded")]
    store.close()


def file_bytes(store: Store) -> bytes:
    return b"".join(path.read_bytes() for path in sorted(store.path.parent.glob(f"{store.path.name}*")))


async def test_enqueued_writes_do_not_wait_and_a_read_queued_behind_them_sees_them(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    for n in range(50):
        store.enqueue(put, store, f"q{n}", n, "{}")  # returns at once: no commit awaited
    count = await store.write(lambda: store.db.conn.execute("SELECT count(*) FROM t").fetchone()[0])
    assert count == 50
    store.enqueue(put, store, "last", 99, "{}")
    await store.drain()
    assert len(committed_rows(store, "t")) == 51
    store.close()


async def test_enqueued_writes_share_a_commit_and_are_written_without_a_drain(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    commits = count_commits(store)
    for n in range(20):
        store.enqueue(put, store, f"q{n}", n, "{}")
        await asyncio.sleep(0)  # a turn's worth of event-loop work between rows
    for _ in range(100):  # nobody waits on them: they are committed after a short delay all the same
        if len(committed_rows(store, "t")) == 20:
            break
        await asyncio.sleep(0.01)
    assert len(committed_rows(store, "t")) == 20
    assert commits[0] == 1  # one commit for the lot, not one per row
    store.enqueue(put, store, "left", 99, "{}")
    store.close()  # queued and never drained: closing writes it
    with closing(sqlite3.connect(store.path)) as other:
        assert other.execute("SELECT count(*) FROM t").fetchone()[0] == 21


# -- sessions in SQL ---------------------------------------------------------------------------

OLD_TABLE = "CREATE TABLE [{name}] (\n   [id] TEXT PRIMARY KEY,\n   [seq] INTEGER,\n   [data] TEXT\n)"


def old_session(session_id: str, version_id: str, **fields: Any) -> dict[str, Any]:
    """A session row's document as the store wrote it before sessions had columns (every dataclass field)."""
    return {
        "id": session_id,
        "version_id": version_id,
        "product_id": "prod-1",
        "created_at": fields.pop("created_at"),
        "cassette_key": fields.get("test_case_id") or "chat",
        "trace_id": "0af7651916cd43dd8448eb211c80319c",
        "custom_id": None,
        "external_session_id": None,
        "test_case_id": None,
        "test_id": None,
        "run_id": None,
        "context": None,
        "metadata": {},
        "status": "PENDING",
        "stopping_reason": None,
        "error": None,
        "is_production": False,
        "initialized": True,
        "finalized": False,
        "deleted": False,
        **fields,
    }


# An exchange as `CallResult.to_json()` wrote it.
EXCHANGE = {
    "request": None,
    "attempts": [],
    "response": None,
    "extracted": {},
    "extractionErrors": {},
    "error": None,
    "endedByRule": None,
    "cassette": "live",
    "stream": None,
}


def old_turn(turn_id: str, session_id: str, index: int, created_at: str, said: str) -> dict[str, Any]:
    return {
        "id": turn_id,
        "session_id": session_id,
        "index": index,
        "created_at": created_at,
        "input": {"user_message": said},
        "actual_output": f"echo {said}",
        "retrieval_context": None,
        "traces": [],
        "latency": 1.5,
        "time_to_first_token_ms": None,
        "status": "GENERATED",
        "error": None,
        "exchange": EXCHANGE,
        "extra": {"cost": 0.25},
    }


def write_old_layout(db_path: Path, version_id: str) -> None:
    """The three tables as the store laid them out before (one JSON document a row, `seq` the order of the
    last write), filled with plain sqlite3 as that store's `put_many` did."""
    sessions = [
        old_session("ses_a", version_id, test_case_id="tc-a", created_at="2024-05-01T10:00:00.000Z"),
        old_session(
            "ses_b",
            version_id,
            is_production=True,
            context="plain text context",  # stored before contexts were objects
            status="COMPLETED",
            finalized=True,
            created_at="2024-05-01T11:00:00.000Z",
        ),
        old_session("ses_gone", version_id, test_case_id="tc-x", deleted=True, created_at="2024-05-01T12:00:00.000Z"),
    ]
    turns = [
        old_turn("t-a0", "ses_a", 0, "2024-05-01T10:00:01.000Z", "hello"),
        old_turn("t-a1", "ses_a", 1, "2024-05-01T10:00:02.000Z", "again"),
        old_turn("t-b0", "ses_b", 0, "2024-05-01T11:00:01.000Z", "logged"),
        old_turn("t-gone", "ses_gone", 0, "2024-05-01T12:00:01.000Z", "deleted"),
    ]
    call = {"id": "c-1", "session_id": "ses_b", "phase": "FINALIZATION", "created_at": "2024-05-01T11:00:03.000Z"}
    call["exchange"] = EXCHANGE
    with closing(sqlite3.connect(db_path)) as conn, conn:
        for name in ("sessions", "inference_results", "lifecycle_calls"):
            conn.execute(f"DROP TABLE IF EXISTS [{name}]")
            conn.execute(OLD_TABLE.format(name=name))
        seq = 0
        for table, rows in (("inference_results", turns), ("sessions", sessions), ("lifecycle_calls", [call])):
            for row in rows:
                seq += 1
                conn.execute(
                    f"INSERT OR REPLACE INTO [{table}] (id, seq, data) VALUES (?, ?, ?)",
                    (row["id"], seq, json.dumps(row, ensure_ascii=False)),
                )


def test_a_data_dir_from_before_migrates_at_start_up_and_its_sessions_go_on(
    tmp_path: Path, upstream: Upstream, upstream_url: str
) -> None:
    with running_proxy(tmp_path) as first, httpx.Client(base_url=first.url) as api:
        assert api.post("/endpointConnections", json=chat_connection(upstream_url)).status_code == 201
        conn_id = api.get("/endpointConnections").json()[0]["id"]
        body = {"productId": "prod-1", "name": "v1", "conversationEndpointConnectionId": conn_id}
        version_id = api.post("/versions", json=body).json()["id"]
    write_old_layout(tmp_path / "data" / "proxy.db", version_id)
    for _start in range(2):  # the second start finds the new layout and leaves it alone
        with running_proxy(tmp_path) as server, httpx.Client(base_url=server.url) as api:
            listed = api.get("/sessions").json()
            assert [s["id"] for s in listed][:2] == ["ses_b", "ses_a"] and len(listed) == 2  # deleted stays gone
            assert api.get("/sessions/ses_b").json()["context"] == {"value": "plain text context"}
            assert api.get("/sessions/ses_gone").status_code == 404
            turns = api.get("/inferenceResults", params={"sessionIds[]": "ses_a"}).json()
            assert [(t["id"], t["index"], t["actualOutput"], t["cost"]) for t in turns[:2]] == [
                ("t-a0", 0, "echo hello", 0.25),
                ("t-a1", 1, "echo again", 0.25),
            ]
            assert api.get("/inferenceResults/t-b0").json()["input"] == {"user_message": "logged"}
            assert api.get("/inferenceResults/t-gone").status_code == 404
            assert "FINALIZATION" in api.get("/inspector/sessions/ses_b").text
    with running_proxy(tmp_path) as server, httpx.Client(base_url=server.url) as api:
        answer = api.post("/sessions/ses_a/turns", json={"input": {"user_message": "third"}})
        assert answer.status_code == 201, answer.text
        assert answer.json()["index"] == 2 and answer.json()["actualOutput"] == 'echo {"message": "third"}'
        assert [t["index"] for t in api.get("/inferenceResults", params={"sessionIds[]": "ses_a"}).json()] == [0, 1, 2]
        assert api.post("/sessions/ses_b/turns", json={"input": "x"}).status_code == 409  # COMPLETED stays so


def test_lists_filter_sort_and_page_in_sql(tmp_path: Path, upstream_url: str) -> None:
    with running_proxy(tmp_path) as server, httpx.Client(base_url=server.url) as api:
        conn_id = api.post("/endpointConnections", json=chat_connection(upstream_url)).json()["id"]
        body = {"productId": "prod-1", "name": "v1", "conversationEndpointConnectionId": conn_id}
        version_id = api.post("/versions", json=body).json()["id"]
        made = [
            api.post("/sessions", json={"versionId": version_id, "testCaseId": f"tc-{n % 3}"}).json() for n in range(7)
        ]
        for session in made[:2]:
            api.post(f"/sessions/{session['id']}/turns", json={"input": {"user_message": "hi"}})
        # SQL answers what the sessions hold: the queue's rows are read behind it, no wait needed.
        newest_first = [s["id"] for s in api.get("/sessions").json()]
        assert sorted(newest_first) == sorted(s["id"] for s in made)
        assert [s["id"] for s in api.get("/sessions", params={"sort[]": ["createdAt", "asc"]}).json()] == [
            s["id"] for s in made
        ]
        page = api.get("/sessions", params={"sort[]": ["createdAt", "asc"], "offset": 2, "limit": 3}).json()
        assert [s["id"] for s in page] == [s["id"] for s in made[2:5]]
        assert {s["testCaseId"] for s in api.get("/sessions", params={"testCaseIds[]": "tc-1"}).json()} == {"tc-1"}
        assert api.get("/sessions", params={"statuses[]": "completed"}).json() == []
        assert api.get("/sessions", params={"ids[]": "ses_nope"}).status_code == 404
        assert api.get("/sessions", params={"limit": 0}).status_code == 422
        turns = api.get("/inferenceResults", params={"sessionIds[]": [made[0]["id"], made[1]["id"]]}).json()
        assert [t["sessionId"] for t in turns] == [made[0]["id"], made[1]["id"]]
        assert api.delete(f"/sessions/{made[0]['id']}").status_code == 200
        assert [t["sessionId"] for t in api.get("/inferenceResults").json()] == [made[1]["id"]]
        assert api.get("/inferenceResults", params={"ids[]": turns[0]["id"]}).status_code == 404


async def test_the_cache_is_bounded_and_a_session_mid_turn_stays_in_it(
    tmp_path: Path, upstream: Upstream, upstream_url: str
) -> None:
    upstream.script("/slow", Reply(json={"reply": "late"}, delay=0.5))
    with running_proxy(tmp_path) as server:
        sessions = server.runtime.sessions
        sessions.cache.size = 3
        async with httpx.AsyncClient(base_url=server.url) as api:
            slow = chat_connection(upstream_url, name="slow", url=f"{upstream_url}/slow")
            slow_id = (await api.post("/endpointConnections", json=slow)).json()["id"]
            chat_id = (await api.post("/endpointConnections", json=chat_connection(upstream_url))).json()["id"]
            versions = {}
            for name, conn_id in (("slow", slow_id), ("fast", chat_id)):
                body = {"productId": "prod-1", "name": name, "conversationEndpointConnectionId": conn_id}
                versions[name] = (await api.post("/versions", json=body)).json()["id"]
            busy = (await api.post("/sessions", json={"versionId": versions["slow"], "testCaseId": "busy"})).json()
            in_flight = asyncio.create_task(
                api.post(f"/sessions/{busy['id']}/turns", json={"input": {"user_message": "x"}})
            )
            await asyncio.sleep(0.1)
            others = []
            for n in range(10):
                made = await api.post("/sessions", json={"versionId": versions["fast"], "testCaseId": f"tc-{n}"})
                others.append(made.json()["id"])
                await api.post(f"/sessions/{others[-1]}/turns", json={"input": {"user_message": f"m{n}"}})
                assert busy["id"] in sessions.cache  # never evicted while its turn runs
            answer = await in_flight
            assert answer.status_code == 201 and answer.json()["actualOutput"] == "late"
            assert len(sessions.cache) <= 3 + 1
            await api.post("/sessions", json={"versionId": versions["fast"], "testCaseId": "one-more"})
            assert len(sessions.cache) == 3
            # An evicted session is read back when it is needed: its turns counted, its past turns there.
            assert others[0] not in sessions.cache
            upstream.clear()
            again = await api.post(f"/sessions/{others[0]}/turns", json={"input": {"user_message": "back"}})
            assert again.status_code == 201 and again.json()["index"] == 1
            assert (await api.get(f"/sessions/{others[0]}")).json()["testCaseId"] == "tc-0"
