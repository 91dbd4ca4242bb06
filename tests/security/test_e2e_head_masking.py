"""An upstream that puts the token it received in its status line and in header *names*: the token is read
nowhere afterwards.

A real proxy server and a raw-socket upstream answering `HTTP/1.1 401 Bad token <token>` with headers named
`X-Tok-<token>` (as received, lower-cased, URL-safe base64, percent-encoded). The token must not be readable
(in any case, any encoding `tests.encodings.revealed` decodes) in the API answers, the relayed forward answer
read off the socket, the cassette and parse-cache files, the SQLite files, the flow log and its HAR export, the
server log or `proxy check`'s output; and `proxy cassettes verify` must report one planted in a cassette or in
the parse cache.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import re
from pathlib import Path
from urllib.parse import unquote

import httpx
import pytest

from proxy.cassettes.cassette import Cassette, load_interactions, make_interaction
from proxy.cassettes.files import write_cassette
from proxy.cassettes.matching import MatchRules
from proxy.cassettes.parse_cache import ParseCache
from proxy.config.settings import MASK, MAX_REASON_PHRASE_CHARS
from proxy.security.log_scrubbing import install_log_redaction
from tests.conftest import chat_connection, running_proxy
from tests.encodings import revealed
from tests.helpers import invoke, post
from tests.raw_http import Handler, header_values, raw_server, read_request
from tests.upstream import Reply, Upstream

pytestmark = pytest.mark.e2e

# Mixed case: a client lower-cases header names, so a name must be masked whatever the case it reads in.
TOKEN = "Hd-T0ken-AbCdEfGh42"
THROWAWAY = "Thr0waway-XyZ-98765"


def head_echo(token: bytes, status: bytes, streamed: bool) -> bytes:
    """The answer of an upstream that echoes `token` in its status line and in the names of its headers; a
    streamed one is a chunked event stream."""
    b64 = base64.urlsafe_b64encode(token).rstrip(b"=")
    percent = b"".join(b"%%%02X" % c for c in token)
    head = (
        b"HTTP/1.1 " + status + b" Bad token " + token + b"\r\n"
        b"X-Tok-" + token + b": 1\r\n"
        b"x-low-" + token.lower() + b": 2\r\n"
        b"X-B64-" + b64 + b": 3\r\n"
        b"X-Pct-" + percent + b": 4\r\n"
        b"X-Plain: kept\r\n"
    )
    if streamed:
        event = b'data: {"error": "bad token"}\n\n'
        chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(event), event)
        return head + b"Content-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked
    body = b'{"error": "bad token"}'
    return head + b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body


def head_echoing(sent_names: list[bytes]) -> Handler:
    """Answers each request with `head_echo` of its bearer token: `/499/...` with status 499, else 401;
    `/sse/...` as a stream. Keeps the names of the `X-Sent-*` headers it receives in `sent_names`."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head, _ = await read_request(reader)
            lines = head.split(b"\r\n")
            sent_names.extend(line.partition(b":")[0] for line in lines if line.lower().startswith(b"x-sent-"))
            token = header_values(head, b"authorization")[0].removeprefix(b"Bearer ")
            status = b"499" if b" /499/" in lines[0] else b"401"
            writer.write(head_echo(token, status, streamed=b" /sse/" in lines[0]))
            await writer.drain()

    return handler


async def raw_forward(proxy_url: str, path: str, mode: str) -> bytes:
    """The forward route's answer as the bytes that came off the socket: status line, headers and body. The
    request carries a header named after the token too (sent on as it is, recorded masked)."""
    host, port = proxy_url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    head = (
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nX-Proxy-Record-Mode: {mode}\r\nX-Sent-{TOKEN}: 5\r\n"
        "Connection: close\r\n\r\n"
    )
    writer.write(head.encode())
    await writer.drain()
    answer = await reader.read()
    writer.close()
    return answer


