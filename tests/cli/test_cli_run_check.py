"""`proxy run`, `proxy check` and `proxy cassettes` as a user runs them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from tests.conftest import TEST_TOKEN
from tests.helpers import ROOT, chat_config_data, invoke, proxy_cli

pytestmark = pytest.mark.e2e


def chat_config(tmp_path: Path, upstream_url: str, mapping: str = "$.reply") -> Path:
    template = '{"message": "{{ input.user_message }}", "tier": "{{ context.tier }}"}'
    chat = chat_config_data(upstream_url, input_template=template, output_mapping={"output": mapping})
    path = tmp_path / "proxy.yaml"
    path.write_text(yaml.safe_dump({"settings": {"allow_http": True}, **chat}))
    return path


def dirs(tmp_path: Path) -> list[str]:
    return ["--data-dir", str(tmp_path / "data"), "--cassettes", str(tmp_path / "cassettes")]


def test_run_records_then_replays_byte_identically(tmp_path: Path, upstream_url: str) -> None:
    dataset = tmp_path / "d.jsonl"
    dataset.write_text(
        "".join(
            json.dumps(
                {
                    "id": f"tc-{n}",
                    "turns": [{"user_message": f"q{n}"}, {"user_message": "more"}],
                    "context": {"tier": "gold"},
                }
            )
            + "\n"
            for n in range(12)
        )
    )
    config = str(chat_config(tmp_path, upstream_url))
    run_v1 = ["run", str(dataset), "--version", "v1", "--config", config, *dirs(tmp_path)]
    code, output = invoke(*run_v1, "--out", str(tmp_path / "rec.jsonl"), "--concurrency", "4")
    assert code == 0, output
    assert "12 (12 passed, 0 failed)" in output and "0 hits, 24 recorded, 0 misses" in output
    outs = []
    for n in (1, 2):
        replayed = tmp_path / f"rep{n}.jsonl"
        code, output = invoke(*run_v1, "--record-mode", "none", "--out", str(replayed))
        assert code == 0 and "24 hits, 0 recorded, 0 misses" in output
        outs.append(replayed.read_bytes())
    assert outs[0] == outs[1]
    lines = [json.loads(line) for line in outs[0].decode().splitlines()]
    assert [line["testCaseId"] for line in lines] == [f"tc-{n}" for n in range(12)]  # dataset order
    first = lines[0]
    assert first["status"] == "COMPLETED" and first["turns"][0]["output"].startswith("echo ")
    assert json.loads(first["turns"][0]["output"].removeprefix("echo ")) == {"message": "q0", "tier": "gold"}
    assert TEST_TOKEN not in outs[0].decode()


def test_run_exits_1_when_a_session_fails_and_2_on_a_bad_dataset(tmp_path: Path, upstream_url: str) -> None:
    dataset = tmp_path / "d.jsonl"
    dataset.write_text('{"id": "tc-x", "input": {"user_message": "hi"}}\n')
    config = str(chat_config(tmp_path, upstream_url))
    code, output = invoke(
        "run", str(dataset), "--version", "v1", "--config", config, *dirs(tmp_path), "--record-mode", "none"
    )
    assert code == 1 and "FAILED tc-x: cassette miss" in output
    dataset.write_text('{"id": "tc-x", "input": {"user_message": "hi"}}\n{"id": "tc-y"}\n')
    code, output = invoke("run", str(dataset), "--version", "v1", "--config", config, *dirs(tmp_path))
    assert code == 2 and "line 2: give either 'input'" in output
    code, output = invoke("run", str(dataset), "--config", config)
    assert code == 2 and "exactly one of --version NAME or --connection NAME" in output
    dataset.write_text('{"id": "tc-x", "input": {"user_message": "hi"}}\n')
    code, output = invoke("run", str(dataset), "--version", "nope", "--config", config, *dirs(tmp_path))
    assert code == 1 and "--version: no version 'nope' (known: v1)" in output


def test_run_with_a_connection_and_a_json_array(tmp_path: Path, upstream_url: str) -> None:
    dataset = tmp_path / "d.json"
    dataset.write_text('[{"id": "a", "input": {"user_message": "hi"}}]')
    code, output = invoke(
        "run",
        str(dataset),
        "--connection",
        "chat",
        "--config",
        str(chat_config(tmp_path, upstream_url)),
        *dirs(tmp_path),
        "--record-mode",
        "off",
    )
    assert code == 0 and "1 (1 passed, 0 failed)" in output and "1 live" in output


def test_check_explains_a_broken_mapping_and_exits_1(tmp_path: Path, upstream_url: str) -> None:
    config = str(chat_config(tmp_path, upstream_url, mapping="$.answer.text"))
    code, output = invoke("check", "chat", "--config", config, *dirs(tmp_path), "--input", '{"user_message": "hi"}')
    assert code == 1
    assert f"Request  POST {upstream_url}/chat" in output and "Authorization: ••••••••" in output
    assert "#1  200" in output and '"reply": "echo' in output
    assert (
        "✗ output" in output
        and "'.answer' matched nothing after '$', which is an object with keys: reply, path" in output
    )
    assert TEST_TOKEN not in output


def test_check_ok_dry_run_and_bad_input(tmp_path: Path, upstream_url: str) -> None:
    config = str(chat_config(tmp_path, upstream_url))
    code, output = invoke("check", "chat", "--config", config, *dirs(tmp_path), "--input", '{"user_message": "hi"}')
    assert code == 0 and "✓ output" in output and output.rstrip().endswith("Result: OK")
    code, output = invoke("check", "chat", "--config", config, *dirs(tmp_path), "--dry-run", "--context", '{"tier": 1}')
    assert code == 0 and "Dry run: nothing was sent." in output and '"tier": "1"' in output
    code, output = invoke("check", "chat", "--config", config, *dirs(tmp_path), "--input", "{oops")
    assert code == 2 and "--input" in output and "not valid JSON" in output
    code, output = invoke("check", "ghost", "--config", config, *dirs(tmp_path))
    assert code == 1 and "no connection 'ghost' (known: chat)" in output


def test_cassettes_list_show_verify(tmp_path: Path) -> None:
    cassettes = tmp_path / "cassettes"
    shutil.copytree(ROOT / "cassettes", cassettes)
    code, output = invoke("cassettes", "list", "--cassettes", str(cassettes))
    assert code == 0 and "     2 interactions  sessions/demo-followup" in output
    code, output = invoke("cassettes", "show", "demo-greeting", "--cassettes", str(cassettes))
    assert (
        code == 0
        and "#0  POST http://demo.local/chat  →  200 OK" in output
        and '"response": "You said: Hello!' in output
    )
    code, output = invoke("cassettes", "verify", "--cassettes", str(cassettes))
    assert code == 0 and output.strip().endswith("3 cassettes, 4 interactions, 0 problems")
    leaky = cassettes / "sessions" / "leaky.yaml"
    leaky.write_text(
        (cassettes / "sessions" / "demo-greeting.yaml")
        .read_text()
        .replace('"\\u2022\\u2022\\u2022\\u2022\\u2022\\u2022\\u2022\\u2022"', "Bearer sk-live-abcdefghijklmnopqrstuv")
    )
    (cassettes / "sessions" / "broken.yaml").write_text("interactions: [")
    code, output = invoke("cassettes", "verify", "--cassettes", str(cassettes))
    assert code == 1
    assert "PROBLEM  sessions/leaky #0: request header authorization is not masked" in output
    assert "PROBLEM  sessions/broken: cassette" in output and "not valid YAML" in output
    code, output = invoke("cassettes", "show", "nothing-here", "--cassettes", str(cassettes))
    assert code == 1 and "no cassette 'nothing-here'" in output


def test_run_draws_a_progress_bar_on_a_terminal(tmp_path: Path, upstream_url: str) -> None:
    import os
    import pty
    import subprocess
    import sys

    dataset = tmp_path / "d.jsonl"
    dataset.write_text("".join(json.dumps({"id": f"t{n}", "input": {"user_message": "x"}}) + "\n" for n in range(3)))
    config = str(chat_config(tmp_path, upstream_url))
    primary, secondary = pty.openpty()
    args = [sys.executable, "-m", "proxy", "run", str(dataset), "--version", "v1", "--config", config, *dirs(tmp_path)]
    done = subprocess.run(args, stdout=subprocess.PIPE, stderr=secondary, timeout=60)
    os.close(secondary)
    terminal = b""
    while True:
        try:
            chunk = os.read(primary, 4096)
        except OSError:
            break
        if not chunk:
            break
        terminal += chunk
    os.close(primary)
    assert done.returncode == 0
    assert b"[" + b"#" * 30 + b"] 3/3 sessions, 0 failed" in terminal  # redrawn in place on the terminal
    assert b"t0: COMPLETED" not in terminal  # the plain per-session lines are for logs only


def test_verify_run_where_there_is_no_cassettes_folder_fails_instead_of_passing_on_nothing(tmp_path: Path) -> None:
    """A CI step run from the wrong folder printed `0 cassettes, 0 interactions, 0 problems` and exited 0."""
    code, output = invoke("cassettes", "verify", "--cassettes", str(tmp_path / "nowhere"))
    assert code == 2
    assert output.strip() == f"proxy: no cassettes folder at {tmp_path / 'nowhere'}: nothing verified"


def test_run_on_a_corrupted_cassette_prints_the_reason_itself(tmp_path: Path, upstream_url: str) -> None:
    """`proxy run` on a hand-edited cassette said "the server log has the details" (there is no server). As a user
    runs it: the session fails with the file, the reason and the way out on its own output."""
    dataset = tmp_path / "d.jsonl"
    dataset.write_text('{"id": "tc-x", "input": {"user_message": "hi"}}\n')
    config = str(chat_config(tmp_path, upstream_url))
    run_args = ["run", str(dataset), "--version", "v1", "--config", config, *dirs(tmp_path)]
    assert proxy_cli(*run_args).returncode == 0
    cassette = tmp_path / "cassettes" / "sessions" / "tc-x.yaml"
    cassette.write_text(cassette.read_text().replace("code: 200", "code: abc"))
    ran = proxy_cli(*run_args, "--record-mode", "none")
    assert ran.returncode == 1, ran.stderr
    assert f"FAILED tc-x: cassette error: cassette {cassette}: interaction 0 is malformed (status code 'abc'" in (
        ran.stdout
    )
    assert "check it with `proxy cassettes verify`, then delete it or re-record it" in ran.stdout
    assert "server log" not in ran.stdout + ran.stderr
