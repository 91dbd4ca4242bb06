"""Connections, versions and connectors in tables of real columns: a data dir in the earlier layout (written here
with plain sqlite3, row for row as the earlier code wrote it) migrates on start-up, once, its secrets still sealed."""

from __future__ import annotations

import json
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import cohere
import httpx

from proxy.config.file import Config
from proxy.config.settings import Settings
from proxy.connections.spec import ConnectionSpec
from proxy.connectors.sealing import CONNECTORS
from proxy.security.vault import Vault, load_fernet
from proxy.server.runtime import known_secrets
from proxy.storage.entity_tables import read_live
from proxy.storage.store import Store
from tests.conftest import TEST_TOKEN, chat_connection, running_proxy
from tests.upstream import Received, Reply, Upstream

HEADER_SECRET = "hdr-Secret-Value-9911"
SEARCH_TOKEN = "search-Token-Value-5150"
OAUTH_SECRET = "oauth-Secret-Value-8080"
CLIENT_ID = "cid-Sealed-Apart-27182"
PLAIN_CLIENT_ID = "cid-Plain-Marker-31337"
SECRETS = (TEST_TOKEN, HEADER_SECRET, SEARCH_TOKEN, OAUTH_SECRET, CLIENT_ID, PLAIN_CLIENT_ID)
CREATED = "2026-01-01T00:00:00.000Z"

# The earlier layout, as sqlite-utils created it.
EARLIER_TABLES = [
    'CREATE TABLE "connections" ("id" TEXT PRIMARY KEY, "seq" INTEGER, "product_id" TEXT, "name" TEXT,'
    ' "created_at" TEXT, "deleted_at" TEXT, "spec" TEXT, "secrets" TEXT)',
    *(
        f'CREATE TABLE "{table}" ("id" TEXT PRIMARY KEY, "seq" INTEGER, "data" TEXT)'
        for table in ("versions", "sessions", "inference_results", "lifecycle_calls", "connectors")
    ),
    "CREATE TABLE journal (seq INTEGER PRIMARY KEY AUTOINCREMENT, cassette TEXT NOT NULL, kind TEXT NOT NULL,"
    " data TEXT NOT NULL, path TEXT)",
    "CREATE INDEX journal_path ON journal (path, seq)",
    "CREATE TABLE cassette_usage (path TEXT PRIMARY KEY, last_used TEXT NOT NULL, used_by TEXT NOT NULL)",
]


def earlier_connection(
    vault: Vault, conn_id: str, seq: int, data: dict[str, Any], deleted_at: str | None = None
) -> tuple[Any, ...]:
    """A connection row as the earlier registry wrote it: the non-secret fields as JSON, the rest sealed."""
    everything = ConnectionSpec.model_validate(data).model_dump(mode="json")
    secrets = vault.encrypt(json.dumps({k: everything.pop(k) for k in ("auth_token", "password", "headers")}))
    product, name = everything["product_id"], everything["name"]
    return (conn_id, seq, product, name, CREATED, deleted_at, json.dumps(everything), secrets)


def earlier_connector(vault: Vault, name: str, url: str, created_at: str, **fields: Any) -> dict[str, Any]:
    """A connector document as the earlier registry wrote it (`faults` absent: older rows lack it)."""
    sealed = fields.pop("secrets", None)
    return {
        "id": name,
        "name": name,
        "url": url,
        "created_at": created_at,
        "updated_at": CREATED,
        "description": None,
        "excludes": [],
        "active": True,
        "continue_on_failure": False,
        "oauth": None,
        "service_auth_type": None,
        "sealed": vault.encrypt(json.dumps(sealed)) if sealed else None,
        **fields,
    }


