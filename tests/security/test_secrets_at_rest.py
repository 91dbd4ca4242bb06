"""The data dir against someone who reads it: another local user, or whoever gets a copy of it.

A passphrase in PROXY_SECRET_KEY is stretched with scrypt and a salt of the data dir's own, so a stolen
database costs a guesser scrypt per guess and per data dir; a data dir sealed with the old unsalted SHA-256
still opens, and is sealed again with the new key. The data dir is 0700 and every file in it 0600.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import shutil
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from proxy.config.file import Config
from proxy.config.settings import MASK, Settings
from proxy.security.vault import load_fernet
from proxy.server.runtime import known_secrets
from tests.conftest import TEST_TOKEN, chat_connection, running_proxy
from tests.helpers import chat_config, run_session
from tests.upstream import Reply, Upstream

PASSPHRASE = "correct horse battery staple"
SERVICE_TOKEN = "svc-Token-at-rest-77"


@pytest.fixture
def usual_umask() -> Iterator[None]:
    """The umask most systems give users (022): a file made without care is readable by every local user."""
    was = os.umask(0o022)
    yield
    os.umask(was)


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def unsalted_sha256_key(passphrase: str) -> bytes:
    """How a passphrase became the key before this version, written out here as the old code did it."""
    return base64.urlsafe_b64encode(hashlib.sha256(passphrase.encode()).digest())


def scrypt_key(passphrase: str, salt: bytes) -> bytes:
    """The key the documented derivation gives: scrypt n=2**15, r=8, p=1, 32 bytes."""
    return base64.urlsafe_b64encode(Scrypt(salt=salt, length=32, n=2**15, r=8, p=1).derive(passphrase.encode()))


def opens(key: bytes, token: str) -> bool:
    try:
        Fernet(key).decrypt(token.encode())
    except InvalidToken:
        return False
    return True


def sealed_tokens(data_dir: Path) -> dict[str, str]:
    """Every sealed column of the database, deleted rows included: {table/id: token}."""
    conn = sqlite3.connect(data_dir / "proxy.db")
    try:
        return {
            f"{table}/{row_id}": token
            for table in ("connections", "connectors")
            for row_id, token in conn.execute(f"SELECT id, sealed FROM {table} WHERE sealed IS NOT NULL")
        }
    finally:
        conn.close()


def test_a_stolen_database_costs_a_guesser_scrypt_per_data_dir_not_one_sha256(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, usual_umask: None
) -> None:
    """Offline guessing: the passphrase's key is scrypt with a random salt kept 0600 in the data dir, so a
    guess is neither one SHA-256 nor good for two data dirs that share the passphrase."""
    monkeypatch.setenv("PROXY_SECRET_KEY", PASSPHRASE)
    one, two = tmp_path / "one", tmp_path / "two"
    token = load_fernet(one).encrypt(b"s3cret").decode()
    salt = (one / "secret.salt").read_bytes()
    assert len(salt) == 16 and mode_of(one / "secret.salt") == 0o600 and mode_of(one) == 0o700
    assert opens(scrypt_key(PASSPHRASE, salt), token)
    assert not opens(unsalted_sha256_key(PASSPHRASE), token)
    assert not (one / "secret.key").exists()
    # The same passphrase in another data dir: another salt, another key.
    assert (two / "secret.salt").exists() is False
    other = load_fernet(two).encrypt(b"s3cret").decode()
    assert (two / "secret.salt").read_bytes() != salt
    assert not opens(scrypt_key(PASSPHRASE, salt), other)
    # A restart keeps the salt, so the key opens what it sealed before.
    assert load_fernet(one).decrypt(token.encode()) == b"s3cret"
    assert (one / "secret.salt").read_bytes() == salt


def test_a_damaged_salt_file_is_a_clear_error_naming_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from proxy.errors import ConfigError

    monkeypatch.setenv("PROXY_SECRET_KEY", PASSPHRASE)
    data = tmp_path / "data"
    data.mkdir()
    (data / "secret.salt").write_bytes(b"short")
    with pytest.raises(ConfigError, match=r"secret\.salt holds 5 bytes, not the 16 of a salt"):
        load_fernet(data)


def test_a_data_dir_sealed_with_the_old_unsalted_sha256_key_opens_and_is_sealed_again(
    tmp_path: Path, upstream: Upstream, upstream_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Migration: secrets an earlier version sealed with the passphrase's bare SHA-256 still work, and after one
    start-up every one of them (a deleted connection's too) opens with the scrypt key only; the old tokens are
    gone from the database file and its WAL, so a guesser has no weak token left to try passphrases on."""
    data = tmp_path / "data"
    upstream.handle("/search", lambda r: Reply(json={"results": [{"id": "d1", "text": "found"}]}))
    # The data dir as an earlier version left it: its key was sha256(passphrase), which is a valid Fernet key.
    monkeypatch.setenv("PROXY_SECRET_KEY", unsalted_sha256_key(PASSPHRASE).decode())
    with running_proxy(tmp_path, record_mode="off") as proxy, httpx.Client(base_url=proxy.url) as client:
        kept = client.post("/endpointConnections", json=chat_connection(upstream_url)).json()["id"]
        gone = client.post("/endpointConnections", json=chat_connection(upstream_url, name="gone")).json()["id"]
        assert client.delete(f"/endpointConnections/{gone}").status_code == 200
        connector = {"name": "kb", "url": f"{upstream_url}/search", "service_auth": {"token": SERVICE_TOKEN}}
        assert client.post("/v1/connectors", json=connector).status_code == 200
    old_tokens = sealed_tokens(data)
    assert set(old_tokens) == {f"connections/{kept}", f"connections/{gone}", "connectors/kb"}
    assert all(opens(unsalted_sha256_key(PASSPHRASE), t) for t in old_tokens.values())
    assert not (data / "secret.salt").exists()
    copy = tmp_path / "copy"
    shutil.copytree(data, copy)

    monkeypatch.setenv("PROXY_SECRET_KEY", PASSPHRASE)
    # `proxy cassettes verify --data-dir` reads the old data dir's secrets.
    redactor = known_secrets(Settings(data_dir=copy, cassettes_dir=tmp_path / "cassettes"), Config())
    assert redactor.redact(f"a {TEST_TOKEN} b {SERVICE_TOKEN}") == f"a {MASK} b {MASK}"
    # The server opens it and uses the stored credentials as they were.
    upstream.clear()
    upstream.handle("/search", lambda r: Reply(json={"results": [{"id": "d1", "text": "found"}]}))
    with running_proxy(tmp_path, record_mode="off") as proxy, httpx.Client(base_url=proxy.url) as client:
        tested = client.post("/endpointConnections/testConnection", json={"id": kept}).json()
        assert tested["success"] and tested["statusCode"] == 200, tested
        searched = client.post("/v1/connectors/kb/search", json={"query": "refunds"})
        assert searched.status_code == 200, searched.text
    assert upstream.requests_to("/chat")[-1].headers["authorization"] == f"Bearer {TEST_TOKEN}"
    assert upstream.requests_to("/search")[-1].headers["authorization"] == SERVICE_TOKEN
    # Afterwards the new key alone opens every stored secret; the old one opens none, and no old token is left.
    for where in (data, copy):
        new_key = scrypt_key(PASSPHRASE, (where / "secret.salt").read_bytes())
        tokens = sealed_tokens(where)
        assert set(tokens) == set(old_tokens)
        assert all(opens(new_key, t) and not opens(unsalted_sha256_key(PASSPHRASE), t) for t in tokens.values())
        on_disk = b"".join(p.read_bytes() for p in where.glob("proxy.db*"))
        assert not any(old.encode() in on_disk for old in old_tokens.values()), where