def readable(secret: str, data: str | bytes) -> list[str]:
    """`tests.encodings.revealed`, plus the readings of `data` in which the secret shows in another case."""
    text = data if isinstance(data, str) else data.decode("utf-8", "replace")
    found = revealed(secret, data)
    for name, reading in (("lower-cased", text), ("percent-decoded, lower-cased", unquote(text))):
        if secret.lower() in reading.lower():
            found.append(name)
    return found


async def test_a_token_echoed_in_the_status_line_and_header_names_is_masked_everywhere(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Attack: the upstream answers `401 Bad token <token>` with headers named after the token it was sent."""
    monkeypatch.chdir(tmp_path)
    caplog.set_level(logging.DEBUG)
    seen: dict[str, str | bytes] = {}
    sent_names: list[bytes] = []
    async with raw_server(head_echoing(sent_names)) as (upstream, upstream_url):
        with running_proxy(tmp_path) as proxy:
            uninstall = install_log_redaction(proxy.runtime.redactor)  # as `proxy serve` does
            try:
                async with httpx.AsyncClient(base_url=proxy.url, timeout=30) as client:
                    await _drive(client, proxy.url, upstream_url, seen)
            finally:
                uninstall()
        seen["log output"] = caplog.text
        dirs = ["--data-dir", str(tmp_path / "data"), "--cassettes", str(tmp_path / "cassettes")]
        code, output = await asyncio.to_thread(invoke, "check", "head", *dirs)
        assert f"Response  HTTP 401 Bad token {MASK}" in output, output  # the status line came back, masked
        seen["proxy check"] = output
    assert upstream.connections >= 1  # the token reached the upstream: it had something to echo
    # The forward route sent the client's header on (lower-cased, as the server reads every name), only masked after.
    assert sent_names == [f"x-sent-{TOKEN}".lower().encode()] * 2
    for folder in (tmp_path / "data", tmp_path / "cassettes"):
        for path in folder.rglob("*"):
            if path.is_file():
                seen[f"file {path.relative_to(tmp_path)}"] = path.read_bytes()
    assert any(name.endswith(".yaml") for name in seen) and any("cassette-cache" in name for name in seen)
    code, output = invoke("cassettes", "verify", *dirs)
    assert (code, output.splitlines()[-1].endswith(" 0 problems")) == (0, True), output  # what we recorded is clean

    leaks = {
        (where, secret, tuple(readings))
        for secret in (TOKEN, THROWAWAY)
        for where, text in seen.items()
        if (readings := readable(secret, text))
    }
    assert not leaks


async def _drive(client: httpx.AsyncClient, proxy_url: str, upstream_url: str, seen: dict[str, str | bytes]) -> None:
    """testConnection, a session turn and the forward route (recorded, then replayed) against the echoing upstream."""
    fields = chat_connection(upstream_url, name="head", url=f"{upstream_url}/401/chat", authToken=TOKEN)
    created = await client.post("/endpointConnections", json=fields)
    assert created.status_code == 201, created.text
    conn = created.json()

    tested = await client.post("/endpointConnections/testConnection", json={"id": conn["id"]})
    assert tested.status_code == 200 and tested.json()["statusCode"] == 401, tested.text
    headers = tested.json()["exchange"]["response"]["headers"]
    echoed = [name for name in headers if name.startswith(("x-tok-", "x-low-", "x-b64-", "x-pct-"))]
    assert headers["x-plain"] == "kept" and len(echoed) == 4 and all(MASK in name for name in echoed), headers
    seen["testConnection"] = tested.text

    throwaway = chat_connection(upstream_url, name="try", url=f"{upstream_url}/499/chat", authToken=THROWAWAY)
    tried = await client.post("/endpointConnections/testConnection", json=throwaway)
    # Not a status HTTP names: the error quotes the upstream's own reason phrase, masked.
    assert f"External API responded with HTTP 499: Bad token {MASK}" in tried.json()["error"], tried.text
    seen["throwaway testConnection"] = tried.text

    version_fields = {"productId": "prod-1", "name": "v-head", "conversationEndpointConnectionId": conn["id"]}
    version = (await client.post("/versions", json=version_fields)).json()
    session = (await client.post("/sessions", json={"versionId": version["id"], "testCaseId": "tc-head"})).json()
    turn = await client.post(f"/sessions/{session['id']}/turns", json={"input": {"user_message": "hi"}})
    seen["turn answer"] = turn.text
    seen["session"] = (await client.get(f"/sessions/{session['id']}")).text
    seen["inference results"] = (await client.get("/inferenceResults")).text
    seen["inspector session"] = (await client.get(f"/inspector/sessions/{session['id']}")).text

    # A connection of its own: in record mode `once`, the forward route would replay testConnection's cassette.
    forwarded = chat_connection(upstream_url, name="fwd", url=f"{upstream_url}/401/chat", authToken=TOKEN)
    assert (await client.post("/endpointConnections", json=forwarded)).status_code == 201
    # Each recorded, then replayed: a whole answer and a relayed stream.
    calls = [("401", "once", "recorded"), ("401", "none", "hit"), ("sse", "once", "recorded"), ("sse", "none", "hit")]
    for path, mode, outcome in calls:
        answer = await raw_forward(proxy_url, f"/forward/fwd/{path}/chat", mode)
        head = answer.split(b"\r\n\r\n")[0].lower()
        assert head.startswith(b"http/1.1 401 ") and b"x-plain: kept" in head, answer
        assert f"x-proxy-cassette: {outcome}".encode() in head, answer
        # A masked name is no HTTP token: such a header is dropped from the relayed answer, never sent.
        assert not re.search(rb"\r\nx-(tok|low|b64|pct)-", head), answer
        assert b"bad token" in answer and (b"transfer-encoding: chunked" in head) == (path == "sse"), answer
        seen[f"forward answer ({path}, {outcome})"] = answer

    har = await client.get("/flows.har")
    seen["flows.har"] = har.text
    ids = [entry["_flowId"] for entry in har.json()["log"]["entries"]]
    assert len(ids) == 7  # the two testConnections, the turn, the four forwards
    seen["flows page"] = (await client.get("/flows")).text
    for flow_id in ids:
        seen[f"flow {flow_id}"] = (await client.get(f"/flows/{flow_id}")).text
        seen[f"flow {flow_id}.har"] = (await client.get(f"/flows/{flow_id}.har")).text


async def test_a_hostile_reason_phrase_is_stripped_of_control_characters_and_cut_short(tmp_path: Path) -> None:
    """Attack: an upstream status line with terminal escapes, NUL and DEL, 8,000 characters long."""
    hostile = b"\x1b[2J\x1b]0;pwned\x07Bad\x00 token\x7f " + b"x" * 8000
    body = b"{}"
    answer = b"HTTP/1.1 499 " + hostile + b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body

    async def answering_hostile(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_request(reader)
            writer.write(answer)
            await writer.drain()

    async with raw_server(answering_hostile) as (_, upstream_url):
        with running_proxy(tmp_path) as proxy:
            async with httpx.AsyncClient(base_url=proxy.url, timeout=30) as client:
                fields = chat_connection(upstream_url, name="hostile", authType="NONE")
                del fields["authToken"]
                tested = await client.post("/endpointConnections/testConnection", json=fields)
    error = tested.json()["error"]
    reason = error.removeprefix("External API responded with HTTP 499: ").split(" — ")[0]
    assert reason == ("[2J]0;pwnedBad token " + "x" * 8000)[:MAX_REASON_PHRASE_CHARS], error
    (cassette,) = (tmp_path / "cassettes").rglob("*.yaml")
    (recorded,) = load_interactions(cassette)
    assert recorded.response["status"]["message"] == reason
    assert b"\x1b" not in cassette.read_bytes() and b"\\e" not in cassette.read_bytes()  # nor YAML's escape of it


def test_verify_finds_a_token_in_a_reason_phrase_or_a_header_name_in_a_cassette_or_the_parse_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Attack: cassettes recorded before this fix, holding the token in status lines and header names."""
    monkeypatch.chdir(tmp_path)
    with running_proxy(tmp_path) as proxy, httpx.Client(base_url=proxy.url) as client:
        post(client, "/endpointConnections", chat_connection("http://127.0.0.1:9", name="stored", authToken=TOKEN))
    planted = [
        make_interaction("GET", "https://up.test/0", b"", {}, 401, f"Bad token {TOKEN}", [], b"{}", {}),
        make_interaction("GET", "https://up.test/1", b"", {}, 200, "OK", [(f"X-Tok-{TOKEN}", "1")], b"{}", {}),
        make_interaction("GET", "https://up.test/2", b"", {}, 200, "OK", [(f"x-low-{TOKEN.lower()}", "1")], b"{}", {}),
        make_interaction("GET", "https://up.test/3", b"", {f"x-sent-{TOKEN}": "1"}, 200, "OK", [], b"{}", {}),
    ]
    cassettes = tmp_path / "planted"
    cassette = Cassette("planted", cassettes / "planted.yaml", MatchRules())
    for interaction in planted:
        cassette.add(interaction)
    write_cassette(cassette.path, cassette.serialize(), cassette.interactions)  # no parse cache written
    # A parse-cache entry in the data dir, as an older server left it for a cassette since rewritten.
    ParseCache.in_data_dir(tmp_path / "data").write("0" * 64, planted[:2])

    code, output = invoke("cassettes", "verify", "--cassettes", str(cassettes), "--data-dir", str(tmp_path / "data"))
    assert code == 1, output
    problems = [line for line in output.splitlines() if line.startswith("PROBLEM")]
    assert problems == [
        "PROBLEM  planted #0: response status line holds a credential",
        f"PROBLEM  planted #1: response header name x-tok-{MASK} holds a credential",
        f"PROBLEM  planted #2: response header name x-low-{MASK} holds a credential",
        f"PROBLEM  planted #3: request header name x-sent-{MASK} holds a credential",
        f"PROBLEM  parse cache {'0' * 64}.json #0: response status line holds a credential",
        f"PROBLEM  parse cache {'0' * 64}.json #1: response header name x-tok-{MASK} holds a credential",
    ], output
    assert not readable(TOKEN, output)  # the report names no secret


def test_an_answer_recorded_with_a_masked_header_replays_instead_of_failing(
    tmp_path: Path, upstream: Upstream, upstream_url: str
) -> None:
    """Attack: the upstream sets a cookie (masked when recorded) and echoes the token in a header name; a replay
    of that answer must hand back the masked headers, not fail on text httpx reads as ASCII only."""
    upstream.script("/chat", Reply(json={"reply": "hi"}, headers={"Set-Cookie": "sid=abc", f"X-Tok-{TOKEN}": "1"}))
    answers = []
    for run in range(2):  # the second run replays what the first recorded
        with running_proxy(tmp_path) as proxy, httpx.Client(base_url=proxy.url, timeout=30) as client:
            if run == 0:
                post(client, "/endpointConnections", chat_connection(upstream_url, name="cookie", authToken=TOKEN))
            (conn,) = client.get("/endpointConnections").json()
            answers.append(client.post("/endpointConnections/testConnection", json={"id": conn["id"]}).json())
    assert [a["exchange"]["cassette"] for a in answers] == ["recorded", "hit"], answers[1]["error"]
    recorded, replayed = (answer["exchange"]["response"]["headers"] for answer in answers)
    assert all(answer["success"] and answer["error"] is None for answer in answers), answers
    assert recorded["set-cookie"] == "sid=abc" and replayed["set-cookie"] == MASK  # the cassette keeps no cookie
    assert recorded[f"x-tok-{MASK}"] == replayed[f"x-tok-{MASK}"] == "1"
    assert len(upstream.received) == 1
