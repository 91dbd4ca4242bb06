"""`proxy cassettes drift --upstream NAME=URL`: cassettes the pytest plugin recorded through a forward-only upstream
re-sent to that upstream (HTTP or MCP), without the client's credential the recording masked, and never to another
origin than the upstream's."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from proxy.config.settings import MASK
from tests.cassettes.test_drift import HI, plant
from tests.conftest import running_proxy
from tests.helpers import invoke, proxy_cli, run_pytest
from tests.mcp_server import MCP_PATH, Drift, app, session_results
from tests.servers import serve_in_thread
from tests.upstream import Received, Reply, Upstream

pytestmark = pytest.mark.e2e
CLIENT_KEY = "sk-client-OwnKey0123456789abcdef"
SENT_WITHOUT = "sent without authorization: the recording masked the client's credential"  # lower-cased

PLUGIN_TESTS = f"""
import httpx


def test_asks(proxy_server):
    answer = httpx.post(
        f"{{proxy_server.url}}/forward/chat/v1/chat/completions",
        json={{"messages": [{{"role": "user", "content": "hello"}}]}},
        headers={{"Authorization": "Bearer {CLIENT_KEY}"}},
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["choices"][0]["message"]["content"] == "hi"
"""


class Model:
    """A chat API whose answer's shape, and whether it wants a credential, the test changes."""

    def __init__(self) -> None:
        self.tokens: Any = 3
        self.needs_key = False

    def answer(self, received: Received) -> Reply:
        if self.needs_key and "authorization" not in received.headers:
            return Reply(401, {"error": {"message": "no API key"}})
        return Reply(json={"choices": [{"message": {"content": "hi"}}], "usage": {"total_tokens": self.tokens}})


def drift(tmp_path: Path, cassettes: Path, *args: str) -> tuple[int, str]:
    done = proxy_cli("cassettes", "drift", *args, "--data-dir", str(tmp_path / "data"), "--cassettes", str(cassettes))
    return done.returncode, done.stdout + done.stderr


def test_a_plugin_recorded_upstream_cassette_is_drift_checked_with_upstream(tmp_path: Path) -> None:
    """Recorded by the plugin (`proxy_upstreams = chat=URL`) into the test's folder: without --upstream nothing
    owns it; with it, it is re-sent without the masked key, unchanged, then drifted; a 401 is not drift."""
    project = tmp_path / "app"
    project.mkdir()
    (project / "test_app.py").write_text(PLUGIN_TESTS)
    upstream, model = Upstream(), Model()
    upstream.handle("/v1", model.answer)
    with serve_in_thread(upstream.app) as url:
        (project / "pytest.ini").write_text(f"[pytest]\nproxy_upstreams =\n    chat={url}/v1\n")
        recorded = run_pytest(project, "--proxy-record-mode", "once")
        assert recorded.returncode == 0, recorded.stdout + recorded.stderr
        cassettes = project / "cassettes"
        cassette = next(cassettes.rglob("connections/chat.yaml"))
        written = cassette.read_bytes()
        assert CLIENT_KEY.encode() not in written
        assert [r.headers["authorization"] for r in upstream.received] == [f"Bearer {CLIENT_KEY}"]
        upstream.received.clear()

        code, unowned = drift(tmp_path, cassettes)
        assert code == 1 and "no stored connection owns this cassette" in unowned, unowned
        assert "nor an --upstream NAME=URL" in unowned
        assert upstream.received == []

        code, same = drift(tmp_path, cassettes, "--upstream", f"chat={url}/v1")
        assert code == 0, same
        assert "1 interactions: 0 drifted, 1 unchanged, 0 not checked" in same
        assert SENT_WITHOUT in same.lower(), same
        [resent] = upstream.received
        assert resent.path == "/v1/chat/completions" and resent.json["messages"][0]["content"] == "hello"
        # Sent as recorded: no credential of anyone's, no per-call header of the proxy's.
        assert not [name for name in resent.headers if name == "authorization" or name.startswith("x-galtea")]

        model.tokens = "3"
        code, changed = drift(tmp_path, cassettes, "--upstream", f"chat={url}/v1", "--json")
        assert code == 1, changed
        [item] = json.loads(changed)["interactions"]
        assert item["outcome"] == "drifted" and item["note"].lower().startswith(SENT_WITHOUT)
        assert [d["path"] for d in item["differences"]] == ["$.usage.total_tokens"]

        model.tokens, model.needs_key = 3, True
        code, refused = drift(tmp_path, cassettes, "--upstream", f"chat={url}/v1", "--update")
        assert code == 1, refused
        assert "the upstream refused it (HTTP 401) without the credential the recording masked" in refused
    assert cassette.read_bytes() == written  # a refusal is not re-recorded


def test_an_upstream_cassette_on_another_origin_is_never_sent(
    tmp_path: Path, upstream: Upstream, upstream_url: str, attacker: tuple[Upstream, str]
) -> None:
    """Attack: a committed `<test>/connections/chat.yaml` whose request goes to another origin than the upstream
    named `chat` (the attacker's listener): reported not checked, and nothing reaches either server."""
    listener, attacker_url = attacker
    plant(tmp_path, "test_app/test_asks/connections/chat", "chat", (f"{attacker_url}/v1/steal", HI))
    code, out = drift(tmp_path, tmp_path / "cas", "--upstream", f"chat={upstream_url}/v1", "--json")
    assert code == 1, out
    [item] = json.loads(out)["interactions"]
    assert item["error"] == (
        f"not checked: the recording points at another origin ({attacker_url}; "
        f"upstream 'chat' sends its calls to {upstream_url})"
    )
    assert listener.received == [] and upstream.received == []


def test_an_mcp_upstream_cassette_is_drift_checked_in_a_live_session(tmp_path: Path) -> None:
    """`--upstream tools=mcp+URL`: the MCP session recorded through the forward-only upstream is re-sent in a live
    session and compared message by message."""
    changes = Drift()
    with serve_in_thread(app(drift=changes)) as url:
        with running_proxy(tmp_path / "rec", cassettes_dir=tmp_path / "cas") as proxy:
            proxy.runtime.add_upstream("tools", f"mcp+{url}")
            headers = {"Authorization": f"Bearer {CLIENT_KEY}"}
            asyncio.run(session_results(f"{proxy.url}/forward/tools{MCP_PATH}", headers))
        recorded = yaml.safe_load((tmp_path / "cas" / "connections" / "tools.yaml").read_text())["interactions"]
        assert {i["request"]["headers"]["authorization"][0] for i in recorded} == {MASK}
        code, same = drift(tmp_path, tmp_path / "cas", "--upstream", f"tools=mcp+{url}")
        assert code == 0, same
        assert "7 interactions: 0 drifted, 7 unchanged, 0 not checked" in same
        assert SENT_WITHOUT in same.lower()
        changes.numbers = True
        code, changed = drift(tmp_path, tmp_path / "cas", "--upstream", f"tools=mcp+{url}")
    assert code == 1, changed
    assert "$[0].result.structuredContent.result: string → number" in changed


def test_a_bad_upstream_is_a_usage_error_naming_it(tmp_path: Path) -> None:
    for given, reason in [
        ("chat", "upstream: 'chat' is not NAME=VALUE"),
        ("chat=ftp://host", "upstream chat: 'ftp://host' is not an absolute http(s) URL"),
        ("a b=http://127.0.0.1:9", "upstream a b: a name is letters"),
    ]:
        common = ["--data-dir", str(tmp_path / "data"), "--cassettes", str(tmp_path / "cas")]
        code, out = invoke("cassettes", "drift", "--upstream", given, *common)
        assert code == 2 and f"Invalid value for --upstream: {reason}" in out, out