def write_earlier_data_dir(data_dir: Path, upstream_url: str) -> None:
    """Two live connections (one written twice) and a deleted one, a version, and connectors with a service
    token, an OAuth client id sealed apart, and one older still with the client id in plain text."""
    vault = Vault(load_fernet(data_dir))
    chat = chat_connection(upstream_url, headers={"X-Upstream-Token": HEADER_SECRET})
    connections = [
        earlier_connection(vault, "ec_gone", 1, chat_connection(upstream_url, name="gone"), "2026-01-02T00:00:00Z"),
        earlier_connection(vault, "ec_other", 2, chat_connection(upstream_url, name="other", productId="prod-2")),
        earlier_connection(vault, "ec_chat", 3, chat),  # its second write: the first, seq 1, was replaced
    ]
    version = {
        "id": "ver_1",
        "product_id": "prod-1",
        "name": "v1",
        "number": 1,
        "created_at": CREATED,
        "conversation_endpoint_connection_id": "ec_chat",
        "initialization_endpoint_connection_id": None,
        "finalization_endpoint_connection_id": None,
        "extra": {"description": "the first one"},
    }
    oauth = {"authorize_url": "https://a/x", "token_url": "t", "scope": None}
    search = f"{upstream_url}/search"
    sealed_client_id = vault.encrypt(json.dumps({"client_id": CLIENT_ID}))
    connectors = [
        earlier_connector(
            vault,
            "wiki",
            search,
            "2026-01-01T00:00:01.000Z",
            service_auth_type="bearer",
            secrets={"token": SEARCH_TOKEN},
        ),
        earlier_connector(
            vault,
            "kb",
            search,
            "2026-01-01T00:00:02.000Z",
            oauth={**oauth, "client_id": None},
            secrets={"client_secret": OAUTH_SECRET},
            sealed_client_id=sealed_client_id,
            faults=[],
        ),
        earlier_connector(
            vault, "old", search, "2026-01-01T00:00:03.000Z", oauth={**oauth, "client_id": PLAIN_CLIENT_ID}
        ),
    ]
    with closing(sqlite3.connect(data_dir / "proxy.db")) as db, db:
        db.execute("PRAGMA journal_mode=WAL")
        for statement in EARLIER_TABLES:
            db.execute(statement)
        db.executemany("INSERT INTO connections VALUES (?, ?, ?, ?, ?, ?, ?, ?)", connections)
        db.execute("INSERT INTO versions VALUES (?, ?, ?)", ("ver_1", 1, json.dumps(version, ensure_ascii=False)))
        db.executemany(
            "INSERT INTO connectors VALUES (?, ?, ?)",
            [(c["id"], seq, json.dumps(c, ensure_ascii=False)) for seq, c in enumerate(connectors, 1)],
        )


def database_bytes(data_dir: Path) -> bytes:
    """The SQLite files as they lie on the disk: the database, its WAL and shared memory."""
    return b"".join(path.read_bytes() for path in sorted(data_dir.glob("proxy.db*")))


