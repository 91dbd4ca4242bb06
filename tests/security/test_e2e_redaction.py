"""An upstream that echoes the token it received, in every encoding: the token is read nowhere afterwards.

A real proxy server and the real upstream test server (its `/echo-auth/<encoding>` route). For each
encoding the canary must not be readable (plain, JSON-decoded, percent-decoded, base64-decoded at any
alignment, UTF-16 decoded) in the turn answer, testConnection's answers, the inspector's pages, the SQLite
files, the cassette files, the captured log output or `proxy check`'s output; and `proxy cassettes
verify` must report one planted in a cassette.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import yaml

from proxy.cassettes.cassette import Cassette, make_interaction
from proxy.cassettes.files import write_cassette
from proxy.cassettes.matching import MatchRules
from proxy.config.file import load_config
from proxy.config.settings import MASK
from proxy.security.log_scrubbing import install_log_redaction
from tests.conftest import NoNetwork, RunningProxy, chat_connection, running_proxy
from tests.encodings import ECHOES, json_u_escaped, revealed
from tests.helpers import chat_config_data, invoke, post, run_session
from tests.upstream import Received, Reply, Upstream

pytestmark = pytest.mark.e2e


def canary(encoding: str, kind: str = "stored") -> str:
    # Quotes, a backslash, a slash, a plus and spaces: each has a meaning in some encoding.
    return f'cAnary/{encoding}+{kind} "q" \\ end'


@contextlib.contextmanager
def proxy_logging_everything(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> Iterator[tuple[RunningProxy, httpx.Client]]:
    """A proxy in `tmp_path` and a client of it, every log line captured, redacted as `proxy serve` has them."""
    caplog.set_level(logging.DEBUG)
    with running_proxy(tmp_path) as proxy, httpx.Client(base_url=proxy.url, timeout=30) as client:
        uninstall = install_log_redaction(proxy.runtime.redactor)
        try:
            yield proxy, client
        finally:
            uninstall()


def stored_files(tmp_path: Path) -> dict[str, bytes]:
    """Every file the proxy wrote under `tmp_path`'s data and cassette folders, by its path from `tmp_path`."""
    folders = (tmp_path / "data", tmp_path / "cassettes")
    return {f"file {p.relative_to(tmp_path)}": p.read_bytes() for f in folders for p in f.rglob("*") if p.is_file()}


