"""`proxy cassettes drift`: recorded requests re-sent live, answers compared in status and JSON shape, run as
a user runs it (the real command in a subprocess) against a real upstream whose answers change."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from proxy.cassettes.cassette import Cassette, make_interaction
from proxy.cassettes.json_shapes import Difference, shape_differences
from proxy.cassettes.matching import MatchRules
from proxy.config.file import load_config
from proxy.config.settings import MASK
from proxy.connectors.search import REGISTRATION_QUERY
from tests.conftest import TEST_TOKEN, running_proxy
from tests.helpers import post, proxy_cli
from tests.upstream import Received, Reply, Upstream

pytestmark = pytest.mark.e2e
RECORDED = {"reply": "hello", "model": None, "usage": {"total_tokens": 12}, "choices": [{"text": "hi"}]}
OTHER_TOKEN = "tok-OtherConnection-7777"
HI = b'{"message": "hi"}'
PLANTED = {**RECORDED, "results": []}  # what planted cassettes answer: a search answer too
ANOTHER_ORIGIN = "not checked: the recording points at another origin ("


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
    monkeypatch.setenv("OTHER_TOKEN", OTHER_TOKEN)


def connections_config(tmp_path: Path, *connections: tuple[str, str, str]) -> Path:
    """A config of (name, url, token variable) bearer connections."""
    config = tmp_path / "proxy.yaml"
    lines = ["settings: {allow_http: true}", "connections:"]
    for name, url, token in connections:
        lines.append(
            f"  - {{name: {name}, product_id: p, type: CONVERSATION, url: '{url}', auth_type: BEARER,"
            f" auth_token: '${{{token}}}', input_template: '{{{{ input.user_message }}}}',"
            " output_mapping: {output: $.reply}}"
        )
    config.write_text("\n".join(lines) + "\n")
    return config


def plant(tmp_path: Path, name: str, session_key: str, *requests: tuple[str, bytes]) -> Path:
    """A cassette file as anyone can commit one: POSTs of (uri, body), their Authorization masked, and a
    session key of its choosing."""
    path = tmp_path / "cas" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    headers = {"Content-Type": "application/json", "Authorization": MASK}
    answer = json.dumps(PLANTED).encode()
    recorded = [
        make_interaction(
            "POST",
            uri,
            body,
            headers,
            200,
            "OK",
            [("Content-Type", "application/json")],
            answer,
            {"id": f"planted-{index}", "session_key": session_key},
        )
        for index, (uri, body) in enumerate(requests)
    ]
    path.write_text(Cassette(name, path, MatchRules()).serialize(recorded))
    return path


def outcomes(result: Any) -> dict[str, str | None]:
    """Each interaction (`<cassette> #<index>`): its error, or None when it was re-sent."""
    assert result.stdout.startswith("{"), result.stdout + result.stderr
    return {f"{i['cassette']} #{i['index']}": i["error"] for i in json.loads(result.stdout)["interactions"]}


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


def test_connection_cassette_pointing_at_another_origin_never_gets_the_token(
    tmp_path: Path, upstream_url: str, attacker: tuple[Upstream, str]
) -> None:
    """Attack: a committed `connections/chat.yaml` whose request URI is another origin (the attacker's port) makes
    a nightly drift job re-send it with chat's real token. Nothing reaches that origin, `--update` included."""
    listener, attacker_url = attacker
    listener.script("/steal", Reply(json={"drifted": True}))
    config = connections_config(tmp_path, ("chat", f"{upstream_url}/chat", "CHAT_TOKEN"))
    cassette = plant(tmp_path, "connections/chat", "chat", (f"{attacker_url}/steal", HI))
    before = cassette.read_bytes()

    result = drift(tmp_path, config, "--update", "--json")
    assert result.returncode == 1, result.stdout + result.stderr
    assert listener.received == []
    error = outcomes(result)["connections/chat #0"]
    assert error == f"{ANOTHER_ORIGIN}{attacker_url}; connection 'chat' sends its calls to {upstream_url})", error
    assert cassette.read_bytes() == before  # nothing re-recorded from it
    assert TEST_TOKEN not in result.stdout + result.stderr


def test_the_cassette_file_not_its_session_key_chooses_the_connection(
    tmp_path: Path, upstream: Upstream, upstream_url: str
) -> None:
    """Attack: a committed cassette whose `proxy.session_key` names another stored connection borrows that
    connection's token. The file `connections/chat.yaml` is re-sent with chat's token only, and a file named
    after no connection is not re-sent at all."""
    upstream.script("/chat", Reply(json=PLANTED))
    config = connections_config(
        tmp_path, ("chat", f"{upstream_url}/chat", "CHAT_TOKEN"), ("other", f"{upstream_url}/other", "OTHER_TOKEN")
    )
    plant(tmp_path, "connections/chat", "other", (f"{upstream_url}/chat", HI))
    plant(tmp_path, "connections/nobody", "other", (f"{upstream_url}/other", HI))

    result = drift(tmp_path, config, "--json")
    assert outcomes(result) == {
        "connections/chat #0": None,
        "connections/nobody #0": (
            "not checked: no stored connection owns this cassette (none is named after it, nor an --upstream NAME=URL)"
        ),
    }, result.stdout + result.stderr
    assert [r.headers["authorization"] for r in upstream.received] == [f"Bearer {TEST_TOKEN}"]
    assert [r.path for r in upstream.received] == ["/chat"]


@pytest.mark.parametrize(
    "connection_url",
    ["http://127.0.0.1", "http://127.0.0.1{# the template decides the port #}/chat"],
    ids=["port-80", "templated-origin"],
)
def test_session_cassette_on_a_url_prefix_of_a_connection_never_gets_its_token(
    tmp_path: Path, attacker: tuple[Upstream, str], connection_url: str
) -> None:
    """Attack: a committed `sessions/` cassette at `http://127.0.0.1:<attacker port>/…` starts with the text of a
    connection's URL (`http://127.0.0.1`, port 80, or a URL whose template decides its origin), so a string-prefix
    match picked that connection and sent its token to the attacker. Origins are compared: nothing is sent."""
    listener, attacker_url = attacker
    config = connections_config(tmp_path, ("chat", connection_url, "CHAT_TOKEN"))
    plant(tmp_path, "sessions/tc-1", "tc-1", (f"{attacker_url}/chat", HI))

    result = drift(tmp_path, config, "--json")
    assert result.returncode == 1, result.stdout + result.stderr
    assert listener.received == []
    assert outcomes(result) == {
        "sessions/tc-1 #0": f"{ANOTHER_ORIGIN}{attacker_url}; no stored connection sends its calls there)"
    }


def test_session_cassette_on_an_origin_of_two_credentials_is_not_sent(
    tmp_path: Path, upstream: Upstream, upstream_url: str
) -> None:
    """Attack: two connections on one origin hold different tokens; a committed `sessions/` cassette's URL path
    picked which token went. Only when every connection there sends the same credentials is it re-sent."""
    upstream.script("/other", Reply(json=PLANTED))
    two_tokens = connections_config(
        tmp_path, ("chat", f"{upstream_url}/chat", "CHAT_TOKEN"), ("other", f"{upstream_url}/other", "OTHER_TOKEN")
    )
    plant(tmp_path, "sessions/tc-1", "tc-1", (f"{upstream_url}/other", HI))

    result = drift(tmp_path, two_tokens, "--json")
    assert outcomes(result) == {
        "sessions/tc-1 #0": f"not checked: connections 'chat' and 'other' send their calls to {upstream_url} with "
        "different credentials, and nothing but the cassette says whose recording it is"
    }, result.stdout + result.stderr
    assert upstream.received == []

    one_token = connections_config(
        tmp_path, ("chat", f"{upstream_url}/chat", "CHAT_TOKEN"), ("other", f"{upstream_url}/other", "CHAT_TOKEN")
    )
    result = drift(tmp_path, one_token, "--json")
    assert outcomes(result) == {"sessions/tc-1 #0": None}, result.stdout + result.stderr
    assert [(r.path, r.headers["authorization"]) for r in upstream.received] == [("/other", f"Bearer {TEST_TOKEN}")]


def test_connector_cassette_pointing_at_another_origin_never_gets_the_connector_s_token(
    tmp_path: Path, upstream: Upstream, upstream_url: str, attacker: tuple[Upstream, str]
) -> None:
    """Attack: a committed `connectors/kb.yaml` that holds, after kb's registration query, a search sent to the
    attacker's port; and a `connectors/other.yaml` whose session key names `kb`: neither search is re-sent with
    kb's stored token (the registration query, on kb's own origin, still is)."""
    upstream.script("/search", Reply(json={"results": []}))
    listener, attacker_url = attacker
    config = tmp_path / "proxy.yaml"
    config.write_text(
        "settings: {allow_http: true}\n"
        "connectors:\n"
        f"  - {{name: kb, url: '{upstream_url}/search', service_auth: {{type: bearer, token: '${{CHAT_TOKEN}}'}}}}\n"
    )
    registration = json.dumps({"query": REGISTRATION_QUERY}).encode()
    plant(tmp_path, "connectors/kb", "kb", (f"{upstream_url}/search", registration), (f"{attacker_url}/search", HI))
    plant(tmp_path, "connectors/other", "kb", (f"{upstream_url}/search", HI))

    result = drift(tmp_path, config, "--json")
    assert outcomes(result) == {
        "connectors/kb #0": None,
        "connectors/kb #1": f"{ANOTHER_ORIGIN}{attacker_url}; connector 'kb' sends its calls to {upstream_url})",
        "connectors/other #0": "not checked: no stored connector owns this cassette (none is named after it)",
    }, result.stdout + result.stderr
    assert listener.received == []
    resent = upstream.requests_to("/search")  # (the registration at config load replays from the cassette)
    assert [(r.json, r.headers["authorization"]) for r in resent] == [
        ({"query": REGISTRATION_QUERY}, f"Bearer {TEST_TOKEN}")
    ]


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
