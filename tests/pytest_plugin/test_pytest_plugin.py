"""The pytest plugin, as a user's suite meets it: pytest run in a subprocess on a small project with no
conftest, against a real upstream. Record, replay with the upstream stopped, a changed request fails its
test with the miss message, and the marker sets one test's mode."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import QUIET_PLUGINS, RUN_TIMEOUT_S, run_pytest
from tests.servers import serve_in_thread
from tests.streams import WORDS, StreamingUpstream
from tests.upstream import Reply, Upstream, chat_completion

pytestmark = pytest.mark.e2e
OPENAI_TEST = "test_app/test_openai_sdk_through_the_forward_route"
TESTS = """
import os

import httpx
import pytest
from galtea import Galtea
from openai import OpenAI


def test_openai_sdk_through_the_forward_route(proxy_server):
    client = OpenAI(api_key="sk-user-key-1234", base_url=f"{proxy_server.url}/forward/chat/v1", max_retries=0)
    message = os.environ["CHAT_MESSAGE"]
    answer = client.chat.completions.create(model="m", messages=[{"role": "user", "content": message}])
    assert answer.choices[0].message.content == f"answer to {message}"


def test_galtea_sdk_test_connection(proxy_server):
    galtea = Galtea(api_key="galtea-key", base_url=proxy_server.url, suppress_updatable_version_message=True)
    try:
        conn = galtea.endpoint_connections.get_by_name("bot", "prod-1")
        result = galtea.endpoint_connections.test(id=conn.id)
    finally:
        galtea.shutdown()
    assert result.success and result.extracted_output == {"output": "pong"}


@pytest.mark.proxy_record_mode("new_episodes")
def test_marked_new_episodes(proxy_server):
    answer = httpx.post(f"{proxy_server.url}/forward/chat/v1/extra", json={"n": os.environ["EXTRA"]})
    assert answer.status_code == 200, answer.text
