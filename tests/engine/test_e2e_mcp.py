"""MCP over streamable HTTP through the forward route, with the official `mcp` SDK against a real fastmcp server:
recorded, then replayed by a new proxy process once the server is gone, with the client's own JSON-RPC ids."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from proxy.config.file import Config
from proxy.config.settings import MASK
from tests.conftest import running_proxy
from tests.mcp_server import MCP_PATH, mcp_connection, mcp_server_process, session_results
from tests.servers import proxy_serving

pytestmark = pytest.mark.e2e
TOKEN = "mcp-server-token-5f1e2d3c4b5a"
LEAKED = "sk-weather-4242424242424242"


def write_config(path: Path, url: str, **fields: Any) -> Path:
    path.write_text(yaml.safe_dump({"connections": [mcp_connection(url, **fields)]}))
    return path


def interactions(cassettes: Path) -> list[dict[str, Any]]:
    return list(yaml.safe_load((cassettes / "connections" / "tools.yaml").read_text())["interactions"])


def test_mcp_session_recorded_then_replayed_by_a_new_process_without_the_server(tmp_path: Path) -> None:
    cassettes = tmp_path / "cassettes"
    with mcp_server_process("--token", TOKEN, "--leaked-key", LEAKED) as server:
        direct = asyncio.run(session_results(server + MCP_PATH, {"Authorization": f"Bearer {TOKEN}"}))
        # The key a tool hands back is one the proxy knows to mask (`redact_values`), as in any body.
        config = Config(
            connections=[mcp_connection(server, auth_type="BEARER", auth_token=TOKEN)],
            settings={"redact_values": [LEAKED]},
        )
        with running_proxy(tmp_path / "a", config, cassettes_dir=cassettes) as proxy:
            recorded = asyncio.run(session_results(f"{proxy.url}/forward/tools{MCP_PATH}"))
    assert recorded == json.loads(json.dumps(direct, ensure_ascii=False).replace(LEAKED, MASK))
    direct = recorded  # what the client saw through the proxy, the key masked
    assert recorded["progress"] == [[1.0, 3.0, "day 1"], [2.0, 3.0, "day 2"], [3.0, 3.0, "day 3"]]
    # The server is gone: a new process replays the session from the cassette alone.
    config_file = write_config(tmp_path / "config.yaml", server, auth_type="BEARER", auth_token=TOKEN)
    with proxy_serving(
        "--config",
        str(config_file),
        "--cassettes",
        str(cassettes),
        "--data-dir",
        str(tmp_path / "b"),
        "--record-mode",
        "none",
        "--allow-http",
    ) as replaying:
        replayed = asyncio.run(session_results(f"{replaying.url}/forward/tools{MCP_PATH}"))
    assert replayed == direct
    text = (cassettes / "connections" / "tools.yaml").read_text()
    assert TOKEN not in text and LEAKED not in text
    methods = [
        json.loads(i["request"]["body"]).get("method") if i["request"]["body"] else None
        for i in interactions(cassettes)
    ]
    assert methods[:2] == ["initialize", "notifications/initialized"]
    assert "tools/call" in methods
