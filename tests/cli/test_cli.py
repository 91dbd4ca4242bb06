"""The command line: every command has help and is in the README; `serve` runs the bundled example."""

from __future__ import annotations

import enum
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from errno import EADDRINUSE
from pathlib import Path
from typing import Any

import click
import httpx
import pytest
from click.testing import CliRunner

from proxy.cli.main import main
from proxy.config.file import load_config
from proxy.server.listener import why_not
from tests.conftest import running_proxy
from tests.helpers import ROOT, proxy_cli
from tests.servers import announced_url, proxy_serving
from tests.upstream import Reply, Upstream


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


def every_command() -> Iterator[tuple[str, click.Command]]:
    """`proxy`, every command and every subcommand, with its name as typed."""
    stack: list[tuple[str, click.Command]] = [("", main)]
    while stack:
        name, command = stack.pop()
        yield name, command
        for sub_name, sub in getattr(command, "commands", {}).items():
            stack.append((f"{name} {sub_name}".strip(), sub))


@pytest.mark.parametrize(("name", "command"), list(every_command()), ids=lambda v: v if isinstance(v, str) else "")
def test_every_command_and_option_has_help_defaults_and_exit_status(name: str, command: click.Command) -> None:
    assert command.help, f"proxy {name} has no help text"
    output = " ".join(CliRunner().invoke(main, [*name.split(), "--help"]).output.split())  # unwrapped
    assert "Exit status:" in output, f"proxy {name} --help says nothing of its exit status"
    for param in command.params:
        if not isinstance(param, click.Option):
            continue
        assert param.help, f"proxy {name} {param.opts[0]} has no help text"
        default = param.default
        if default not in (None, False) and not isinstance(default, enum.Enum):  # click's UNSET is an Enum
            assert f"[default: {default}" in output, f"proxy {name} {param.opts[0]}: default {default!r} not shown"