"""


def config_yaml(upstream_url: str) -> str:
    common = {"product_id": "prod-1", "type": "CONVERSATION", "auth_type": "BEARER", "auth_token": "tok-Plug1n-Secret"}
    connections = [
        {
            **common,
            "name": "chat",  # for the forward route: its origin and credentials
            "url": f"{upstream_url}/v1/chat/completions",
            "input_template": '{"messages": [{"role": "user", "content": "{{ input.user_message }}"}]}',
            "output_mapping": {"output": "$.choices[0].message.content"},
        },
        {
            **common,
            "name": "bot",
            "url": f"{upstream_url}/bot",
            "input_template": '{"q": "{{ input.user_message }}"}',
            "output_mapping": {"output": "$.reply"},
        },
    ]
    return json.dumps({"connections": connections, "settings": {"allow_http": True}})  # JSON is YAML


def fake_upstream() -> Upstream:
    upstream = Upstream()
    upstream.handle("/v1/chat/completions", chat_completion)
    upstream.script("/bot", Reply(json={"reply": "pong"}))
    return upstream


@pytest.fixture
def project(tmp_path: Path) -> Path:
    folder = tmp_path / "app"
    folder.mkdir()
    (folder / "test_app.py").write_text(TESTS)
    return folder


def test_record_then_replay_offline_then_a_changed_request_fails_with_the_miss(project: Path) -> None:
    upstream = fake_upstream()
    with serve_in_thread(upstream.app) as url:
        (project / "proxy.yaml").write_text(config_yaml(url))
        (project / "pytest.ini").write_text("[pytest]\nproxy_config = proxy.yaml\n")  # relative to the ini file
        recorded = run_pytest(project, "--proxy-record-mode", "once")
        assert recorded.returncode == 0, recorded.stdout + recorded.stderr
        assert "3 passed" in recorded.stdout
        assert {r.path for r in upstream.received} == {"/v1/chat/completions", "/bot", "/v1/extra"}
        assert not any(name.startswith("x-proxy") for r in upstream.received for name in r.headers)
        upstream.received.clear()

        # The default mode (none) replays; the marked test (new_episodes) records its new request live.
        marked = run_pytest(project, EXTRA="second")
        assert marked.returncode == 0, marked.stdout + marked.stderr
        assert [(r.path, r.json) for r in upstream.received] == [("/v1/extra", {"n": "second"})]
    # Each test's calls are in its own folder, pytest-recording's layout.
    cassette = (project / "cassettes" / OPENAI_TEST / "connections" / "chat.yaml").read_text()
    assert "answer to hello" in cassette and "sk-user-key-1234" not in cassette
    assert sorted(str(p.relative_to(project / "cassettes")) for p in (project / "cassettes").rglob("*.yaml")) == [
        "test_app/test_galtea_sdk_test_connection/connections/bot.yaml",
        "test_app/test_marked_new_episodes/connections/chat.yaml",
        "test_app/test_openai_sdk_through_the_forward_route/connections/chat.yaml",
    ]

    # The upstream is gone: everything replays.
    replayed = run_pytest(project, EXTRA="second")
    assert replayed.returncode == 0, replayed.stdout + replayed.stderr
    assert "3 passed" in replayed.stdout

    changed = run_pytest(project, CHAT_MESSAGE="changed")
    assert changed.returncode == 1, changed.stdout + changed.stderr
    assert "FAILED test_app.py::test_openai_sdk_through_the_forward_route" in changed.stdout
    assert "2 passed" in changed.stdout
    # The OpenAI SDK's error quotes the proxy's answer, miss and all: the plugin's report counts it, not repeats it.
    assert "proxy: 1 replay miss (record mode none), 1 told above" in changed.stdout
    assert f"cassette {OPENAI_TEST}/connections/chat has no recording for POST" in changed.stdout
    assert changed.stdout.count('differing at body $.messages[0].content: "hello" recorded, "changed" now') == 1

    # --proxy-cassettes beats the default folder (`cassettes` beside the ini file): an empty one misses.
    elsewhere = run_pytest(project, "--proxy-cassettes", "tapes", "-k", "galtea")
    assert elsewhere.returncode == 1
    assert "cassette test_app/test_galtea_sdk_test_connection/connections/bot has no recording" in elsewhere.stdout
    assert "tapes/test_app/test_galtea_sdk_test_connection/connections/bot.yaml" in elsewhere.stdout


def test_a_bad_marker_fails_its_test_and_an_unused_fixture_loads_nothing(project: Path) -> None:
    (project / "test_app.py").write_text(
        textwrap.dedent(
            """
            import sys

            import pytest

            def test_nothing_of_the_server_is_imported():
                assert "proxy.pytest_plugin.hooks" in sys.modules  # loaded from the entry point
                server = ("proxy.server.runtime", "proxy.server.app", "proxy.engine.call")
                assert not [m for m in server if m in sys.modules]

            @pytest.mark.proxy_record_mode("sometimes")
            def test_bad_marker():
                pass
            """
        )
    )
    result = run_pytest(project)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "1 passed, 1 error" in result.stdout
    assert "@pytest.mark.proxy_record_mode: 'sometimes' is not a valid record mode" in result.stdout


def test_cassette_use_outlives_the_test_session_so_prune_is_right_afterwards(project: Path) -> None:
    """The plugin's server keeps its database in a temporary folder: cassettes the tests used minutes ago read as
    never used, and `prune --delete` removed them. Replayed by three xdist workers, the use of both cassettes is
    merged into .proxy/cassette-usage.json; prune from the project folder lists only a cassette no test used."""
    upstream = fake_upstream()
    with serve_in_thread(upstream.app) as url:
        (project / "proxy.yaml").write_text(config_yaml(url))
        (project / "pytest.ini").write_text("[pytest]\nproxy_config = proxy.yaml\n")
        recorded = run_pytest(project, "--proxy-record-mode", "once")
        assert recorded.returncode == 0, recorded.stdout + recorded.stderr
    (project / ".proxy").rename(project / "recording-use")  # only the replay's use counts below
    replayed = run_pytest(project, "-n", "3", "-p", "xdist")
    assert replayed.returncode == 0, replayed.stdout + replayed.stderr
    assert "3 passed" in replayed.stdout
    used = sorted((project / "cassettes").rglob("*.yaml"))
    assert len(used) == 3
    stale = project / "cassettes" / "test_app" / "test_gone" / "connections" / "bot.yaml"
    stale.parent.mkdir(parents=True)
    stale.write_text(used[0].read_text())

    prune = subprocess.run(
        [sys.executable, "-m", "proxy", "cassettes", "prune", "--unused-since", "1h", "--delete"],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert prune.returncode == 0, prune.stdout + prune.stderr
    assert prune.stdout.splitlines()[0] == "test_app/test_gone/connections/bot  never used"
    assert "1 of 4 cassettes" in prune.stdout
    assert not stale.exists()
    assert all(path.exists() for path in used)
    assert (project / ".proxy" / ".gitignore").read_text().splitlines()[-1] == "*"
    # The parsed cassettes outlive the sessions too (signed, in a private folder): the next run skips their YAML.
    cache = project / ".proxy" / "cassette-cache"
    assert len(list(cache.glob("*.json"))) >= 3 and cache.stat().st_mode & 0o077 == 0


COUNTER_TESTS = """
import httpx
import pytest