def layout(data_dir: Path) -> dict[str, Any]:
    with closing(sqlite3.connect(data_dir / "proxy.db")) as db:
        return {
            "tables": sorted(name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")),
            "columns": {
                table: [row[1] for row in db.execute(f"PRAGMA table_info([{table}])")]
                for table in ("connections", "versions", "connectors")
            },
            "indexes": sorted(
                name
                for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL")
            ),
        }


def answer_searches(upstream: Upstream) -> list[Received]:
    seen: list[Received] = []

    def answer(request: Received) -> Reply:
        seen.append(request)
        return Reply(json={"results": [{"id": "d1", "text": f"about {request.json['query']}"}]})

    upstream.handle("/search", answer)
    return seen


def check_entities(proxy_url: str, upstream: Upstream) -> dict[str, Any]:
    """What the migrated data dir serves; each entity works, its secrets sent where they belong."""
    with httpx.Client(base_url=proxy_url) as client:
        connections = client.get("/endpointConnections").json()
        upstream.script("/chat", Reply(json={"reply": "fine"}))
        tested = client.post("/endpointConnections/testConnection", json={"id": "ec_chat"}).json()
        assert tested["success"], tested
        chat_call = upstream.requests_to("/chat")[-1]
        assert chat_call.headers["authorization"] == f"Bearer {TEST_TOKEN}"
        assert chat_call.headers["x-upstream-token"] == HEADER_SECRET
        versions = client.get("/versions").json()
        session = client.post("/sessions", json={"productId": "prod-1", "testCaseId": "tc"}).json()  # its latest
        assert session["versionId"] == "ver_1", session
    searches = answer_searches(upstream)
    co = cohere.Client(api_key="cohere-key", base_url=proxy_url, timeout=30)
    connectors = co.connectors.list()
    with httpx.Client(base_url=proxy_url) as client:
        assert client.post("/v1/connectors/wiki/search", json={"query": "refunds"}).status_code == 200
    assert searches[-1].headers["authorization"] == f"Bearer {SEARCH_TOKEN}"
    return {
        "connections": [(c["id"], c["name"], c["productId"], c["type"], c["headers"]) for c in connections],
        "versions": [(v["id"], v["name"], v["conversationEndpointConnectionId"], v["description"]) for v in versions],
        "connectors": [
            (c.id, c.auth_type, c.oauth.client_id if c.oauth else None) for c in connectors.connectors or []
        ],
    }


def test_a_data_dir_in_the_earlier_layout_migrates_on_start_up_and_keeps_its_secrets_sealed(
    tmp_path: Path, upstream: Upstream, upstream_url: str
) -> None:
    data_dir = tmp_path / "data"
    write_earlier_data_dir(data_dir, upstream_url)
    assert PLAIN_CLIENT_ID.encode() in database_bytes(data_dir)  # the test starts from plain text
    expected = {
        "connections": [
            ("ec_other", "other", "prod-2", "CONVERSATION", None),  # in the order written (seq)
            ("ec_chat", "chat", "prod-1", "CONVERSATION", {"X-Upstream-Token": "••••••••"}),
        ],
        "versions": [("ver_1", "v1", "ec_chat", "the first one")],
        "connectors": [("old", "oauth", PLAIN_CLIENT_ID), ("kb", "oauth", CLIENT_ID), ("wiki", "service_auth", None)],
    }
    with running_proxy(tmp_path, record_mode="off") as proxy:  # every call live, to see its credentials
        assert PLAIN_CLIENT_ID.encode() not in database_bytes(data_dir)  # erased at start-up, not at shutdown
        assert check_entities(proxy.url, upstream) == expected
        with httpx.Client(base_url=proxy.url) as client:  # a new row after the migrated ones
            created = client.post("/endpointConnections", json=chat_connection(upstream_url, name="new")).json()
            assert client.get("/endpointConnections/ec_gone").status_code == 404
    migrated = layout(data_dir)
    assert not any(table.endswith("_before_columns") for table in migrated["tables"])
    assert migrated["columns"] == {
        "connections": ["id", "seq", "product_id", "name", "type", "created_at", "deleted_at", "data", "sealed"],
        "versions": ["id", "seq", "product_id", "name", "number", "created_at", "deleted_at", "data", "sealed"],
        "connectors": ["id", "seq", "name", "url", "created_at", "updated_at", "deleted_at", "data", "sealed"],
    }
    assert {"idx_connections_product_id_name", "idx_versions_product_id_number", "idx_connectors_created_at"} <= set(
        migrated["indexes"]
    )
    with closing(sqlite3.connect(data_dir / "proxy.db")) as db:
        seqs = dict(db.execute("SELECT id, seq FROM connections"))
        assert seqs["ec_gone"] == 1 and seqs["ec_chat"] == 3 and seqs[created["id"]] == 4  # after every seq given
        assert db.execute("SELECT deleted_at FROM connections WHERE id = 'ec_gone'").fetchone() == (
            "2026-01-02T00:00:00Z",
        )
    stored = database_bytes(data_dir)
    for secret in SECRETS:
        assert secret.encode() not in stored, secret
    with running_proxy(tmp_path, record_mode="off") as proxy:  # migrated once: a second start reads the same
        assert check_entities(proxy.url, upstream) == {
            **expected,
            "connections": [(created["id"], "new", "prod-1", "CONVERSATION", None), *expected["connections"]],
        }
    assert layout(data_dir) == migrated


def test_the_secrets_of_an_earlier_data_dir_are_known_without_starting_a_server(
    tmp_path: Path, upstream_url: str
) -> None:
    """`proxy cassettes verify` reads them: the redactor knows every stored secret, and no OAuth client id."""
    data_dir = tmp_path / "data"
    write_earlier_data_dir(data_dir, upstream_url)
    redactor = known_secrets(Settings(data_dir=data_dir, cassettes_dir=tmp_path / "cassettes"), Config())
    for secret in (TEST_TOKEN, HEADER_SECRET, SEARCH_TOKEN, OAUTH_SECRET):
        assert redactor.redact(f"<{secret}>") == "<••••••••>", secret
    assert redactor.redact(CLIENT_ID) == CLIENT_ID  # returned by the API, as in Cohere: not a secret to mask
    assert redactor.redact("the other one") == "the other one"


def test_the_rows_of_the_earlier_layout_are_erased_where_sqlite_would_keep_them(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    write_earlier_data_dir(data_dir, "http://127.0.0.1:9")
    store = Store(data_dir, Vault(load_fernet(data_dir)))
    try:
        # Many builds keep freed cells as they were; Debian's turns secure_delete on by default.
        store.call(store.db.conn.execute, "PRAGMA secure_delete = OFF")
        rows, top = store.call(read_live, store, CONNECTORS)
        assert [row["id"] for row in rows] == ["wiki", "kb", "old"] and top == 3
        assert PLAIN_CLIENT_ID.encode() not in database_bytes(data_dir)
        assert store.call(store.db.conn.execute, "PRAGMA secure_delete").fetchone() == (0,)  # put back as it was
    finally:
        store.close()


URL_KEY = "AIzaSyTESTSECRET0123456789"


def unseal_url_as_before(data_dir: Path) -> None:
    """Every connection and connector row rewritten as the server wrote it before a credential in a URL's query
    string was sealed: the URL in plain text (connections: in `data`; connectors: in the `url` column)."""
    vault = Vault(load_fernet(data_dir))
    with closing(sqlite3.connect(data_dir / "proxy.db")) as db, db:
        for conn_id, data, sealed in db.execute("SELECT id, data, sealed FROM connections").fetchall():
            secrets = json.loads(vault.decrypt(sealed))
            data = {**json.loads(data), "url": secrets.pop("url")}
            db.execute(
                "UPDATE connections SET data = ?, sealed = ? WHERE id = ?",
                (json.dumps(data), vault.encrypt(json.dumps(secrets)), conn_id),
            )
        for connector_id, sealed in db.execute("SELECT id, sealed FROM connectors").fetchall():
            secrets = json.loads(vault.decrypt(sealed))
            db.execute(
                "UPDATE connectors SET url = ?, sealed = ? WHERE id = ?",
                (secrets.pop("url"), vault.encrypt(json.dumps(secrets)), connector_id),
            )


def test_a_url_key_a_data_dir_holds_in_plain_is_sealed_and_erased_at_start_up(
    tmp_path: Path, upstream: Upstream, upstream_url: str
) -> None:
    """The attack: reading the database file of a data dir written before URL keys were sealed (a live and a
    deleted connection, a connector, and a connection of the earlier layout). Start-up seals them and erases
    the plain text; the key still reaches the upstream."""
    data_dir = tmp_path / "data"
    url = f"{upstream_url}/chat?key={URL_KEY}"
    answer_searches(upstream)
    with running_proxy(tmp_path, record_mode="off") as proxy, httpx.Client(base_url=proxy.url) as client:
        for name in ("gone", "chat"):
            created = client.post("/endpointConnections", json=chat_connection(upstream_url, name=name, url=url))
            assert created.status_code == 201, created.text
            if name == "gone":
                assert client.delete(f"/endpointConnections/{created.json()['id']}").status_code == 200
        connector = client.post("/v1/connectors", json={"name": "wiki", "url": f"{upstream_url}/search?key={URL_KEY}"})
        assert connector.status_code == 200, connector.text
    unseal_url_as_before(data_dir)
    assert URL_KEY.encode() in database_bytes(data_dir)  # the test starts from plain text

    upstream.script("/chat", Reply(json={"reply": "fine"}))
    with running_proxy(tmp_path, record_mode="off") as proxy, httpx.Client(base_url=proxy.url) as client:
        assert URL_KEY.encode() not in database_bytes(data_dir)  # erased at start-up
        (shown,) = client.get("/endpointConnections").json()
        assert shown["url"] == f"{upstream_url}/chat?key=••••••••"
        assert client.post("/endpointConnections/testConnection", json={"id": shown["id"]}).json()["success"]
        assert client.post("/v1/connectors/wiki/search", json={"query": "refunds"}).status_code == 200
    assert upstream.requests_to("/chat")[-1].query == f"key={URL_KEY}"
    assert upstream.requests_to("/search")[-1].query == f"key={URL_KEY}"
    redactor = known_secrets(Settings(data_dir=data_dir, cassettes_dir=tmp_path / "cassettes"), Config())
    assert redactor.knows(URL_KEY)

    earlier = tmp_path / "earlier"
    write_earlier_data_dir(earlier, upstream_url)
    vault = Vault(load_fernet(earlier))
    row = earlier_connection(vault, "ec_gemini", 4, chat_connection(upstream_url, name="gemini", url=url))
    with closing(sqlite3.connect(earlier / "proxy.db")) as db, db:
        db.execute("INSERT INTO connections VALUES (?, ?, ?, ?, ?, ?, ?, ?)", row)
    assert URL_KEY.encode() in database_bytes(earlier)
    with running_proxy(tmp_path, data_dir=earlier, record_mode="off") as proxy, httpx.Client(base_url=proxy.url) as c:
        assert URL_KEY.encode() not in database_bytes(earlier)  # migrated sealed
        assert c.get("/endpointConnections/ec_gemini").json()["url"] == f"{upstream_url}/chat?key=••••••••"
        assert c.post("/endpointConnections/testConnection", json={"id": "ec_gemini"}).json()["success"]
    assert upstream.requests_to("/chat")[-1].query == f"key={URL_KEY}"
