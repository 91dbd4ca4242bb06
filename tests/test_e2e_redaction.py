"""An upstream that echoes the token it received, in every encoding: the token is read nowhere afterwards.

A real proxy server and the real upstream test server (its `/echo-auth/<encoding>` route). For each
encoding the canary must not be readable (plain, JSON-decoded, percent-decoded, base64-decoded at any
alignment, UTF-16 decoded) in the turn answer, testConnection's answers, the inspector's pages, the SQLite
files, the cassette files, the captured log output or `proxy check`'s output; and `proxy cassettes
verify` must report one planted in a cassette.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import httpx
import pytest
import yaml

from proxy.secrets import install_log_redaction
from proxy.settings import MASK
from proxy.transports.cassette import Cassette, make_interaction, write_cassette
from proxy.transports.matching import MatchRules
from tests.conftest import chat_connection, running_proxy
from tests.encodings import ECHOES, json_u_escaped, revealed
from tests.helpers import invoke, post
from tests.upstream import Received, Reply, Upstream

pytestmark = pytest.mark.e2e


def canary(encoding: str, kind: str = "stored") -> str:
    # Quotes, a backslash, a slash, a plus and spaces: each has a meaning in some encoding.
    return f'cAnary/{encoding}+{kind} "q" \\ end'


def test_an_echoed_token_is_masked_in_every_encoding_everywhere(
    tmp_path: Path,
    upstream: Upstream,
    upstream_url: str,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    caplog.set_level(logging.DEBUG)
    seen: dict[str, str | bytes] = {}
    with running_proxy(tmp_path) as proxy, httpx.Client(base_url=proxy.url, timeout=30) as client:
        uninstall = install_log_redaction(proxy.runtime.redactor)  # as `proxy serve` does
        try:
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
        finally:
            uninstall()
    received = {r.headers["authorization"] for r in upstream.received}
    assert f"Bearer {canary('json-escaped')}" in received  # the real token went to the upstream
    seen["log output"] = caplog.text
    for folder in (tmp_path / "data", tmp_path / "cassettes"):
        for path in folder.rglob("*"):
            if path.is_file():
                seen[f"file {path.relative_to(tmp_path)}"] = path.read_bytes()
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
    caplog.set_level(logging.DEBUG)
    token = "tok-Nested-Sup3rSecret-4242"  # no backslash: decoded once, the reply still reads `\\u0074…`, not it

    def whole(received: Received) -> Reply:
        return Reply(json=inner_doc(received.headers["authorization"].partition(" ")[2]))  # what it was sent

    upstream.handle("/whole", whole)
    upstream.handle("/stream", lambda received: Reply(json=inner_doc(token), trickle=0.005, chunks=9))
    masked = {"inner_doc": json.dumps({"k": MASK}, ensure_ascii=False)}
    seen: dict[str, str | bytes] = {}
    with running_proxy(tmp_path) as proxy, httpx.Client(base_url=proxy.url, timeout=30) as client:
        uninstall = install_log_redaction(proxy.runtime.redactor)  # as `proxy serve` does
        try:
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
        finally:
            uninstall()
    assert [r.path for r in upstream.received] == ["/whole", "/whole", "/stream"]
    assert upstream.received[0].headers["authorization"] == f"Bearer {token}"  # the real token went up
    seen["log output"] = caplog.text
    for folder in (tmp_path / "data", tmp_path / "cassettes"):
        for path in folder.rglob("*"):
            if path.is_file():
                seen[f"file {path.relative_to(tmp_path)}"] = path.read_bytes()
    assert sum(name.endswith(".yaml") for name in seen) == 3 and any(name.endswith("proxy.db") for name in seen)
    assert {where: readings for where, text in seen.items() if (readings := revealed(token, text))} == {}

    data_dir = ["--data-dir", str(tmp_path / "data")]
    code, output = invoke("cassettes", "verify", "--cassettes", str(tmp_path / "cassettes"), *data_dir)
    assert code == 0, output  # what the proxy recorded holds the mask only
    plant_bodies(tmp_path / "planted", [json.dumps(inner_doc(token)).encode()])
    code, output = invoke("cassettes", "verify", "--cassettes", str(tmp_path / "planted"), *data_dir)
    assert code == 1 and "planted #0: response body holds a credential this server knows" in output, output
    assert not revealed(token, output)