@pytest.fixture(scope="session")
def warm_up(proxy_server):
    return httpx.post(f"{proxy_server.url}/forward/counter/count", json={"who": "session fixture"}).json()["n"]


def count(proxy_server):
    answer = httpx.post(f"{proxy_server.url}/forward/counter/count", json={"who": "a test"})
    assert answer.status_code == 200, answer.text
    return answer.json()["n"]


def test_a(proxy_server, warm_up):
    assert count(proxy_server) == int(open("expected_a").read())


def test_b(proxy_server, warm_up):
    assert count(proxy_server) == int(open("expected_b").read())


@pytest.mark.proxy_cassette("shared")
def test_c(proxy_server):
    count(proxy_server)


@pytest.mark.proxy_cassette("shared")
def test_d(proxy_server):
    count(proxy_server)


def test_e_fault_scoped_to_this_test(proxy_server):
    rules = {"faults": [{"status": 503, "times": 1}]}  # no X-Proxy-Test-Id passed: the node id is this test's
    answer = httpx.put(f"{proxy_server.url}/_proxy/faults/counter", json=rules)
    assert answer.json()["testId"] == "test_counter.py::test_e_fault_scoped_to_this_test"
    assert httpx.post(f"{proxy_server.url}/forward/counter/count", json={"who": "e"}).status_code == 503
"""


def write_counter_project(project: Path, upstream_url: str) -> None:
    """The project's config: one connection, `counter`, at the counting upstream."""
    connection = {
        "name": "counter",
        "product_id": "p",
        "type": "CONVERSATION",
        "url": f"{upstream_url}/count",
        "auth_type": "NONE",
        "input_template": '{"q": "{{ input.user_message }}"}',
        "output_mapping": {"output": "$.n"},
    }
    (project / "proxy.yaml").write_text(json.dumps({"connections": [connection], "settings": {"allow_http": True}}))
    (project / "pytest.ini").write_text("[pytest]\nproxy_config = proxy.yaml\n")


def counting_upstream() -> Upstream:
    upstream = Upstream()
    counter = iter(range(1, 1000))
    upstream.handle("/count", lambda received: Reply(json={"n": next(counter)}))
    return upstream