def walk_modes(data_dir: Path) -> dict[str, int]:
    """Every folder and file under the data dir (itself included), with its permission bits."""
    found = {".": mode_of(data_dir)}
    for path in data_dir.rglob("*"):
        found[str(path.relative_to(data_dir))] = mode_of(path)
    return found


@pytest.mark.parametrize("key", ["key file", "passphrase"])
def test_no_other_local_user_can_read_the_data_dir(
    tmp_path: Path, upstream: Upstream, upstream_url: str, monkeypatch: pytest.MonkeyPatch, usual_umask: None, key: str
) -> None:
    """Another user on the machine reads `proxy.db` (sealed secrets, recorded answers, the flow log), its WAL, the
    key or the parse cache: after a recorded session, the data dir is 0700 and every file in it 0600."""
    if key == "passphrase":
        monkeypatch.setenv("PROXY_SECRET_KEY", PASSPHRASE)
    else:
        monkeypatch.delenv("PROXY_SECRET_KEY", raising=False)
    data = tmp_path / "data"
    with running_proxy(tmp_path, chat_config(upstream_url)) as proxy, httpx.Client(base_url=proxy.url) as client:
        turns = run_session(client, ["hello", "again"], testCaseId="tc-at-rest")
        assert [t["exchange"]["cassette"] for t in turns] == ["recorded", "recorded"]
        assert len(upstream.requests_to("/chat")) == 2
        running = walk_modes(data)
    closed = walk_modes(data)
    expected_files = {
        "proxy.db",
        "proxy.db-wal",
        "proxy.db-shm",
        "secret.salt" if key == "passphrase" else "secret.key",
    }
    assert expected_files <= set(running)
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
