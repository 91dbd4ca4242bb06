"""Helpers shared by the test modules: the API, the command line, a browser, a compiled connection.

Fixtures live in conftest.py; the servers the tests talk to in servers.py, upstream.py and streams.py.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from click.testing import CliRunner

from proxy.cli.main import main
from proxy.config.file import Config
from proxy.connections.compiled import CompiledConnection, compile_connection
from proxy.connections.spec import parse_spec
from tests.conftest import TEST_TOKEN

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Two attempts 10 ms apart: a retry that does not slow the test down.
FAST_RETRIES = {"retryEnabled": True, "retryMaxAttempts": 2, "retryInitialDelayMs": 10, "retryBackoffStrategy": "FIXED"}


# -- the HTTP API ---------------------------------------------------------------------------------------


def post(client: httpx.Client, path: str, body: dict[str, Any], status: int = 201) -> dict[str, Any]:
    response = client.post(path, json=body)
    assert response.status_code == status, response.text
    return response.json()  # type: ignore[no-any-return]


def conversation_version(client: httpx.Client, url: str, **connection: Any) -> str:
    """A CONVERSATION connection `c` of product `p` to `url` without auth ({"m": message} in, `$.reply` out),
    with `connection` over it, and a version using it: the version id."""
    body = {
        "name": "c",
        "productId": "p",
        "type": "CONVERSATION",
        "url": url,
        "authType": "NONE",
        "inputTemplate": '{"m": "{{ input.user_message }}"}',
        "outputMapping": {"output": "$.reply"},
        "acknowledgedInsecureHttp": True,
        **connection,
    }
    conn = post(client, "/endpointConnections", body)
    version = {"productId": body["productId"], "conversationEndpointConnectionId": conn["id"]}
    return str(post(client, "/versions", version)["id"])


def thread_connections(client: httpx.Client, base: str, product: str = "prod") -> dict[str, str]:
    """INITIALIZATION, CONVERSATION and FINALIZATION connections to a thread-style API at `base`: their ids."""
    common = {"productId": product, "authType": "NONE", "acknowledgedInsecureHttp": True}
    init = post(
        client,
        "/endpointConnections",
        {
            **common,
            "name": "init",
            "type": "INITIALIZATION",
            "url": f"{base}/threads",
            "inputTemplate": "{}",
            "outputMapping": {"session_id": "$.id", "plan": "$.plan"},
        },
    )
    conv = post(
        client,
        "/endpointConnections",
        {
            **common,
            "name": "conv",
            "type": "CONVERSATION",
            "url": base + "/threads/{{ session_id }}/messages",
            "inputTemplate": (
                '{"message": "{{ input.user_message }}", "plan": "{{ plan }}", "galtea": "{{ galtea_session_id }}"}'
            ),
            "outputMapping": {"output": "$.reply", "retrieval_context": "$.docs", "traces": "$.spans"},
        },
    )
    fin = post(
        client,
        "/endpointConnections",
        {
            **common,
            "name": "fin",
            "type": "FINALIZATION",
            "url": base + "/threads/{{ session_id }}",
            "httpMethod": "DELETE",
        },
    )
    return {"init": init["id"], "conv": conv["id"], "fin": fin["id"]}


def thread_version(client: httpx.Client, base: str, name: str = "v-threads") -> str:
    """A version of the three thread-style connections (see `tests.upstream.Threads`)."""
    ids = thread_connections(client, base)
    version = post(
        client,
        "/versions",
        {
            "productId": "prod",
            "name": name,
            "conversationEndpointConnectionId": ids["conv"],
            "initializationEndpointConnectionId": ids["init"],
            "finalizationEndpointConnectionId": ids["fin"],
        },
    )
    return str(version["id"])


# -- a configured chat connection, recorded and replayed -----------------------------------------------


def bearer_conversation(name: str, url: str, **fields: Any) -> dict[str, Any]:
    """A CONVERSATION connection `name` of product `p` to `url`, TEST_TOKEN its bearer token, with `fields` over
    it: as a config file writes it."""
    data = {"name": name, "product_id": "p", "type": "CONVERSATION", "url": url}
    return {**data, "auth_type": "BEARER", "auth_token": TEST_TOKEN, **fields}


def chat_config(upstream_url: str, **connection: Any) -> Config:
    """One CONVERSATION connection `chat` to {upstream}/chat and a version `v1` using it."""
    return Config(**chat_config_data(upstream_url, **connection))


def chat_config_data(upstream_url: str, **connection: Any) -> dict[str, Any]:
    """`chat_config` as the `connections` and `versions` of a config file."""
    data = bearer_conversation(
        "chat",
        f"{upstream_url}/chat",
        input_template='{"message": "{{ input.user_message }}", "history": {{ past_turns | length }}}',
        output_mapping={"output": "$.reply"},
    )
    data.update(connection)
    return {"connections": [data], "versions": [{"name": "v1", "product_id": "p", "conversation": "chat"}]}


def llm_config(url: str, **connection: Any) -> Config:
    """One connection `llm` to a streaming upstream at `url` (see `tests.streams`), for the forward route."""
    fields = {
        "input_template": '{"messages": [{"role": "user", "content": "{{ input.user_message }}"}]}',
        "output_mapping": {"output": "$.text"},
        **connection,
    }
    return Config(connections=[bearer_conversation("llm", f"{url}/v1", **fields)])


def version_id(client: httpx.Client) -> str:
    return str(client.get("/versions", params={"names[]": "v1"}).json()[0]["id"])


def run_session(client: httpx.Client, messages: list[str], **session: Any) -> list[dict[str, Any]]:
    created = post(client, "/sessions", {"versionId": version_id(client), **session})
    turns = [post(client, f"/sessions/{created['id']}/turns", {"input": {"user_message": m}}) for m in messages]
    client.patch(f"/sessions/{created['id']}/finish", json={})
    return turns


# -- the command line and a browser -------------------------------------------------------------------


def invoke(*args: str) -> tuple[int, str]:
    """`proxy ARGS` in this process: (exit code, output)."""
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result.exit_code, result.output


def proxy_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """The real command, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "proxy", *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT
    )


