"""The command line: every command has help and is in the README; `serve` runs the bundled example."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from proxy.cli import main
from tests.servers import free_port, wait_healthy

ROOT = Path(__file__).resolve().parent.parent


def all_commands() -> list[str]:
    names = []
    for name, command in main.commands.items():
        subcommands = getattr(command, "commands", None)
        names += [f"{name} {sub}" for sub in subcommands] if subcommands else [name]
    return names


@pytest.mark.parametrize("command", all_commands())
def test_every_command_has_help_and_is_in_the_readme(command: str) -> None:
    result = CliRunner().invoke(main, [*command.split(), "--help"])
    assert result.exit_code == 0 and "Usage:" in result.output
    assert f"proxy {command}" in (ROOT / "README.md").read_text()


def test_python_dash_m_works() -> None:
    result = subprocess.run([sys.executable, "-m", "proxy", "--help"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0 and "serve" in result.stdout


def test_serve_runs_the_bundled_example(tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [
        sys.executable,
        "-m",
        "proxy",
        "serve",
        "--config",
        str(ROOT / "examples/demo.yaml"),
        "--port",
        str(port),
        "--data-dir",
        str(tmp_path / "data"),
        "--cassettes",
        str(tmp_path / "cassettes"),
    ]
    process = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_healthy(base, process)
        (conn,) = httpx.get(f"{base}/endpointConnections", params={"names[]": "demo-chat"}).json()
        result = httpx.post(
            f"{base}/endpointConnections/testConnection", json={"id": conn["id"], "input": {"user_message": "hi"}}
        ).json()
        assert result["success"], result
        assert result["extractedOutput"]["output"] == "You said: hi"
    finally:
        process.terminate()
        output = process.communicate(timeout=10)[0]
    assert f"http://127.0.0.1:{port}" in output
    assert "demo-token-change-me" not in output


def test_bad_config_exits_with_a_message(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("connections: {a: 1}")
    result = CliRunner().invoke(main, ["serve", "--config", str(bad)])
    assert result.exit_code != 0 and "connections must be a list" in result.output


def test_invalid_config_connection_stops_serve_with_its_place(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "connections:\n  - {name: c, product_id: p, url: 'https://x.test', type: CONVERSATION,"
        ' input_template: \'{"m": "{{ input.m }}"}\', output_mapping: {output: $.a}}\n'
    )
    result = CliRunner().invoke(main, ["serve", "--config", str(bad), "--data-dir", str(tmp_path / "d")])
    assert result.exit_code != 0
    assert "config connections[0] (c): authToken (auth_token): is required when authType is BEARER" in result.output