def test_each_test_replays_its_own_recordings_alone_in_any_order_and_in_parallel(project: Path) -> None:
    """Two tests send the same request to a counter. Recorded together, `-k test_b` alone used to replay test_a's
    answer (one cassette and one replay position for the whole session). Now each test has its own folder and
    positions: alone, reversed, and under -n 3 each gets the answer recorded for it. A session fixture's call goes
    to the folder's own cassette, a marker shares one folder on purpose, and the node id is the test id."""
    (project / "test_app.py").unlink()
    (project / "test_counter.py").write_text(COUNTER_TESTS)
    upstream = counting_upstream()
    with serve_in_thread(upstream.app) as url:
        write_counter_project(project, url)
        (project / "expected_a").write_text("2")  # 1 went to the session fixture
        (project / "expected_b").write_text("3")
        recorded = run_pytest(project, "--proxy-record-mode", "once")
        assert recorded.returncode == 0, recorded.stdout + recorded.stderr
        assert "5 passed" in recorded.stdout
    cassettes = project / "cassettes"
    assert sorted(str(p.relative_to(cassettes)) for p in cassettes.rglob("*.yaml")) == [
        "connections/counter.yaml",  # the session fixture's call
        "shared/connections/counter.yaml",
        "test_counter/test_a/connections/counter.yaml",
        "test_counter/test_b/connections/counter.yaml",
    ]
    assert (cassettes / "shared" / "connections" / "counter.yaml").read_text().count("uri:") == 2
    for args in (["-k", "test_b"], ["test_counter.py::test_b", "test_counter.py::test_a"], ["-n", "3", "-p", "xdist"]):
        replayed = run_pytest(project, *args)  # the upstream is gone
        assert replayed.returncode == 0, f"{args}: {replayed.stdout}{replayed.stderr}"
        assert "failed" not in replayed.stdout and "passed" in replayed.stdout


ZERO_CONFIG_APP = """
from anthropic import Anthropic
from openai import OpenAI

# The app as it ships: clients built at import time from the environment, nothing proxy-specific.
openai_client = OpenAI(max_retries=0)
anthropic_client = Anthropic(max_retries=0)


def ask_openai(question):
    stream = openai_client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": question}], stream=True
    )
    return "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)


def ask_anthropic(question):
    with anthropic_client.messages.stream(
        model="claude", max_tokens=50, messages=[{"role": "user", "content": question}]
    ) as stream:
        return "".join(stream.text_stream)
"""

ZERO_CONFIG_TESTS = """
import os

from app import ask_anthropic, ask_openai


def test_openai_answers():
    assert ask_openai("tell me a story") == os.environ["EXPECTED"]


def test_anthropic_answers():
    assert ask_anthropic("tell me a story") == os.environ["EXPECTED"]
"""


class HeaderTap:
    """ASGI middleware: every request's headers, as the upstream received them."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.seen: list[dict[str, str]] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            self.seen.append({k.decode(): v.decode() for k, v in scope["headers"]} | {":path": scope["path"]})
        await self.app(scope, receive, send)


def test_zero_config_openai_and_anthropic_apps_record_with_real_keys_and_replay_with_none(tmp_path: Path) -> None:
    """No proxy.yaml: --proxy-upstream names the APIs and --proxy-env points the unmodified app's SDKs at the
    proxy before its modules are imported. Recording sends the client's own key upstream (and never writes it
    down); CI replays with the keys unset to placeholders and the upstream gone."""
    project = tmp_path / "agent"
    project.mkdir()
    (project / "app.py").write_text(ZERO_CONFIG_APP)
    (project / "test_app.py").write_text(ZERO_CONFIG_TESTS)
    streaming = StreamingUpstream()
    tap = HeaderTap(streaming.app)
    openai_key, anthropic_key = "sk-proj-RealOpenAIKey0123456789", "sk-ant-RealAnthropicKey0123456789"
    with serve_in_thread(tap) as url:
        (project / "pytest.ini").write_text(
            "[pytest]\n"
            f"proxy_upstreams =\n    openai={url}/v1\n    anthropic={url}\n"
            "proxy_env =\n    OPENAI_BASE_URL=openai\n    ANTHROPIC_BASE_URL=anthropic\n"
        )
        keys = {"OPENAI_API_KEY": openai_key, "ANTHROPIC_API_KEY": anthropic_key, "EXPECTED": "".join(WORDS)}
        recorded = run_pytest(project, "--proxy-record-mode", "once", **keys)
        assert recorded.returncode == 0, recorded.stdout + recorded.stderr
        assert "2 passed" in recorded.stdout
    assert [h[":path"] for h in tap.seen] == ["/v1/chat/completions", "/v1/messages"]
    # Forward-only: the request goes up as the SDK sent it, with none of the Galtea per-call headers.
    assert not [name for h in tap.seen for name in h if name.startswith("x-galtea") or name == "traceparent"]
    assert tap.seen[0]["authorization"] == f"Bearer {openai_key}"
    assert anthropic_key in (tap.seen[1].get("x-api-key"), tap.seen[1].get("authorization", "").removeprefix("Bearer "))
    written = b"".join(path.read_bytes() for path in (project / "cassettes").rglob("*.yaml"))
    assert b"Once upon" in written or b"upon " in written
    assert openai_key.encode() not in written and anthropic_key.encode() not in written
    assert b"RealOpenAIKey" not in written and b"RealAnthropicKey" not in written

    # CI: no upstream, no key worth anything.
    replayed = run_pytest(project, OPENAI_API_KEY="unused", ANTHROPIC_API_KEY="unused", EXPECTED="".join(WORDS))
    assert replayed.returncode == 0, replayed.stdout + replayed.stderr
    assert "2 passed" in replayed.stdout


NO_SECRET_TESTS = """
import httpx
import pytest