def launch(playwright: Any, *extra_args: str) -> Any:
    """Debian's headless chromium, quiet: no network of its own."""
    assert Path(CHROMIUM).exists(), "Debian's chromium is needed: apt-get install chromium (.ci/run does it)"
    args = [
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        *extra_args,
    ]
    return playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=args)


def submit_form(page: Any, field: str, value: str, button: str, shows: str) -> str:
    """Fill the page's `field` with `value`, press `button` and wait for `shows`: the text it then shows."""
    page.fill(field, value)
    page.click(button)
    page.wait_for_selector(shows)
    return str(page.inner_text(shows))


# -- a compiled connection, without a server ------------------------------------------------------------


def compiled_connection(*, allow_http: bool = False, **fields: Any) -> CompiledConnection:
    """A CONVERSATION connection `c` to https://up.test/chat with `fields` over it, compiled as the server does."""
    data = {
        "name": "c",
        "productId": "p",
        "url": "https://up.test/chat",
        "type": "CONVERSATION",
        "authType": "NONE",
        "inputTemplate": '{"m": "{{ input.m }}"}',
        "outputMapping": {"output": "$.reply"},
        **fields,
    }
    return compile_connection("ec_1", parse_spec(data), "2026-01-01T00:00:00Z", allow_http=allow_http)


# -- a user's suite under the pytest plugin; the flow log ----------------------------------------------

RUN_TIMEOUT_S = 180
# Other plugins of this venv, off to save start-up time; `proxy` still loads from its entry point.
QUIET_PLUGINS = [f"-p no:{name}" for name in ("cacheprovider", "schemathesis", "hypothesispytest", "asyncio", "anyio")]


def run_pytest(project: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest", *QUIET_PLUGINS, "--strict-markers", "-rA", *args],
        cwd=project,
        env={**os.environ, "CHAT_MESSAGE": "hello", "EXTRA": "first", **env},
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
    )


def wait_flows(client: httpx.Client, count: int, **params: str) -> list[dict[str, Any]]:
    """The HAR entries of the flows `params` select, once there are `count` (flows are written just after)."""
    deadline = time.monotonic() + 10
    while True:
        entries: list[dict[str, Any]] = client.get("/flows.har", params=params).json()["log"]["entries"]
        if len(entries) >= count or time.monotonic() > deadline:
            return entries
        time.sleep(0.05)