def test_python_dash_m_works() -> None:
    result = subprocess.run([sys.executable, "-m", "proxy", "--help"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0 and "serve" in result.stdout


def test_serve_runs_the_bundled_example(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [
        sys.executable,
        "-m",
        "proxy",
        "serve",
        "--config",
        str(ROOT / "examples/demo.yaml"),
        "--port",
        "0",
        "--data-dir",
        str(tmp_path / "data"),
        "--cassettes",
        str(tmp_path / "cassettes"),
    ]
    process = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen: list[str] = []
    try:
        base = announced_url(process, seen=seen)
        (conn,) = httpx.get(f"{base}/endpointConnections", params={"names[]": "demo-chat"}).json()
        result = httpx.post(
            f"{base}/endpointConnections/testConnection", json={"id": conn["id"], "input": {"user_message": "hi"}}
        ).json()
        assert result["success"], result
        assert result["extractedOutput"]["output"] == "You said: hi"
    finally:
        process.terminate()
        output = "".join(seen) + process.communicate(timeout=10)[0]
    assert f"proxy listening on {base}" in output
    assert "demo-token-change-me" not in output


def test_bad_config_exits_with_a_message(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("connections: {a: 1}")
    result = CliRunner().invoke(main, ["serve", "--config", str(bad)])
    assert result.exit_code == 1 and "connections must be a list" in result.output


def test_invalid_config_connection_stops_serve_with_its_place(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "connections:\n  - {name: c, product_id: p, url: 'https://x.test', type: CONVERSATION,"
        ' input_template: \'{"m": "{{ input.m }}"}\', output_mapping: {output: $.a}}\n'
    )
    result = CliRunner().invoke(main, ["serve", "--config", str(bad), "--data-dir", str(tmp_path / "d")])
    assert result.exit_code == 1, result.output  # the help: 1 when the config file is unusable
    assert "config connections[0] (c): authToken (auth_token): is required when authType is BEARER" in result.output


def echo_config(path: Path, upstream_url: str, settings: str = "{allow_http: true}", extra: str = "") -> Path:
    """A config file written as a user types it (bare YAML words), with one connection to the echo upstream."""
    path.write_text(
        f"settings: {settings}\n"
        "connections:\n"
        "  - name: chat\n"
        "    product_id: p\n"
        "    type: CONVERSATION\n"
        f"    url: {upstream_url}/chat\n"
        "    auth_type: NONE\n"
        '    input_template: \'{"message": "{{ input.user_message }}"}\'\n'
        "    output_mapping: {output: $.reply}\n"
        f"{extra}"
    )
    return path


def one_case(tmp_path: Path) -> Path:
    dataset = tmp_path / "d.jsonl"
    dataset.write_text('{"id": "tc-1", "input": {"user_message": "hi"}}\n')
    return dataset


@pytest.mark.parametrize(
    ("settings", "connection_extra"),
    [("{allow_http: true, record_mode: off}", ""), ("{allow_http: true}", "    record_mode: no\n")],
    ids=["settings-off", "connection-no"],
)
def test_a_bare_yaml_off_or_no_record_mode_means_off(
    tmp_path: Path, upstream_url: str, settings: str, connection_extra: str
) -> None:
    config = echo_config(tmp_path / "proxy.yaml", upstream_url, settings, connection_extra)
    cassettes = tmp_path / "cassettes"
    dirs = ("--data-dir", str(tmp_path / "data"), "--cassettes", str(cassettes))
    done = proxy_cli("run", str(one_case(tmp_path)), "--connection", "chat", "--config", str(config), *dirs)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 live" in done.stdout and "Traceback" not in done.stderr
    assert not cassettes.exists()  # off: live, cassettes untouched


@pytest.mark.parametrize(
    ("settings", "connection_extra", "place"),
    [
        ("{record_mode: on}", "", "config settings.record_mode"),
        ("{allow_http: true}", "    record_mode: yes\n", "config connections[0] (chat): record_mode"),
    ],
    ids=["settings-on", "connection-yes"],
)
def test_a_bare_yaml_on_or_yes_record_mode_is_refused_listing_the_modes(
    tmp_path: Path, upstream_url: str, settings: str, connection_extra: str, place: str
) -> None:
    config = echo_config(tmp_path / "proxy.yaml", upstream_url, settings, connection_extra)
    done = proxy_cli("serve", "--config", str(config), "--data-dir", str(tmp_path / "data"), "--port", "0")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert f"{place}: true is not a record mode" in done.stderr
    assert "valid modes are: none, once, new_episodes, all, off" in done.stderr


@contextmanager
def serving(*args: str) -> Iterator[str]:
    """`python -m proxy serve ARGS` on a port the system picks until the block ends; yields its base URL."""
    with proxy_serving(*args) as served:
        yield served.url


def call_test_connection(base: str, message: str) -> dict[str, Any]:
    (conn,) = httpx.get(f"{base}/endpointConnections", params={"names[]": "chat"}).json()
    body = {"id": conn["id"], "input": {"user_message": message}}
    answer = httpx.post(f"{base}/endpointConnections/testConnection", json=body, timeout=30)
    assert answer.status_code == 200, answer.text
    result: dict[str, Any] = answer.json()
    return result


def test_serve_replays_at_the_recorded_pace_divided_by_replay_speed(
    tmp_path: Path, upstream: Upstream, upstream_url: str
) -> None:
    upstream.script("/chat", Reply(json={"reply": "slow"}, delay=0.8))
    config = echo_config(tmp_path / "proxy.yaml", upstream_url)
    with running_proxy(tmp_path, load_config(config)) as proxy:
        recorded = call_test_connection(proxy.url, "hi")
    assert recorded["exchange"]["cassette"] == "recorded" and recorded["latency"] >= 800
    dirs = ("--data-dir", str(tmp_path / "data"), "--cassettes", str(tmp_path / "cassettes"))
    pace = ("--replay-latency", "recorded", "--replay-speed", "4")
    with serving("--config", str(config), *dirs, "--record-mode", "none", *pace) as base:
        started = time.perf_counter()
        replayed = call_test_connection(base, "hi")
        elapsed = time.perf_counter() - started
    assert replayed["exchange"]["cassette"] == "hit" and replayed["extractedOutput"] == {"output": "slow"}
    assert 0.2 <= elapsed < 0.6  # a quarter of the recorded 0.8 s: slept, and divided by 4


def test_serve_on_a_port_in_use_says_so_in_one_line_and_exits_2(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = proxy_cli("serve", "--port", str(port), "--data-dir", str(tmp_path / "data"))
    assert done.returncode == 2
    assert done.stdout == ""  # no URL: it never listened
    assert done.stderr.splitlines() == [f"proxy: cannot listen on 127.0.0.1:{port}: {why_not(OSError(EADDRINUSE, ''))}"]
    assert "in use" in done.stderr


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_serve_stopped_by_ctrl_c_or_sigterm_exits_0_with_one_line(tmp_path: Path, stop: signal.Signals) -> None:
    """Ctrl-C at a terminal (SIGINT) and a service manager's SIGTERM are how the server is meant to stop: a clean
    shutdown, exit 0 as --help promises, not click's `Aborted!` with exit 1 nor death by the signal (-2, -15)
    because uvicorn raises the signal again once it has shut down."""
    dirs = ("--data-dir", str(tmp_path / "data"), "--cassettes", str(tmp_path / "cassettes"))
    cmd = [sys.executable, "-m", "proxy", "serve", "--port", "0", *dirs]
    process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        assert process.stdout.readline().startswith("proxy listening on http://127.0.0.1:")
        process.send_signal(stop)
        out, err = process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
    assert process.returncode == 0, err
    assert out == f"proxy stopped ({stop.name})\n"
    assert "Aborted" not in err and "Traceback" not in err
    assert err.splitlines()[-1].endswith(f"Finished server process [{process.pid}]")  # shut down, not killed


def make_run(port: int, data_dir: Path, *, stderr: int = subprocess.STDOUT) -> subprocess.Popen[str]:
    """`make run PORT=port` in this checkout, with this venv (not rebuilt) and the data dir given."""
    venv = Path(sys.prefix)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PROXY_", "MAKE", "MFLAGS"))}
    cmd = ["make", "-o", f"{venv}/.installed-runtime", "run", f"PORT={port}", f"VENV={venv}", f"DATA_DIR={data_dir}"]
    return subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=stderr, text=True, start_new_session=True
    )


def test_make_run_stopped_by_ctrl_c_ends_with_one_line_and_no_make_error(tmp_path: Path) -> None:
    """Ctrl-C on `make run` at a terminal (SIGINT to make and the server): the server's one line, and no
    `make: *** [Makefile: run] Error 1` after click's `Aborted!`."""
    process = make_run(0, tmp_path / "data")  # port 0: the server takes a free one and says which
    try:
        assert process.stdout is not None
        lines = []
        while not lines or not lines[-1].startswith("proxy listening on"):
            lines.append(process.stdout.readline())
            assert lines[-1], "".join(lines)  # make or the server ended before it listened
        os.killpg(process.pid, signal.SIGINT)
        out, _ = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
    assert out.splitlines()[-1] == "proxy stopped (SIGINT)", out
    assert "Error" not in out and "Aborted" not in out, out


def test_make_run_on_a_port_in_use_names_make_run_port(tmp_path: Path) -> None:
    """`make run` when 8787 (here: any port) is taken: the line says what to type, `make run PORT=…`, since
    the --port the plain command suggests is not how make is told."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        process = make_run(port, tmp_path / "data", stderr=subprocess.PIPE)
        _, err = process.communicate(timeout=60)
    assert process.returncode == 2
    assert f"proxy: cannot listen on 127.0.0.1:{port}: port {port} is in use: run make run PORT={port + 1}" in (
        err.splitlines()
    ), err
    assert "`make run PORT=8788`" in (ROOT / "README.md").read_text(encoding="utf-8")  # where a newcomer reads it


def test_serve_prints_its_url_only_once_it_answers(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "proxy", "serve", "--port", "0", "--data-dir", str(tmp_path / "data")]
    process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        listening = re.fullmatch(r"proxy listening on (http://127\.0\.0\.1:(\d+))\n", line)
        assert listening and int(listening[2]) > 0, line  # port 0 asked for: the one the system gave is printed
        assert httpx.get(f"{listening[1]}/healthz").status_code == 200  # at once: no retry, no wait
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_serve_stops_on_a_misspelt_key_naming_its_place_and_the_nearest_key(tmp_path: Path, upstream_url: str) -> None:
    config = echo_config(tmp_path / "proxy.yaml", upstream_url, extra="    timout: 5\n")
    done = proxy_cli("serve", "--config", str(config), "--data-dir", str(tmp_path / "data"), "--port", "0")
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr == "Error: config connections[0].timout: unknown field — did you mean timeout?\n"


def test_a_flag_left_at_the_default_its_help_shows_does_not_beat_the_config_file(
    tmp_path: Path, upstream_url: str
) -> None:
    config = echo_config(tmp_path / "proxy.yaml", upstream_url, "{allow_http: true, record_mode: none}")
    dirs = ("--data-dir", str(tmp_path / "data"), "--cassettes", str(tmp_path / "cassettes"))
    done = proxy_cli("run", str(one_case(tmp_path)), "--connection", "chat", "--config", str(config), *dirs)
    assert done.returncode == 1 and "FAILED tc-1: cassette miss" in done.stdout  # none, not the flag's once
    done = proxy_cli(
        "run", str(one_case(tmp_path)), "--connection", "chat", "--config", str(config), *dirs, "--record-mode", "once"
    )
    assert done.returncode == 0 and "1 recorded" in done.stdout  # a flag given beats the file


def test_run_prints_session_lines_then_the_summary_on_stdout_in_words_that_agree(
    tmp_path: Path, upstream_url: str
) -> None:
    config = echo_config(tmp_path / "proxy.yaml", upstream_url)
    dirs = ("--data-dir", str(tmp_path / "data"), "--cassettes", str(tmp_path / "cassettes"))
    done = proxy_cli("run", str(one_case(tmp_path)), "--connection", "chat", "--config", str(config), *dirs)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[:2] == ["tc-1: COMPLETED (1 turn)", "Summary"]  # captured: the session line, then the summary
    assert "  cassette  0 hits, 1 recorded, 0 misses" in lines and "tc-1" not in done.stderr
    done = proxy_cli("run", str(one_case(tmp_path)), "--connection", "chat", "--config", str(config), *dirs)
    assert "  cassette  1 hit, 0 recorded, 0 misses" in done.stdout.splitlines()
    listed = proxy_cli("cassettes", "list", "--cassettes", str(tmp_path / "cassettes"))
    assert listed.stdout == "     1 interaction   sessions/tc-1\n"
    verified = proxy_cli("cassettes", "verify", "--cassettes", str(tmp_path / "cassettes"), *dirs[:2])
    assert verified.stdout == "1 cassette, 1 interaction, 0 problems\n"


def test_run_names_every_bad_line_of_a_dataset_before_running_anything(tmp_path: Path, upstream_url: str) -> None:
    dataset = tmp_path / "d.jsonl"
    dataset.write_text('{"id": "a"}\n{"id": "b", "input": "ok"}\nnot json\n{"id": "b", "input": "again"}\n')
    config = echo_config(tmp_path / "proxy.yaml", upstream_url)
    dirs = ("--data-dir", str(tmp_path / "data"), "--cassettes", str(tmp_path / "cassettes"))
    done = proxy_cli("run", str(dataset), "--connection", "chat", "--config", str(config), *dirs)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.splitlines()[-3:] == [
        f"Error: {dataset}: line 1: give either 'input' (one turn) or 'turns' (a list), not both or neither",
        f"{dataset}: line 3: not valid JSON: Expecting value (column 1)",
        f"{dataset}: line 4: id 'b' is already used at line 2",
    ]
    assert not (tmp_path / "cassettes").exists()  # nothing ran
