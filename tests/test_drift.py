"""`proxy cassettes drift`: recorded requests re-sent live, answers compared in status and JSON shape, run as
a user runs it (the real command in a subprocess) against a real upstream whose answers change."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from proxy.config import load_config
from proxy.drift import Difference, shape_differences
from tests.conftest import TEST_TOKEN, running_proxy
from tests.helpers import post, proxy_cli
from tests.upstream import Received, Reply, Upstream

pytestmark = pytest.mark.e2e
RECORDED = {"reply": "hello", "model": None, "usage": {"total_tokens": 12}, "choices": [{"text": "hi"}]}


def test_shape_differences_name_each_path() -> None:
    live = {"reply": "other words", "model": "m-2", "usage": {"total_tokens": "12"}, "choices": [{"txt": "x"}]}
    found = [d.text() for d in shape_differences(RECORDED, live)]
    assert found == [
        "$.model: null → string",
        "$.usage.total_tokens: number → string",
        "$.choices[0].text: missing",
        "$.choices[0].txt: added",
    ]
    # Values that differ within their type, and lists that grew, are not drift.
    assert shape_differences(RECORDED, {**RECORDED, "reply": "bye", "choices": [{"text": "a"}, {"n": 1}]}) == []
    assert shape_differences({"a b": 1}, {"a b": 1.5, "ok": True}) == [Difference("$.ok", None, "boolean")]
    assert [d.text() for d in shape_differences({"a b": 1}, {"a b": "1"})] == ["$['a b']: number → string"]


def write_config(tmp_path: Path, upstream_url: str) -> Path:
    config = tmp_path / "proxy.yaml"
    config.write_text(
        "settings: {allow_http: true}\n"
        "connections:\n"
        "  - name: chat\n"
        "    product_id: p\n"
        "    type: CONVERSATION\n"
        f"    url: {upstream_url}/chat\n"
        "    auth_type: BEARER\n"
        "    auth_token: ${CHAT_TOKEN}\n"
        '    input_template: \'{"message": "{{ input.user_message }}"}\'\n'
        "    output_mapping: {output: $.reply}\n"
        "versions:\n"
        "  - {name: v1, product_id: p, conversation: chat}\n"
    )
    return config


def drift(tmp_path: Path, config: Path, *args: str) -> Any:
    common = ["--config", str(config), "--data-dir", str(tmp_path / "data"), "--cassettes", str(tmp_path / "cas")]
    return proxy_cli("cassettes", "drift", *args, *common)


@pytest.fixture(autouse=True)
def chat_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHAT_TOKEN", TEST_TOKEN)


def test_drift_reports_changed_shapes_and_update_rerecords(
    tmp_path: Path, upstream: Upstream, upstream_url: str
) -> None:
    answer: dict[str, Any] = {"json": RECORDED}
    upstream.handle("/chat", lambda received: Reply(json=answer["json"]))
    config = write_config(tmp_path, upstream_url)
    with running_proxy(tmp_path, load_config(config), data_dir=tmp_path / "data", cassettes_dir=tmp_path / "cas") as p:
        with httpx.Client(base_url=p.url) as client:
            assert client.post("/forward/chat/chat", json={"message": "hi"}).status_code == 200
            version = client.get("/versions").json()[0]["id"]
            session = post(client, "/sessions", {"versionId": version, "testCaseId": "tc-1"})
            post(client, f"/sessions/{session['id']}/turns", {"input": {"user_message": "hello"}})
            client.patch(f"/sessions/{session['id']}/finish", json={})
    forward_cassette = tmp_path / "cas" / "connections" / "chat.yaml"
    assert forward_cassette.exists() and (tmp_path / "cas" / "sessions" / "tc-1.yaml").exists()

    # The same shapes, other values: no drift.
    answer["json"] = {**RECORDED, "reply": "other words", "usage": {"total_tokens": 99}}
    upstream.received.clear()
    unchanged = drift(tmp_path, config)
    assert unchanged.returncode == 0, unchanged.stdout + unchanged.stderr
    assert "2 interactions: 0 drifted, 2 unchanged" in unchanged.stdout
    resent: list[Received] = upstream.requests_to("/chat")
    # Sent again with the connection's credential in place of the mask, the body as recorded.
    assert [r.headers["authorization"] for r in resent] == [f"Bearer {TEST_TOKEN}"] * 2
    assert sorted((r.json for r in resent), key=str) == sorted([{"message": "hi"}, {"message": "hello"}], key=str)

    # The upstream changes a key's type and adds a key.
    answer["json"] = {**RECORDED, "usage": {"total_tokens": "12"}, "system_fingerprint": "fp_1"}
    drifted = drift(tmp_path, config, "connections/chat")
    assert drifted.returncode == 1, drifted.stdout + drifted.stderr
    assert "$.usage.total_tokens: number → string" in drifted.stdout
    assert "$.system_fingerprint: added" in drifted.stdout
    assert "1 interactions: 1 drifted" in drifted.stdout

    report = drift(tmp_path, config, "--json")
    assert report.returncode == 1
    parsed = json.loads(report.stdout)
    assert parsed["summary"] == {
        "cassettes": 2,
        "interactions": 2,
        "drifted": 2,
        "unchanged": 0,
        "errors": 0,
        "updated": 0,
    }
    changes = {(d["path"], d["change"]) for i in parsed["interactions"] for d in i["differences"]}
    assert changes == {("$.usage.total_tokens", "changed"), ("$.system_fingerprint", "added")}

    before = forward_cassette.read_text()
    updated = drift(tmp_path, config, "--update")
    assert updated.returncode == 0, updated.stdout + updated.stderr
    assert "2 re-recorded" in updated.stdout
    after = forward_cassette.read_text()
    assert after != before and "fp_1" in after and TEST_TOKEN not in after
    recorded = yaml.safe_load(after)["interactions"]
    assert json.loads(recorded[0]["response"]["body"]["string"])["usage"] == {"total_tokens": "12"}
    assert recorded[0]["request"] == yaml.safe_load(before)["interactions"][0]["request"]  # still matches replays
    again = drift(tmp_path, config)
    assert again.returncode == 0, again.stdout
    assert "0 drifted, 2 unchanged" in again.stdout


def test_a_status_change_is_drift_and_unknown_names_fail(tmp_path: Path, upstream: Upstream, upstream_url: str) -> None:
    upstream.script("/chat", Reply(json=RECORDED))
    config = write_config(tmp_path, upstream_url)
    with running_proxy(tmp_path, load_config(config), data_dir=tmp_path / "data", cassettes_dir=tmp_path / "cas") as p:
        with httpx.Client(base_url=p.url) as client:
            assert client.post("/forward/chat/chat", json={}).status_code == 200
    upstream.script("/chat", Reply(status=404, text="gone"))
    result = drift(tmp_path, config, "--json")
    assert result.returncode == 1
    (item,) = json.loads(result.stdout)["interactions"]
    assert item["outcome"] == "drifted"
    assert item["differences"] == [
        {"path": "status", "change": "changed", "recorded": "200", "live": "404"},
        {"path": "$", "change": "changed", "recorded": "JSON", "live": "not JSON"},
    ]
    missing = drift(tmp_path, config, "connections/nope")
    assert missing.returncode == 1 and "no cassette 'connections/nope'" in missing.stderr


def test_a_connector_cassette_is_re_sent_with_the_connector_s_stored_token(
    tmp_path: Path, upstream: Upstream, upstream_url: str
) -> None:
    answer: dict[str, Any] = {"json": {"results": [{"text": "refunds take 5 days", "score": 1}]}}
    upstream.handle("/search", lambda received: Reply(json=answer["json"]))
    config = tmp_path / "proxy.yaml"
    config.write_text(
        "settings: {allow_http: true}\n"
        "connectors:\n"
        f"  - {{name: kb, url: '{upstream_url}/search', service_auth: {{type: bearer, token: '${{CHAT_TOKEN}}'}}}}\n"
    )
    with running_proxy(tmp_path, load_config(config), data_dir=tmp_path / "data", cassettes_dir=tmp_path / "cas") as p:
        with httpx.Client(base_url=p.url) as client:
            assert client.post("/v1/connectors/kb/search", json={"query": "refunds"}).status_code == 200
    upstream.received.clear()

    answer["json"] = {"results": [{"text": "refunds take 5 days", "score": "1"}]}
    drifted = drift(tmp_path, config, "connectors/kb")
    assert drifted.returncode == 1, drifted.stdout + drifted.stderr
    assert "$.results[0].score: number → string" in drifted.stdout
    # (the other request is the connector's registration query, sent when the config is loaded)
    resent = [r for r in upstream.requests_to("/search") if r.json == {"query": "refunds"}]
    assert [r.headers["authorization"] for r in resent] == [f"Bearer {TEST_TOKEN}"]


def test_a_url_key_masked_in_the_cassette_is_re_sent_as_the_connection_holds_it(
    tmp_path: Path, upstream: Upstream, upstream_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Gemini-style `?key=` is recorded masked (a cassette is shared; the key is not); a drift check re-sends
    the request with the key the connection holds, so the live answer is compared, not a 400 for `••••••••`."""
    key = "AIzaSyTESTSECRET0123456789"
    monkeypatch.setenv("GEMINI_KEY", key)
    upstream.handle("/v1/gen", lambda r: Reply(json=RECORDED) if r.query == f"key={key}" else Reply(status=400))
    config = tmp_path / "proxy.yaml"
    config.write_text(
        write_config(tmp_path, upstream_url)
        .read_text()
        .replace(f"{upstream_url}/chat", f"'{upstream_url}/v1/gen?key=${{GEMINI_KEY}}'")
    )
    with running_proxy(tmp_path, load_config(config), data_dir=tmp_path / "data", cassettes_dir=tmp_path / "cas") as p:
        with httpx.Client(base_url=p.url) as client:
            version = client.get("/versions").json()[0]["id"]
            session = post(client, "/sessions", {"versionId": version, "testCaseId": "tc-key"})
            post(client, f"/sessions/{session['id']}/turns", {"input": {"user_message": "hello"}})
            client.patch(f"/sessions/{session['id']}/finish", json={})
    cassette = (tmp_path / "cas" / "sessions" / "tc-key.yaml").read_text()
    (recorded,) = yaml.safe_load(cassette)["interactions"]
    assert key not in cassette and recorded["request"]["uri"] == f"{upstream_url}/v1/gen?key=••••••••"
    upstream.received.clear()

    checked = drift(tmp_path, config, "sessions/tc-key", "--json")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    (interaction,) = json.loads(checked.stdout)["interactions"]
    assert interaction["differences"] == [] and interaction["error"] is None, interaction
    assert [r.query for r in upstream.requests_to("/v1/gen")] == [f"key={key}"]