def ask(proxy_server):
    return httpx.post(f"{proxy_server.url}/forward/chat/v1/chat/completions", json={"messages": [
        {"role": "user", "content": "hello"}]})


def test_replays(proxy_server):
    answer = ask(proxy_server)
    assert answer.status_code == 200, answer.text
    assert answer.json()["choices"][0]["message"]["content"] == "answer to hello"


@pytest.mark.proxy_record_mode("all")
def test_would_go_live(proxy_server):
    answer = ask(proxy_server)
    assert answer.status_code == 200, answer.text
"""


def test_ci_replays_with_the_credential_variable_unset_and_a_live_call_names_it(project: Path) -> None:
    """`auth_token: ${OPENAI_API_KEY}` stopped a replay-only run with a usage error when the variable was unset,
    and a short placeholder (`x`) was refused. In record mode none the connection loads without the credential
    (a warning) and replays; a call that would go live fails naming the variable, and nothing is sent."""
    upstream = fake_upstream()
    (project / "test_app.py").write_text(NO_SECRET_TESTS)
    with serve_in_thread(upstream.app) as url:
        connection = {
            "name": "chat",
            "product_id": "p",
            "type": "CONVERSATION",
            "url": f"{url}/v1/chat/completions",
            "auth_type": "BEARER",
            "auth_token": "${OPENAI_API_KEY}",
            "input_template": '{"messages": [{"role": "user", "content": "{{ input.user_message }}"}]}',
            "output_mapping": {"output": "$.choices[0].message.content"},
        }
        (project / "proxy.yaml").write_text(json.dumps({"connections": [connection], "settings": {"allow_http": True}}))
        (project / "pytest.ini").write_text("[pytest]\nproxy_config = proxy.yaml\n")
        recorded = run_pytest(
            project, "--proxy-record-mode", "once", "-k", "replays", OPENAI_API_KEY="sk-real-0123456789"
        )
        assert recorded.returncode == 0, recorded.stdout + recorded.stderr
        assert [r.headers["authorization"] for r in upstream.received] == ["Bearer sk-real-0123456789"]
        upstream.received.clear()

        environment = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
        unset = subprocess.run(
            [sys.executable, "-m", "pytest", *QUIET_PLUGINS, "-rA", "-o", "log_level=WARNING"],
            cwd=project,
            env=environment,
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT_S,
        )
        assert unset.returncode == 1, unset.stdout + unset.stderr
        assert "PASSED test_app.py::test_replays" in unset.stdout
        assert "FAILED test_app.py::test_would_go_live" in unset.stdout
        assert "environment variable OPENAI_API_KEY is not set, and this call would take it to the upstream live" in (
            unset.stdout
        )
        assert "config connections[0].auth_token: environment variable OPENAI_API_KEY is not set: replaying" in (
            unset.stdout
        )
        # Told as the user's to fix, not as a failure inside the proxy with a traceback in the log.
        assert "failed inside the proxy" not in unset.stdout + unset.stderr
        assert upstream.received == []  # nothing went out, with or without a credential

        placeholder = run_pytest(project, "-k", "replays", OPENAI_API_KEY="x")
        assert placeholder.returncode == 0, placeholder.stdout + placeholder.stderr

        # A run that may record still needs the variable, and says which.
        recording = subprocess.run(
            [sys.executable, "-m", "pytest", *QUIET_PLUGINS, "--proxy-record-mode", "once"],
            cwd=project,
            env=environment,
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT_S,
        )
        assert recording.returncode != 0
        assert "config connections[0].auth_token: environment variable OPENAI_API_KEY is not set" in (
            recording.stdout + recording.stderr
        )


LEFTOVER_TESTS = """
import os