def test_an_echoed_token_is_masked_in_every_encoding_everywhere(
    tmp_path: Path,
    upstream: Upstream,
    upstream_url: str,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    seen: dict[str, str | bytes] = {}
    with proxy_logging_everything(tmp_path, caplog) as (proxy, client):
        for encoding in ECHOES:
            url = f"{upstream_url}/echo-auth/{encoding}"
            conn = post(
                client,
                "/endpointConnections",
                chat_connection(upstream_url, name=f"echo-{encoding}", url=url, authToken=canary(encoding)),
            )
            version = post(
                client,
                "/versions",
                {"productId": "prod-1", "name": f"v-{encoding}", "conversationEndpointConnectionId": conn["id"]},
            )
            session = post(client, "/sessions", {"versionId": version["id"], "testCaseId": f"tc-{encoding}"})
            turn = client.post(f"/sessions/{session['id']}/turns", json={"input": {"user_message": "hi"}})
            assert turn.status_code == 201 and MASK in turn.text  # the echo came back, masked
            seen[f"turn answer ({encoding})"] = turn.text
            tested = client.post("/endpointConnections/testConnection", json={"id": conn["id"]})
            seen[f"testConnection ({encoding})"] = tested.text
            throwaway = canary(encoding, "throwaway")
            fields = chat_connection(upstream_url, name=f"try-{encoding}", url=url, authToken=throwaway)
            tried = client.post("/endpointConnections/testConnection", json=fields)
            assert tried.status_code == 200 and MASK in tried.text
            seen[f"throwaway testConnection ({encoding})"] = tried.text
            assert not proxy.runtime.redactor.knows(throwaway)  # gone once the call is over
            seen[f"inspector session ({encoding})"] = client.get(f"/inspector/sessions/{session['id']}").text
            seen[f"inspector connection ({encoding})"] = client.get(f"/inspector/connections/{conn['id']}").text
        seen["inspector overview"] = client.get("/").text
        seen["inference results"] = client.get("/inferenceResults").text
    received = {r.headers["authorization"] for r in upstream.received}
    assert f"Bearer {canary('json-escaped')}" in received  # the real token went to the upstream
    seen["log output"] = caplog.text
    seen.update(stored_files(tmp_path))
    assert any(name.endswith(".yaml") for name in seen)
    dirs = ["--data-dir", str(tmp_path / "data"), "--cassettes", str(tmp_path / "cassettes")]
    for encoding in ECHOES:
        code, output = invoke("check", f"echo-{encoding}", *dirs)
        assert MASK in output, output  # the echo came back, masked
        seen[f"proxy check ({encoding})"] = output
    code, output = invoke("cassettes", "verify", *dirs)
    assert (code, output.splitlines()[-1].endswith(" 0 problems")) == (0, True), output

    leaks = {
        (where, secret, tuple(readings))
        for secret in [canary(e) for e in ECHOES] + [canary(e, "throwaway") for e in ECHOES]
        for where, text in seen.items()
        if (readings := revealed(secret, text))
    }
    assert not leaks


def plant(cassettes: Path, secret_of: dict[str, str]) -> None:
    """A cassette whose responses echo each secret in its encoding, as an unmasked recording would hold."""
    plant_bodies(cassettes, [ECHOES[encoding](secret) for encoding, secret in secret_of.items()])


def plant_bodies(cassettes: Path, bodies: list[bytes]) -> None:
    """A cassette whose responses are these bodies, as they came."""
    path = cassettes / "planted.yaml"
    cassette = Cassette("planted", path, MatchRules())
    for number, body in enumerate(bodies):
        cassette.add(
            make_interaction(
                "POST",
                f"https://up.test/{number}",
                b"{}",
                {},
                200,
                "OK",
                [("content-type", "application/json")],
                body,
                {},
            )
        )
    cassettes.mkdir(parents=True, exist_ok=True)
    write_cassette(path, cassette.serialize(), cassette.interactions)


def test_verify_finds_an_encoded_secret_it_learns_from_the_data_dir_or_the_config(
    tmp_path: Path, upstream_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    stored = {encoding: canary(encoding) for encoding in ECHOES}
    with running_proxy(tmp_path) as proxy, httpx.Client(base_url=proxy.url) as client:
        for encoding, secret in stored.items():
            post(client, "/endpointConnections", chat_connection(upstream_url, name=encoding, authToken=secret))
    plant(tmp_path / "planted", stored)
    data_dir = ["--data-dir", str(tmp_path / "data")]

    code, output = invoke("cassettes", "verify", "--cassettes", str(tmp_path / "planted"), *data_dir)
    assert code == 1, output
    for number in range(len(stored)):
        assert f"planted #{number}: response body holds a credential this server knows" in output
    assert not any(revealed(secret, output) for secret in stored.values())  # the report names no secret

    # Without a data dir (the default one is empty here), the config's secrets are looked for.
    monkeypatch.setenv("ECHO_TOKEN", canary("percent"))
    config = tmp_path / "proxy.yaml"
    connection = chat_connection(upstream_url, name="c", authToken="${ECHO_TOKEN}")
    config.write_text(yaml.safe_dump({"settings": {"allow_http": True}, "connections": [connection]}))
    code, output = invoke("cassettes", "verify", "--cassettes", str(tmp_path / "planted"), "--config", str(config))
    assert code == 1 and output.count("holds a credential this server knows") == 1, output
    code, output = invoke("cassettes", "verify", "--cassettes", str(tmp_path / "planted"))
    assert code == 0, output  # knowing no secret, there is nothing to find: the two above found real ones


# A Gemini-style key: the credential is a query parameter of the connection's URL, not a header.
URL_KEY = "AIzaSyTESTSECRET0123456789"
GEMINI_PATH = "/v1/models/x:generate"


def echo_url(request: Received) -> Reply:
    """An upstream that echoes the URL it was called with, as it arrived and percent-encoded."""
    called = f"{request.path}?{request.query}"
    return Reply(json={"reply": f"called {called}", "escaped": quote(called, safe="")})


def gemini_connection(upstream_url: str, **fields: Any) -> dict[str, Any]:
    url = f"{upstream_url}{GEMINI_PATH}?key={URL_KEY}"
    return chat_connection(upstream_url, **{"name": "gemini", "url": url, "authType": "NONE", **fields})


def wait_har(client: httpx.Client, count: int) -> str:
    """The flow log's HAR export once it holds `count` flows (they are written just after each call)."""
    deadline = time.monotonic() + 10
    while True:
        answer = client.get("/flows.har")
        if len(answer.json()["log"]["entries"]) >= count or time.monotonic() > deadline:
            return answer.text
        time.sleep(0.05)


def test_a_key_in_the_connection_url_reaches_the_upstream_and_nothing_else(
    tmp_path: Path,
    upstream: Upstream,
    upstream_url: str,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The attack: a connection URL carrying its credential as `?key=…` (Gemini's style), against an upstream
    that echoes the URL it was called with. The key may reach that upstream and be read nowhere else: not in
    any API answer, page, flow, HAR, cassette, database byte or log line; replay still works offline."""
    monkeypatch.chdir(tmp_path)
    upstream.handle(GEMINI_PATH, echo_url)
    seen: dict[str, str | bytes] = {}
    with proxy_logging_everything(tmp_path, caplog) as (proxy, client):
        created = client.post("/endpointConnections", json=gemini_connection(upstream_url))
        assert created.status_code == 201, created.text
        seen["create answer"] = created.text
        conn = created.json()
        version = post(client, "/versions", {"productId": "prod-1", "conversationEndpointConnectionId": conn["id"]})
        session = post(client, "/sessions", {"versionId": version["id"], "testCaseId": "tc-gemini"})
        turn = client.post(f"/sessions/{session['id']}/turns", json={"input": {"user_message": "hi"}})
        assert turn.status_code == 201 and turn.json()["actualOutput"] == f"called {GEMINI_PATH}?key={MASK}"
        seen["turn answer"] = turn.text
        tested = client.post("/endpointConnections/testConnection", json={"id": conn["id"]})
        assert tested.status_code == 200 and tested.json()["success"], tested.text
        seen["testConnection"] = tested.text
        seen["list"] = client.get("/endpointConnections").text
        seen["get by id"] = client.get(f"/endpointConnections/{conn['id']}").text
        seen["HAR"] = wait_har(client, 2)
        seen["flows page"] = client.get("/flows").text
        seen["inspector overview"] = client.get("/").text
        seen["inspector connection"] = client.get(f"/inspector/connections/{conn['id']}").text
        seen["inspector session"] = client.get(f"/inspector/sessions/{session['id']}").text
        seen["inference results"] = client.get("/inferenceResults").text
    assert {r.query for r in upstream.requests_to(GEMINI_PATH)} == {f"key={URL_KEY}"}  # the live calls had it
    assert conn["url"] == f"{upstream_url}{GEMINI_PATH}?key={MASK}"
    seen["log output"] = caplog.text
    seen.update(stored_files(tmp_path))
    assert "file data/proxy.db" in seen and any(name.endswith("tc-gemini.yaml") for name in seen)

    offline = NoNetwork()
    replaying = running_proxy(
        tmp_path / "replay", transport=offline, cassettes_dir=tmp_path / "cassettes", record_mode="none"
    )
    with replaying as proxy, httpx.Client(base_url=proxy.url, timeout=30) as client:
        conn = post(client, "/endpointConnections", gemini_connection(upstream_url))
        version = post(client, "/versions", {"productId": "prod-1", "conversationEndpointConnectionId": conn["id"]})
        session = post(client, "/sessions", {"versionId": version["id"], "testCaseId": "tc-gemini"})
        replayed = post(client, f"/sessions/{session['id']}/turns", {"input": {"user_message": "hi"}})
    assert (replayed["exchange"]["cassette"], offline.calls) == ("hit", 0)
    assert replayed["actualOutput"] == f"called {GEMINI_PATH}?key={MASK}"

    dirs = ["--data-dir", str(tmp_path / "data"), "--cassettes", str(tmp_path / "cassettes")]
    code, output = invoke("cassettes", "verify", *dirs)
    assert (code, output.splitlines()[-1].endswith(" 0 problems")) == (0, True), output
    leaks = {(where, tuple(readings)) for where, text in seen.items() if (readings := revealed(URL_KEY, text))}
    assert not leaks


def plant_uris(cassettes: Path, *uris: str) -> None:
    """A cassette of GET requests to `uris`, as a recording made elsewhere (or before masking) would hold them."""
    path = cassettes / "planted.yaml"
    cassette = Cassette("planted", path, MatchRules())
    for uri in uris:
        cassette.add(make_interaction("GET", uri, b"", {}, 200, "OK", [("content-type", "text/plain")], b"ok", {}))
    cassettes.mkdir(parents=True, exist_ok=True)
    write_cassette(path, cassette.serialize(), cassette.interactions)


def test_verify_finds_a_url_key_it_knows_and_any_unmasked_credential_parameter(
    tmp_path: Path, upstream_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The attack: a cassette that carries a credential in a recorded request URL, the config's own key or one
    from a cassette recorded elsewhere (which no server here knows): `verify` must fail on both."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GEMINI_KEY", URL_KEY)
    config = tmp_path / "proxy.yaml"
    connection = gemini_connection(upstream_url, url=f"{upstream_url}{GEMINI_PATH}?key=${{GEMINI_KEY}}")
    config.write_text(yaml.safe_dump({"settings": {"allow_http": True}, "connections": [connection]}))
    plant_uris(
        tmp_path / "planted",
        f"https://up.test{GEMINI_PATH}?alt=sse&key={URL_KEY}",
        "https://elsewhere.test/search?q=cats&Api-Key=someone-elses-key-42",
        f"https://up.test{GEMINI_PATH}?key={quote(MASK)}&max_tokens=100&keyword=cats",
        f"https://up.test{GEMINI_PATH}?key={MASK}",
    )
    code, output = invoke("cassettes", "verify", "--cassettes", str(tmp_path / "planted"), "--config", str(config))
    problems = [line for line in output.splitlines() if line.startswith("PROBLEM")]
    assert code == 1
    assert problems == [
        "PROBLEM  planted #0: request URL holds a credential",
        "PROBLEM  planted #0: request URL query parameter key is not masked",
        "PROBLEM  planted #1: request URL query parameter Api-Key is not masked",
    ], output
    assert not revealed(URL_KEY, output)


def test_a_config_connection_with_a_url_key_replays_cassettes_made_with_the_key_masked_or_another_key(
    tmp_path: Path, upstream: Upstream, upstream_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Replay matches the masked URL: a recording made on another machine (another key) or before URL keys were
    masked (the key in plain) is the same request, and the config's key is not shown by the API."""
    upstream.handle(GEMINI_PATH, echo_url)
    cassettes = tmp_path / "cassettes"
    url = f"{upstream_url}{GEMINI_PATH}?key=${{GEMINI_KEY}}"
    config_data = chat_config_data(upstream_url, url=url, auth_type="NONE", auth_token=None)
    monkeypatch.setenv("GEMINI_KEY", "AIzaSyANOTHERMACHINE99999")
    with running_proxy(tmp_path / "a", load_config(write_config(tmp_path, config_data)), cassettes_dir=cassettes) as p:
        with httpx.Client(base_url=p.url) as client:
            (recorded,) = run_session(client, ["hello"], testCaseId="tc-1")
            (shown,) = client.get("/endpointConnections").json()
    assert recorded["exchange"]["cassette"] == "recorded"
    assert shown["url"] == f"{upstream_url}{GEMINI_PATH}?key={MASK}"
    cassette = cassettes / "sessions" / "tc-1.yaml"
    masked_recording = cassette.read_text()
    assert "AIzaSyANOTHERMACHINE99999" not in masked_recording

    monkeypatch.setenv("GEMINI_KEY", URL_KEY)
    # As recorded before URL keys were masked (the cassette's YAML writes the mask as escapes).
    plain_recording = masked_recording.replace("key=" + "\\u2022" * len(MASK), f"key={URL_KEY}")
    assert URL_KEY in plain_recording
    for text in (masked_recording, plain_recording):
        cassette.write_text(text)
        offline = NoNetwork()
        config = load_config(write_config(tmp_path, config_data))
        replaying = running_proxy(tmp_path / "b", config, offline, cassettes_dir=cassettes, record_mode="none")
        with replaying as proxy, httpx.Client(base_url=proxy.url) as client:
            (replayed,) = run_session(client, ["hello"], testCaseId="tc-1")
        assert (replayed["exchange"]["cassette"], offline.calls) == ("hit", 0), replayed["exchange"]
        assert replayed["actualOutput"] == recorded["actualOutput"]


def write_config(tmp_path: Path, data: dict[str, Any]) -> Path:
    path = tmp_path / "proxy.yaml"
    path.write_text(yaml.safe_dump({"settings": {"allow_http": True}, **data}))
    return path


def inner_doc(token: str) -> dict[str, str]:
    """The reply from the issue: the token, every character a `\\u` escape, in a JSON document that is itself a
    JSON string value; encoded, `{"inner_doc": "{\\"k\\": \\"\\\\u0074\\\\u006f…\\"}"}`."""
    return {"inner_doc": '{"k": "' + json_u_escaped(token) + '"}'}


def test_a_token_echoed_in_a_json_document_inside_a_json_string_is_read_nowhere(
    tmp_path: Path, upstream: Upstream, upstream_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The attack: the upstream echoes the connection's token in a JSON document that is itself a JSON string value
    (`{"inner_doc": "{\\"k\\": \\"\\\\u0074…\\"}"}`), as a whole reply and as a chunked stream. A real proxy and a
    real upstream: the turn answer, testConnection's answer and the streamed forward answer hold the inner document
    with the mask in the token's place, and no reading of the token is left in them, the cassette files, the flow
    log (its HAR export and the SQLite files) or the log. `proxy cassettes verify` finds the token in a cassette
    that holds that reply (exit 1)."""
    token = "tok-Nested-Sup3rSecret-4242"  # no backslash: decoded once, the reply still reads `\\u0074…`, not it

    def whole(received: Received) -> Reply:
        return Reply(json=inner_doc(received.headers["authorization"].partition(" ")[2]))  # what it was sent

    upstream.handle("/whole", whole)
    upstream.handle("/stream", lambda received: Reply(json=inner_doc(token), trickle=0.005, chunks=9))
    masked = {"inner_doc": json.dumps({"k": MASK}, ensure_ascii=False)}
    seen: dict[str, str | bytes] = {}
    with proxy_logging_everything(tmp_path, caplog) as (_, client):
        fields = {"url": f"{upstream_url}/whole", "authToken": token, "outputMapping": {"output": "$.inner_doc"}}
        conn = post(client, "/endpointConnections", chat_connection(upstream_url, name="nested", **fields))
        version = post(
            client,
            "/versions",
            {"productId": "prod-1", "name": "v-nested", "conversationEndpointConnectionId": conn["id"]},
        )
        session = post(client, "/sessions", {"versionId": version["id"], "testCaseId": "tc-nested"})
        turn = post(client, f"/sessions/{session['id']}/turns", {"input": {"user_message": "hi"}})
        assert turn["actualOutput"] == masked["inner_doc"]
        seen["turn answer"] = json.dumps(turn)
        tested = client.post("/endpointConnections/testConnection", json={"id": conn["id"]})
        assert tested.json()["extractedOutput"] == {"output": masked["inner_doc"]}, tested.text
        seen["testConnection"] = tested.text
        streaming = {"name": "nested-stream", "url": f"{upstream_url}/stream", "authToken": token}
        post(client, "/endpointConnections", chat_connection(upstream_url, **streaming))
        with client.stream("POST", "/forward/nested-stream/stream", json={}) as streamed:
            assert "content-length" not in streamed.headers  # relayed as it arrives, masked on the way
            relayed = streamed.read()
        assert json.loads(relayed) == masked
        seen["forward stream"] = relayed
        seen["flow log (HAR)"] = client.get("/flows.har").text
    assert [r.path for r in upstream.received] == ["/whole", "/whole", "/stream"]
    assert upstream.received[0].headers["authorization"] == f"Bearer {token}"  # the real token went up
    seen["log output"] = caplog.text
    seen.update(stored_files(tmp_path))
    assert sum(name.endswith(".yaml") for name in seen) == 3 and any(name.endswith("proxy.db") for name in seen)
    assert {where: readings for where, text in seen.items() if (readings := revealed(token, text))} == {}

    data_dir = ["--data-dir", str(tmp_path / "data")]
    code, output = invoke("cassettes", "verify", "--cassettes", str(tmp_path / "cassettes"), *data_dir)
    assert code == 0, output  # what the proxy recorded holds the mask only
    plant_bodies(tmp_path / "planted", [json.dumps(inner_doc(token)).encode()])
    code, output = invoke("cassettes", "verify", "--cassettes", str(tmp_path / "planted"), *data_dir)
    assert code == 1 and "planted #0: response body holds a credential this server knows" in output, output
    assert not revealed(token, output)
