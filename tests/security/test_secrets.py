"""No credential in an API response, a log line or the database files — even when the upstream echoes it."""

from __future__ import annotations

import base64
import logging
import os
import socket
import stat
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from proxy.security.log_scrubbing import install_log_redaction
from proxy.security.redaction import Redactor
from proxy.security.vault import Vault, load_fernet
from proxy.storage.store import Store
from tests.conftest import TEST_PASSWORD, TEST_TOKEN, chat_connection, running_proxy
from tests.encodings import json_u_escaped, revealed
from tests.upstream import Reply, Upstream

HEADER_SECRET = "hdr-Secret-Value-9911"
SECRETS = (TEST_TOKEN, TEST_PASSWORD, HEADER_SECRET)


def test_no_secret_in_responses_logs_or_database(
    tmp_path: Path, upstream: Upstream, upstream_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    texts: list[str] = []
    with running_proxy(tmp_path) as proxy, httpx.Client(base_url=proxy.url) as client:
        bearer = client.post(
            "/endpointConnections", json=chat_connection(upstream_url, headers={"X-Api-Key": HEADER_SECRET})
        )
        basic = client.post(
            "/endpointConnections",
            json=chat_connection(upstream_url, name="basic", authType="BASIC", username="ann", password=TEST_PASSWORD),
        )
        texts += [bearer.text, basic.text]
        # The upstream echoes every credential back, in its body and a header.
        upstream.script(
            "/chat",
            Reply(json={"reply": f"your token is {TEST_TOKEN}", "seen": list(SECRETS)}, headers={"x-echo": TEST_TOKEN}),
        )
        for conn in (bearer.json(), basic.json()):
            texts.append(client.get(f"/endpointConnections/{conn['id']}").text)
            texts.append(client.post("/endpointConnections/testConnection", json={"id": conn["id"]}).text)
            texts.append(client.patch(f"/endpointConnections/{conn['id']}", json={"timeout": 20}).text)
        texts.append(client.get("/endpointConnections").text)
        upstream.script("/chat", Reply(status=500, json={"detail": f"bad token {TEST_TOKEN}"}))
        texts.append(client.post("/endpointConnections/testConnection", json={"id": bearer.json()["id"]}).text)
        assert upstream.requests_to("/chat")[0].headers["x-api-key"] == HEADER_SECRET  # it was really sent
    assert "your token is ••••••••" in texts[3]
    for secret in SECRETS:
        for text in texts:
            assert secret not in text
        assert secret not in caplog.text
        for path in (tmp_path / "data").rglob("*"):  # the database, its journal, the cassette cache
            assert path.is_dir() or secret.encode() not in path.read_bytes(), path


def test_key_file_is_private_and_secrets_survive_a_restart(
    tmp_path: Path, upstream: Upstream, upstream_url: str
) -> None:
    with running_proxy(tmp_path) as proxy, httpx.Client(base_url=proxy.url) as client:
        conn_id = client.post("/endpointConnections", json=chat_connection(upstream_url)).json()["id"]
    key_file = tmp_path / "data" / "secret.key"
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
    with running_proxy(tmp_path) as proxy, httpx.Client(base_url=proxy.url) as client:
        assert client.post("/endpointConnections/testConnection", json={"id": conn_id}).json()["success"]
    assert upstream.received[-1].headers["authorization"] == f"Bearer {TEST_TOKEN}"


def test_env_key_is_used_instead_of_a_key_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROXY_SECRET_KEY", "any passphrase works")
    vault = Vault(load_fernet(tmp_path))
    assert not (tmp_path / "secret.key").exists()
    token = vault.encrypt("s3cret")
    assert "s3cret" not in token and Vault(load_fernet(tmp_path)).decrypt(token) == "s3cret"


def test_redactor_masks_longest_first_and_ignores_values_too_short_to_mask(caplog: pytest.LogCaptureFixture) -> None:
    redactor = Redactor()
    redactor.register("test", ["abcdefgh", "abcdefgh-ijkl", "x", "abcdefg", None])
    assert redactor.redact("abcdefgh-ijkl abcdefgh abcdefg x") == "•••••••• •••••••• abcdefg x"
    assert "test holds a secret of 7 characters" in caplog.text  # the warning names no secret
    assert "abcdefg" not in caplog.text


def test_every_log_record_is_scrubbed_whichever_library_logs_it(caplog: pytest.LogCaptureFixture) -> None:
    redactor = Redactor()
    uninstall = install_log_redaction(redactor)
    try:
        redactor.register("test", ["log-secret-123"])
        logging.getLogger("some.library").warning("calling with %s", "log-secret-123")
        logging.getLogger("some.library").warning("echo %s", "".join(f"\\u{ord(c):04x}" for c in "log-secret-123"))
    finally:
        uninstall()
    assert "log-secret-123" not in caplog.text and "\\u006c" not in caplog.text
    assert caplog.text.count("••••••••") == 2


def test_a_short_secret_from_an_older_data_dir_still_loads_and_breaks_no_other_connection(
    tmp_path: Path, upstream: Upstream, upstream_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    with running_proxy(tmp_path) as proxy, httpx.Client(base_url=proxy.url) as client:
        old_id = client.post("/endpointConnections", json=chat_connection(upstream_url, name="old")).json()["id"]
        other_id = client.post("/endpointConnections", json=chat_connection(upstream_url, name="other")).json()["id"]
    # An older version accepted a 4-character token; store one as it would have.
    store = Store(tmp_path / "data", Vault(load_fernet(tmp_path / "data")))
    (sealed,) = store.call(lambda: store.db.execute("SELECT sealed FROM connections WHERE id = ?", [old_id]).fetchone())
    short = store.seal(store.unseal(sealed) | {"auth_token": '": "'})
    store.call(store.db.execute, "UPDATE connections SET sealed = ? WHERE id = ?", [short, old_id])
    store.close()
    upstream.script("/chat", Reply(json={"reply": "fine", "other": "value"}))
    caplog.set_level(logging.WARNING)
    with running_proxy(tmp_path) as proxy, httpx.Client(base_url=proxy.url) as client:
        assert f"connection {old_id} holds a secret of 4 characters: it cannot be masked reliably" in caplog.text
        for conn_id, token in ((other_id, TEST_TOKEN), (old_id, '": "')):
            answer = client.post("/endpointConnections/testConnection", json={"id": conn_id}).json()
            assert answer["success"] and answer["extractedOutput"] == {"output": "fine"}, answer
            assert upstream.received[-1].headers["authorization"] == f"Bearer {token}"


def test_proxy_serve_scrubs_every_log_line_of_its_own_secrets(
    tmp_path: Path, upstream_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import uvicorn
    import yaml
    from click.testing import CliRunner
    from starlette.testclient import TestClient

    from proxy.cli.main import main
    from proxy.server.listener import AnnouncingServer

    config = tmp_path / "proxy.yaml"
    config.write_text(
        yaml.safe_dump({"settings": {"allow_http": True}, "connections": [chat_connection(upstream_url)]})
    )
    escaped = "".join(f"\\u{ord(c):04x}" for c in TEST_TOKEN)

    def serving(server: uvicorn.Server, sockets: list[socket.socket] | None = None) -> None:
        for sock in sockets or ():
            sock.close()
        with TestClient(server.config.app):  # start-up loads the config's connection
            logging.getLogger("some.library").warning("upstream said %s", escaped)

    monkeypatch.setattr(AnnouncingServer, "run", serving)
    monkeypatch.setattr(logging.getLogger("httpx"), "level", logging.getLogger("httpx").level)
    factory = logging.getLogRecordFactory()
    try:
        args = ["serve", "--config", str(config), "--port", "0", "--data-dir", str(tmp_path / "d")]
        args += ["--cassettes", str(tmp_path / "c")]
        result = CliRunner().invoke(main, args, catch_exceptions=False)
    finally:
        logging.setLogRecordFactory(factory)  # the process is pytest's, not the server's
    assert result.exit_code == 0, result.output
    assert "upstream said ••••••••" in caplog.text and escaped not in caplog.text


def test_a_config_value_to_mask_that_is_too_short_stops_start_up(tmp_path: Path) -> None:
    from proxy.config.file import Config
    from proxy.config.settings import Settings
    from proxy.errors import ConfigError
    from proxy.server.runtime import Runtime

    config = Config(settings={"redact_values": ["acct-99881", "x-1"]})
    with pytest.raises(ConfigError, match=r"settings\.redact_values\[1\]: is 3 characters long"):
        Runtime(Settings(data_dir=tmp_path / "d", cassettes_dir=tmp_path / "c"), config)


def leaky_error(secret: str) -> RuntimeError:
    """An exception whose message holds `secret` as it is and as the encoded forms the redactor knows, chained
    to one whose args hold it too (a traceback prints both)."""
    forms = [secret, json_u_escaped(secret), quote(secret, safe=""), base64.b64encode(secret.encode()).decode()]
    try:
        raise ValueError("credential", f"Bearer {secret}")
    except ValueError as cause:
        error = RuntimeError(f"broke on {' '.join(forms)}")
        error.__cause__ = cause
        return error


def assert_logged_whole_and_scrubbed(log_text: str, raised_in: str) -> None:
    assert "Traceback (most recent call last)" in log_text and f"in {raised_in}" in log_text, log_text
    assert "RuntimeError: broke on" in log_text and "ValueError:" in log_text  # the chain, to its cause
    assert revealed(TEST_TOKEN, log_text) == [], log_text


def test_a_call_failing_inside_the_proxy_is_logged_with_its_traceback_scrubbed(
    tmp_path: Path, upstream_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    def broken_transport(request: httpx.Request) -> httpx.Response:
        raise leaky_error(TEST_TOKEN)

    caplog.set_level(logging.ERROR)
    with running_proxy(tmp_path, transport=httpx.MockTransport(broken_transport)) as proxy:
        uninstall = install_log_redaction(proxy.runtime.redactor)  # as `proxy serve` does
        try:
            with httpx.Client(base_url=proxy.url) as client:
                conn_id = client.post("/endpointConnections", json=chat_connection(upstream_url)).json()["id"]
                tested = client.post("/endpointConnections/testConnection", json={"id": conn_id}).json()
        finally:
            uninstall()
    assert not tested["success"] and "the call failed inside the proxy" in str(tested), tested
    assert "a call failed inside the proxy" in caplog.text
    assert_logged_whole_and_scrubbed(caplog.text, "broken_transport")


def test_an_unexpected_error_in_a_route_is_logged_with_its_traceback_scrubbed(
    tmp_path: Path, upstream_url: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from proxy.server.api import galtea

    def broken_query(request: Any, name: str) -> list[str]:
        raise leaky_error(TEST_TOKEN)

    caplog.set_level(logging.ERROR)
    with running_proxy(tmp_path) as proxy:
        uninstall = install_log_redaction(proxy.runtime.redactor)
        try:
            with httpx.Client(base_url=proxy.url) as client:
                assert client.post("/endpointConnections", json=chat_connection(upstream_url)).status_code == 201
                monkeypatch.setattr(galtea, "query_list", broken_query)
                listed = client.get("/endpointConnections")
        finally:
            uninstall()
    assert listed.status_code == 500 and listed.json() == {"message": "internal error; the server log has the details"}
    assert "unexpected error on GET /endpointConnections" in caplog.text
    assert_logged_whole_and_scrubbed(caplog.text, "broken_query")


async def test_a_failed_queued_write_is_logged_with_its_traceback_scrubbed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    redactor = Redactor()
    redactor.register("test", [TEST_TOKEN])
    store = Store(tmp_path / "data", Vault(load_fernet(tmp_path / "data")))

    def broken_write() -> None:
        raise leaky_error(TEST_TOKEN)

    uninstall = install_log_redaction(redactor)
    try:
        store.enqueue(broken_write)
        await store.drain()
    finally:
        uninstall()
        store.close()
    assert "a queued database write failed" in caplog.text
    assert_logged_whole_and_scrubbed(caplog.text, "broken_write")
