"""The README, run as a newcomer runs it, on a fresh clone: `make run`, the "Try it" commands and the SDK
example against it, then the offline walkthrough — and afterwards the clone's `git status` is clean.

The commands are read out of README.md and run as written (only the port is changed, so the test never
fights a server already on 8787). The clone's `.venv` is a link to the venv running this test, so no new
venv is built; `make run` is told not to reinstall into it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.helpers import ROOT
from tests.servers import ANNOUNCED

RUNTIME_STAMP = ".venv/.installed-runtime"  # the Makefile's stamp for the runtime install
# What would change the Makefile's defaults from outside (under `make test`, MAKEFLAGS carries its variables).
MAKE_VARIABLES = {"VENV", "DATA_DIR", "PORT", "PYTHON", "MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES"}
pytestmark = pytest.mark.e2e


def git(cwd: Path, *args: str) -> str:
    done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, f"git {' '.join(args)}: {done.stderr}"
    return done.stdout


def fresh_clone(target: Path) -> Path:
    """A git clone of this repository holding the working tree as it is now (committed or not), committed."""
    assert (ROOT / ".git").exists(), "the walkthrough test needs a git checkout of the repository"
    git(ROOT.parent, "clone", "-q", str(ROOT), str(target))
    files = git(ROOT, "ls-files", "-z", "--cached", "--others", "--exclude-standard").split("\0")
    for name in filter(None, files):
        source, copy = ROOT / name, target / name
        if source.is_file():
            copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, copy)
        else:
            copy.unlink(missing_ok=True)
    git(target, "add", "-A")
    identity = ["-c", "user.name=walkthrough", "-c", "user.email=walkthrough@localhost", "-c", "commit.gpgsign=false"]
    git(target, *identity, "commit", "-q", "--allow-empty", "-m", "the working tree under test")
    venv = Path(sys.prefix)
    assert (venv / "bin" / "proxy").exists(), f"run the tests from the project's venv (no proxy in {venv})"
    (target / ".venv").symlink_to(venv, target_is_directory=True)
    return target


def section(readme: str, title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", readme, re.MULTILINE | re.DOTALL)
    assert match, f"README.md has no section '## {title}'"
    return match.group(1)


def code_blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", text, re.MULTILINE | re.DOTALL)


def shell_lines(block: str) -> list[str]:
    """The block's commands, one per logical line (backslash continuations joined), comments left out."""
    joined = re.sub(r"\\\n\s*", "", block)
    return [line for line in joined.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def run(cwd: Path, command: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=120, check=False)


@contextlib.contextmanager
def make_run(clone: Path, env: dict[str, str], log: Path) -> Iterator[str]:
    """`make run` as the README says, on a port the system picks (PORT=0); yields the URL the server prints once
    it listens. Stopped with Ctrl-C (SIGINT), as a user stops it."""
    with log.open("w") as out:
        process = subprocess.Popen(
            ["make", "-o", RUNTIME_STAMP, "run", "PORT=0"],
            cwd=clone,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 30
        while not (listening := ANNOUNCED.search(log.read_text())):
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"make run printed no URL:\n{log.read_text()}")
            time.sleep(0.05)
        yield listening[1]
    finally:
        with contextlib.suppress(ProcessLookupError):  # gone already when make failed
            os.killpg(process.pid, signal.SIGINT)
        process.wait(timeout=30)
        deadline = time.monotonic() + 30
        # make may exit before the server it started has written its cassettes: wait for the server's last line
        # (or for the whole process group to be gone).
        while "Finished server process" not in log.read_text():
            try:
                os.killpg(process.pid, 0)
            except ProcessLookupError:
                break
            assert time.monotonic() < deadline, f"make run did not stop:\n{log.read_text()}"
            time.sleep(0.05)
    assert "Traceback" not in log.read_text(), log.read_text()


def test_the_readme_on_a_fresh_clone_works_and_leaves_it_clean(tmp_path: Path) -> None:
    clone = fresh_clone(tmp_path / "clone")
    readme = (clone / "README.md").read_text(encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROXY_") and k not in MAKE_VARIABLES}
    env["PYTHONUNBUFFERED"] = "1"
    try_it = section(readme, "Try it")

    with make_run(clone, env, tmp_path / "make-run.log") as base:
        port = base.rsplit(":", 1)[1]
        # "Try it": the curl commands, in one shell (one sets $id for the next).
        curl_block = next(b for b in code_blocks(try_it, "sh") if "testConnection" in b)
        script = "\n".join(line for line in shell_lines(curl_block) if line.strip() != "make run")
        done = run(clone, ["sh", "-ec", script.replace("8787", str(port))], env)
        assert done.returncode == 0, done.stdout + done.stderr
        assert '"success": true' in done.stdout and '"You said: hello"' in done.stdout, done.stdout

        # The SDK example, with the galtea SDK of this venv.
        (sdk,) = code_blocks(try_it, "python")
        done = run(clone, [sys.executable, "-c", sdk.replace("8787", str(port))], env)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "You said: Hello! This is a test message." in done.stdout, done.stdout

        # The shipped demo sessions replay offline, from the copy `make run` serves.
        (version,) = httpx.get(f"{base}/versions", params={"names[]": "demo-v1"}).json()
        created = httpx.post(f"{base}/sessions", json={"versionId": version["id"], "testCaseId": "demo-greeting"})
        turn = httpx.post(
            f"{base}/sessions/{created.json()['id']}/turns", json={"input": {"user_message": "Hello! What can you do?"}}
        ).json()
        assert turn["exchange"]["cassette"] == "hit", turn
        assert turn["actualOutput"] == "You said: Hello! What can you do?"

        # The walkthrough, command by command, while the server still runs (as it may in the user's other shell).
        walkthrough = "\n".join(code_blocks(section(readme, "Evaluate offline: a walkthrough"), "sh"))
        outputs = {}
        for line in shell_lines(walkthrough):
            done = run(clone, ["sh", "-c", line], env)
            broken = " check " in line  # `proxy check` on the deliberately broken mapping: exit 1
            assert done.returncode == (1 if broken else 0), f"{line}\n{done.stdout}{done.stderr}"
            outputs[line] = done.stdout

    def output_of(part: str) -> str:
        found = [out for line, out in outputs.items() if part in line]
        assert len(found) == 1, f"the walkthrough should run one command with {part!r}"
        return found[0]

    assert "4 recorded" in output_of("--record-mode once --out recorded.jsonl")
    assert "4 hits, 0 recorded, 0 misses" in output_of("--record-mode none --out replayed.jsonl")
    checked = output_of("proxy check demo-broken --config examples/broken.yaml")
    assert "✗ output" in checked
    assert "'.reply' matched nothing after '$', which is an object with keys: response, sources, trace" in checked
    # What the README says of the two results files: they differ only in each turn's cassette outcome.
    recorded = (clone / "recorded.jsonl").read_text().replace('"cassette": "recorded"', '"cassette": "hit"')
    assert recorded == (clone / "replayed.jsonl").read_text()
    first = json.loads((clone / "replayed.jsonl").read_text().splitlines()[0])
    assert first["turns"][0]["output"] == "You said: Hello! What can you do?"

    # `make run` recorded into its own copy of the cassettes, and nothing touched the repository.
    assert (clone / ".proxy/cassettes/connections/demo-chat.yaml").exists()
    assert git(clone, "status", "--porcelain", "--untracked-files=all") == ""
