"""A real MCP server for tests, written with fastmcp and served over streamable HTTP by uvicorn on a loopback
port: two tools (one reports progress while it works), a resource and a prompt, optionally behind a bearer token.

Runnable as its own process, so a test can record through the proxy, stop the server and replay without it:
`python -m tests.mcp_server [--token TOKEN]` prints `mcp listening on http://127.0.0.1:PORT` once it serves.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx2
import uvicorn
from fastmcp import Context, FastMCP

MCP_PATH = "/mcp"
ANNOUNCED = re.compile(r"mcp listening on (http://\S+)")
# What a tool hands back that the proxy must mask in a cassette: the connection's own secret, echoed.
WEATHER = {"paris": "sunny, 21 C", "oslo": "snow, -3 C"}


@dataclass
class Drift:
    """A server that changes while it runs (in the test's own process)."""

    numbers: bool = False


def build_server(token: str | None = None, leaked_key: str | None = None, drift: Drift | None = None) -> FastMCP:
    auth: Any = None
    if token is not None:
        from fastmcp.server.auth import StaticTokenVerifier

        auth = StaticTokenVerifier(tokens={token: {"client_id": "tests", "scopes": []}})
    server: FastMCP = FastMCP("weather", auth=auth)

    @server.tool
    def get_weather(city: str) -> str | int:
        """Today's weather in a city (with `drift.numbers`, its temperature: another result shape)."""
        if drift is not None and drift.numbers:
            return len(city)
        found = WEATHER.get(city.lower(), "unknown")
        return f"{city}: {found}" + (f" (api key {leaked_key})" if leaked_key else "")

    @server.tool
    async def forecast(city: str, days: int, ctx: Context) -> str:
        """A forecast day by day, reporting progress after each day."""
        for day in range(1, days + 1):
            await ctx.report_progress(day, days, f"day {day}")
        return f"{city}: {days} days of {WEATHER.get(city.lower(), 'unknown')}"

    @server.resource("weather://cities")
    def cities() -> str:
        """The cities this server knows."""
        return ",".join(sorted(WEATHER))

    @server.prompt
    def ask_weather(city: str) -> str:
        """A prompt asking for the weather."""
        return f"What is the weather in {city}?"

    return server


def app(token: str | None = None, leaked_key: str | None = None, drift: Drift | None = None) -> Any:
    return build_server(token, leaked_key, drift).http_app(path=MCP_PATH)


async def _serve(token: str | None, leaked_key: str | None) -> None:
    config = uvicorn.Config(app(token, leaked_key), host="127.0.0.1", port=0, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            await task
            return
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    print(f"mcp listening on http://127.0.0.1:{port}", flush=True)
    await task


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--token", help="the bearer token the server requires")
    parser.add_argument("--leaked-key", help="a key get_weather echoes in its answer")
    args = parser.parse_args(argv)
    asyncio.run(_serve(args.token, args.leaked_key))


if __name__ == "__main__":
    main(sys.argv[1:])


# -- for tests: the proxy's connection to it, the server as a process of its own, one client session -------


def mcp_connection(url: str, **fields: Any) -> dict[str, Any]:
    """A config connection `tools` to the MCP server at `url`, marked `protocol: mcp` (no auth unless `fields`)."""
    return {
        "name": "tools",
        "product_id": "p",
        "type": "CONVERSATION",
        "url": url,
        "auth_type": "NONE",
        "protocol": "mcp",
        **fields,
    }


@contextlib.contextmanager
def mcp_server_process(*args: str) -> Iterator[str]:
    """`python -m tests.mcp_server ARGS` until the block ends; yields its MCP endpoint's URL."""
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.mcp_server", *args], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()  # the server prints its URL once it listens, or dies
        found = ANNOUNCED.search(line)
        if not found:
            raise RuntimeError(f"the MCP server did not start: {line!r}")
        yield found[1]
    finally:
        process.terminate()
        process.wait(timeout=10)
        assert process.stdout is not None
        process.stdout.close()


async def session_results(url: str, headers: dict[str, str] | None = None) -> dict[str, Any]:
    """One MCP session with the official SDK: every call the test server offers, its results as plain data."""
    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    progress: list[list[Any]] = []

    async def on_progress(done: float, total: float | None, message: str | None) -> None:
        progress.append([done, total, message])

    async with httpx2.AsyncClient(headers=headers or {}, timeout=10) as client:
        async with streamable_http_client(url, http_client=client) as (read, write), ClientSession(read, write) as s:
            await s.initialize()
            tools = await s.list_tools()
            forecast = await s.call_tool("forecast", {"city": "Paris", "days": 3}, progress_callback=on_progress)
            weather = await s.call_tool("get_weather", {"city": "Oslo"})
            resource = await s.read_resource("weather://cities")
            prompt = await s.get_prompt("ask_weather", {"city": "Oslo"})
    return {
        "tools": sorted(tool.name for tool in tools.tools),
        "forecast": forecast.model_dump(mode="json"),
        "progress": progress,
        "weather": weather.model_dump(mode="json"),
        "resource": resource.model_dump(mode="json"),
        "prompt": prompt.model_dump(mode="json"),
    }