import httpx


def call(proxy_server, what):
    answer = httpx.post(f"{proxy_server.url}/forward/counter/count", json={"what": what})
    assert answer.status_code == 200, answer.text


def test_keeps_calling(proxy_server):
    call(proxy_server, "one")


def test_calls_less_now(proxy_server):
    call(proxy_server, "first")
    if os.environ.get("SECOND", "yes") == "yes":
        call(proxy_server, "second")
"""


def test_recordings_a_test_no_longer_plays_and_folders_no_test_maps_to_are_reported(project: Path) -> None:
    """As cassetter does: a test that passes in replay without playing all its recordings gets a warning naming it
    and how many (--proxy-strict-replay fails it), and after a run the per-test folders no collected test maps to
    are listed as orphans, which `prune --orphans --delete` removes (and refuses to guess without a record)."""
    (project / "test_app.py").write_text(LEFTOVER_TESTS)
    upstream = counting_upstream()
    with serve_in_thread(upstream.app) as url:
        write_counter_project(project, url)
        recorded = run_pytest(project, "--proxy-record-mode", "once")
        assert recorded.returncode == 0, recorded.stdout + recorded.stderr
        assert "ProxyUnplayedWarning" not in recorded.stdout and "orphaned" not in recorded.stdout

        replayed = run_pytest(project, SECOND="no")
        assert replayed.returncode == 0, replayed.stdout + replayed.stderr
        assert "ProxyUnplayedWarning: proxy: test_app.py::test_calls_less_now did not play every recording of its " in (
            replayed.stdout
        )
        assert "(1 of 2 in test_app/test_calls_less_now/connections/counter)" in replayed.stdout
        assert "test_keeps_calling did not play" not in replayed.stdout

        strict = run_pytest(project, "--proxy-strict-replay", SECOND="no")
        assert strict.returncode == 1, strict.stdout + strict.stderr
        assert "FAILED test_app.py::test_calls_less_now" in strict.stdout and "1 passed" in strict.stdout

        # A test renamed: its old folder is an orphan, reported at the end of the run (-n 2 too) and pruned on request.
        (project / "test_app.py").write_text(LEFTOVER_TESTS.replace("def test_keeps_calling", "def test_renamed"))
        renamed = run_pytest(project, "-n", "2", "-p", "xdist", "--proxy-record-mode", "new_episodes")
        assert renamed.returncode == 0, renamed.stdout + renamed.stderr
        assert "proxy: orphaned cassettes" in renamed.stdout
        assert "  test_app/test_keeps_calling\n" in renamed.stdout
        assert "prune --orphans --delete" in renamed.stdout

    prune = [sys.executable, "-m", "proxy", "cassettes", "prune", "--orphans"]
    nothing = subprocess.run(
        [*prune, "--delete", "--data-dir", "elsewhere"], cwd=project, capture_output=True, text=True
    )
    assert nothing.returncode == 2 and "no record of orphaned test folders" in nothing.stderr
    deleted = subprocess.run([*prune, "--delete"], cwd=project, capture_output=True, text=True, timeout=60)
    assert deleted.returncode == 0, deleted.stdout + deleted.stderr
    assert deleted.stdout.splitlines()[0] == "test_app/test_keeps_calling  1 cassette"
    assert not (project / "cassettes" / "test_app" / "test_keeps_calling").exists()
    assert (project / "cassettes" / "test_app" / "test_calls_less_now" / "connections" / "counter.yaml").exists()
    assert (project / "cassettes" / "test_app" / "test_renamed" / "connections" / "counter.yaml").exists()
