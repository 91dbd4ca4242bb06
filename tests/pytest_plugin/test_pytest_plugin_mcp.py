"""The pytest plugin with an agent: its model (OpenAI's SDK) and its tools (the official MCP SDK against a fastmcp
server) recorded per test with zero config, then replayed with the model API and the MCP server both gone."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from tests.helpers import run_pytest
from tests.mcp_server import app as mcp_app
from tests.servers import serve_in_thread
from tests.streams import WORDS, StreamingUpstream

pytestmark = pytest.mark.e2e

AGENT = """
import asyncio
import os

from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from openai import OpenAI

model = OpenAI(max_retries=0)  # reads OPENAI_BASE_URL and OPENAI_API_KEY


async def use_tool(name, arguments):
    async with streamable_http_client(os.environ["WEATHER_MCP_URL"] + "/mcp") as (read, write):
        async with ClientSession(read, write) as session:
            await session.initialize()
            result = await session.call_tool(name, arguments)
            return result.content[0].text


def plan_and_act(city, days):
    stream = model.chat.completions.create(
        model="m", messages=[{"role": "user", "content": f"weather in {city}?"}], stream=True
    )
    thought = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    return thought, asyncio.run(use_tool("forecast", {"city": city, "days": days}))
"""

AGENT_TESTS = """
import os

from agent import plan_and_act


def test_paris():
    thought, observation = plan_and_act("Paris", 2)
    assert thought == os.environ["EXPECTED"] and observation == "Paris: 2 days of sunny, 21 C"


def test_oslo():
    thought, observation = plan_and_act("Oslo", 3)
    assert thought == os.environ["EXPECTED"] and observation == "Oslo: 3 days of snow, -3 C"
"""


def test_an_agent_test_replays_its_model_and_its_mcp_tools_per_test(tmp_path: Path) -> None:
    project = tmp_path / "agent"
    project.mkdir()
    (project / "agent.py").write_text(AGENT)
    (project / "test_agent.py").write_text(AGENT_TESTS)
    expected = "".join(WORDS)
    with serve_in_thread(StreamingUpstream().app) as model_url, serve_in_thread(mcp_app()) as tools_url:
        (project / "pytest.ini").write_text(
            textwrap.dedent(f"""\
                [pytest]
                proxy_upstreams =
                    openai={model_url}/v1
                    weather=mcp+{tools_url}
                proxy_env =
                    OPENAI_BASE_URL=openai
                    WEATHER_MCP_URL=weather
            """)
        )
        recorded = run_pytest(project, "--proxy-record-mode", "once", OPENAI_API_KEY="unused", EXPECTED=expected)
        assert recorded.returncode == 0, recorded.stdout + recorded.stderr
    # Each test its own cassette folder, the MCP session in it beside the model call.
    for test in ("test_paris", "test_oslo"):
        tools = next((project / "cassettes").rglob(f"*{test}*/connections/weather.yaml"))
        assert "tools/call" in tools.read_text() and test.removeprefix("test_").title() in tools.read_text()
    # Both servers gone: the suite replays; a changed tool argument fails its test with the miss.
    (project / "test_agent.py").write_text(AGENT_TESTS.replace('plan_and_act("Paris", 2)', 'plan_and_act("Paris", 5)'))
    replayed = run_pytest(project, OPENAI_API_KEY="unused", EXPECTED=expected)
    assert "1 failed, 1 passed" in replayed.stdout, replayed.stdout + replayed.stderr
    assert "PASSED test_agent.py::test_oslo" in replayed.stdout
    # Told once, by the mcp SDK's own error (the proxy's JSON-RPC error), which the plugin's report counts, not repeats.
    assert replayed.stdout.count("differing at body $.params.arguments.days") == 1, replayed.stdout
    assert "nearest recorded MCP call: tools/call forecast" in replayed.stdout
    assert "proxy: 1 replay miss (record mode none), 1 told above\nrecord them with" in replayed.stdout
