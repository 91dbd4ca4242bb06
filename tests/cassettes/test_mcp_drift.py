"""`proxy cassettes drift` on an MCP cassette: re-sent within one fresh live session (initialize first, then the
recorded calls in order, each with a fresh id and the live session's id, the connection's token injected), answers
compared by the shape of their JSON-RPC messages, and `--update` re-records without changing what replays match."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import yaml

from proxy.config.file import Config
from tests.conftest import running_proxy
from tests.helpers import proxy_cli
from tests.mcp_server import MCP_PATH, Drift, app, mcp_connection, session_results
from tests.servers import serve_in_thread

pytestmark = pytest.mark.e2e
TOKEN = "mcp-drift-token-0a9b8c7d6e5f"


def connection(url: str) -> dict[str, object]:
    return mcp_connection(url, auth_type="BEARER", auth_token=TOKEN)


def drift(tmp_path: Path, url: str, *args: str) -> tuple[int, str]:
    config = tmp_path / f"proxy-{url.rsplit(':', 1)[1]}.yaml"
    config.write_text(yaml.safe_dump({"settings": {"allow_http": True}, "connections": [connection(url)]}))
    common = ["--config", str(config), "--data-dir", str(tmp_path / "drift-data"), "--cassettes", str(tmp_path / "cas")]
    done = proxy_cli("cassettes", "drift", *args, *common)
    return done.returncode, done.stdout + done.stderr


def test_drift_resends_an_mcp_session_live_and_compares_message_shapes(tmp_path: Path) -> None:
    changes = Drift()
    with serve_in_thread(app(token=TOKEN, drift=changes)) as url:
        config = Config(connections=[connection(url)])
        with running_proxy(tmp_path / "rec", config, cassettes_dir=tmp_path / "cas") as proxy:
            asyncio.run(session_results(f"{proxy.url}/forward/tools{MCP_PATH}"))
        code, same = drift(tmp_path, url)
        assert code == 0, same
        assert "7 interactions: 0 drifted, 7 unchanged, 0 not checked" in same

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
