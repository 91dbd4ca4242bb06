"""`proxy cassettes drift` on an MCP cassette: re-sent within one fresh live session (initialize first, then the
recorded calls in order, each with a fresh id and the live session's id, the connection's token injected), answers
compared by the shape of their JSON-RPC messages, and `--update` re-records without changing what replays match;
the session is ended with a `DELETE` once its calls are done, whatever the server answers to it."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from proxy.config.file import Config
from tests.conftest import running_proxy
from tests.helpers import proxy_cli
from tests.mcp_server import MCP_PATH, Drift, app, mcp_connection, session_results
from tests.servers import serve_in_thread

pytestmark = pytest.mark.e2e
TOKEN = "mcp-drift-token-0a9b8c7d6e5f"


@dataclass
class Seen:
    """What reached the MCP server, in the order it arrived: (method, session id sent, status answered, session id
    answered) per request; optionally refusing `DELETE` (405) or failing the calls whose body holds `failing` (500)."""

    requests: list[tuple[str, str | None, int, str | None]] = field(default_factory=list)
    since: int = 0  # where drift's requests start (a recording's stream may still finish after)
    refuse_delete: bool = False
    failing: bytes | None = None

    def wrap(self, inner: Any) -> Any:
        async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
            if scope["type"] != "http":
                return await inner(scope, receive, send)
            sent_id = dict(scope["headers"]).get(b"mcp-session-id", b"").decode() or None
            arrived = len(self.requests)  # noted on arrival: an answer may finish after the next request came
            self.requests.append((scope["method"], sent_id, 0, None))
            body, more = b"", True
            while more:
                message = await receive()
                body, more = body + message.get("body", b""), message.get("more_body", False)
            answer: dict[str, Any] = {}
            replayed = False

            async def replay() -> dict[str, Any]:  # the body read, then what the client does next (disconnect)
                nonlocal replayed
                if replayed:
                    return dict(await receive())
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}

            async def noted(message: dict[str, Any]) -> None:
                if message["type"] == "http.response.start":
                    answer.update(status=message["status"], headers=dict(message.get("headers", [])))
                await send(message)

            refused = (scope["method"] == "DELETE" and self.refuse_delete) or (self.failing and self.failing in body)
            if refused:
                status = 405 if scope["method"] == "DELETE" else 500
                await noted({"type": "http.response.start", "status": status, "headers": []})
                await send({"type": "http.response.body", "body": b""})
            else:
                await inner(scope, replay, noted)
            new_id = answer["headers"].get(b"mcp-session-id", b"").decode() or None
            self.requests[arrived] = (scope["method"], sent_id, answer["status"], new_id)

        return app

    def drift(self) -> list[tuple[str, str | None, int, str | None]]:
        """What came since `since`."""
        return self.requests[self.since :]

    def ended(self) -> list[tuple[str | None, int]]:
        """Each DELETE: the session it ended and what it answered."""
        return [(sent, status) for method, sent, status, _ in self.drift() if method == "DELETE"]

    def opened(self) -> list[str]:
        return [new for method, sent, _, new in self.drift() if sent is None and new is not None]


def connection(url: str) -> dict[str, object]:
    return mcp_connection(url, auth_type="BEARER", auth_token=TOKEN)


def drift(tmp_path: Path, url: str, *args: str) -> tuple[int, str]:
    config = tmp_path / f"proxy-{url.rsplit(':', 1)[1]}.yaml"
    config.write_text(yaml.safe_dump({"settings": {"allow_http": True}, "connections": [connection(url)]}))
    common = ["--config", str(config), "--data-dir", str(tmp_path / "drift-data"), "--cassettes", str(tmp_path / "cas")]
    done = proxy_cli("cassettes", "drift", *args, *common)
    return done.returncode, done.stdout + done.stderr


def test_drift_resends_an_mcp_session_live_and_compares_message_shapes(tmp_path: Path) -> None:
    changes, seen = Drift(), Seen()
    with serve_in_thread(seen.wrap(app(token=TOKEN, drift=changes))) as url:
        config = Config(connections=[connection(url)])
        with running_proxy(tmp_path / "rec", config, cassettes_dir=tmp_path / "cas") as proxy:
            asyncio.run(session_results(f"{proxy.url}/forward/tools{MCP_PATH}"))
        seen.since = len(seen.requests)
        code, same = drift(tmp_path, url)
        assert code == 0, same
        assert "7 interactions: 0 drifted, 7 unchanged, 0 not checked" in same
        # Every live session drift opened is deleted once its calls are done, and nothing is sent after. (Usually
        # one; a recording whose requests reached the cassette out of order gets a made-up `initialize` first.)
        opened = seen.opened()
        assert opened and seen.ended() == [(session, 200) for session in opened]
        assert seen.drift()[-1][:2] == ("DELETE", opened[-1])

        cassette = tmp_path / "cas" / "connections" / "tools.yaml"
        before = yaml.safe_load(cassette.read_text())["interactions"]
        # get_weather now answers a number: its result's shape drifted, nothing else did.
        changes.numbers = True
        code, changed = drift(tmp_path, url, "--update")
    assert code == 0, changed
    assert "1 drifted, 6 unchanged" in changed
    assert "$[0].result.structuredContent.result: string → number" in changed
    after = yaml.safe_load(cassette.read_text())["interactions"]
    assert [i["request"] for i in after] == [i["request"] for i in before]  # replays still match
    assert TOKEN not in cassette.read_text()


def test_drift_ends_each_session_even_when_a_call_fails_and_the_server_refuses_delete(tmp_path: Path) -> None:
    seen = Seen()
    with serve_in_thread(seen.wrap(app(token=TOKEN))) as url:
        config = Config(connections=[connection(url)])
        with running_proxy(tmp_path / "rec", config, cassettes_dir=tmp_path / "cas") as proxy:
            for _ in range(2):  # two sessions, one after the other, in one cassette
                asyncio.run(session_results(f"{proxy.url}/forward/tools{MCP_PATH}"))
        seen.since = len(seen.requests)
        seen.refuse_delete, seen.failing = True, b'"forecast"'
        code, report = drift(tmp_path, url)
    assert code == 1, report  # drift found
    # The failed calls are the only drift; the refused DELETEs are no drift and not reported.
    assert "14 interactions: 2 drifted, 12 unchanged, 0 not checked" in report
    assert "DELETE" not in report and "405" not in report
    first, second = seen.opened()
    assert seen.ended() == [(first, 405), (second, 405)]
    # Each session is ended once its own calls are done: the first before the second opens, the second last.
    sent = [(method, session_id) for method, session_id, _, _ in seen.drift()]
    second_opened = next(index for index, (*_, answered) in enumerate(seen.drift()) if answered == second)
    assert sent.index(("DELETE", first)) == second_opened - 1
    assert sent[-1] == ("DELETE", second)
