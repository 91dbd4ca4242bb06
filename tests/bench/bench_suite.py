"""A user's test suite under three recorders: this project's pytest plugin, pytest-recording (vcrpy) and
cassetter (a Rust core). A generated project of 300 tests, half a JSON POST and half a streamed (SSE) POST,
all through one shared httpx client, is recorded against a real upstream (its own process), then replayed
with the upstream stopped, serial and with `-n 2`; pytest alone on the same tests with no HTTP is the floor.

Each tool runs with the others turned off (pytest-recording and cassetter both claim `--record-mode` and
`@pytest.mark.vcr`), from `.venv-suite` (`make bench` makes it: the three installed together, with this
package, and kept out of the dev venv, where the two would stop every test run).

`python -m tests.bench.bench_suite [--baseline REF]` prints wall times, ms per test over the floor and the
ratios of the plugin's replay to the others'; `--baseline REF` adds the plugin as it was at git REF (its
pytest_plugin.py, run against today's package), measured in the same run."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tests.bench.harness import app_process

TESTS = 300
MODULES = 6  # 50 tests a module
UPSTREAM_NAME = "up"
RUN_TIMEOUT_S = 300
REPO = Path(__file__).resolve().parents[2]
PYTHON = os.environ.get("SUITE_PYTHON", str(REPO / ".venv-suite" / "bin" / "python"))
# Plugins of this venv no benchmarked run needs, off in every run (the floor too), so each pays the same.
QUIET = ("cacheprovider", "schemathesis", "hypothesispytest", "asyncio", "anyio", "randomly")
TOOLS = ("proxy", "recording", "cassetter")

CALLS = """
import os

import httpx

BASE = os.environ.get("UP_URL", "")
OFF = os.environ.get("BENCH_NO_HTTP") == "1"
client = httpx.Client(timeout=30)  # one client for the whole suite, as an app's module-level client is


def post(n):
    if OFF:
        return
    answer = client.post(f"{BASE}/chat", json={"message": f"m{n}"})
    assert answer.json()["reply"] == f"echo m{n}", answer.text


def stream(n):
    if OFF:
        return
    with client.stream("POST", f"{BASE}/v1/stream?chunks=5", json={"n": n}) as answer:
        lines = [line for line in answer.iter_lines() if line.startswith("data: ")]
    assert len(lines) == 5, lines
"""


def write_project(folder: Path, plugin_ini: str = "") -> None:
    folder.mkdir(parents=True)
    (folder / "calls.py").write_text(CALLS)
    (folder / "pytest.ini").write_text(
        f"[pytest]\nmarkers =\n    vcr: recorded by pytest-recording or cassetter\n{plugin_ini}"
    )
    per_module = TESTS // MODULES
    for m in range(MODULES):
        body = ["import pytest", "", "from calls import post, stream", "", "pytestmark = pytest.mark.vcr", ""]
        for i in range(m * per_module, (m + 1) * per_module):
            call = "post" if i % 2 == 0 else "stream"
            body += ["", f"def test_{call}_{i}():", f"    {call}({i})", ""]
        (folder / f"test_suite_{m}.py").write_text("\n".join(body))


@dataclass
class Tool:
    name: str
    args: Callable[[str, str], list[str]]  # (record mode, upstream URL) -> pytest arguments
    env: Callable[[str], dict[str, str]]  # upstream URL -> environment
    off: tuple[str, ...]  # plugins turned off in its runs


def _plugin_args(mode: str, upstream: str) -> list[str]:
    return ["--proxy-record-mode", mode, "--proxy-upstream", f"{UPSTREAM_NAME}={upstream}"]


def tools(baseline: str | None) -> list[Tool]:
    env_var = f"--proxy-env=UP_URL={UPSTREAM_NAME}"
    found = [
        Tool("proxy", lambda mode, up: [*_plugin_args(mode, up), env_var], lambda up: {}, ("recording", "cassetter")),
        Tool(
            "pytest-recording",
            lambda mode, up: [f"--record-mode={mode}"],
            lambda up: {"UP_URL": up},
            ("proxy", "cassetter"),
        ),
        Tool(
            "cassetter", lambda mode, up: [f"--record-mode={mode}"], lambda up: {"UP_URL": up}, ("proxy", "recording")
        ),
    ]
    if baseline:
        found.insert(
            1,
            Tool(
                f"proxy@{baseline}",
                lambda mode, up: ["-p", "proxy_baseline_plugin", *_plugin_args(mode, up), env_var],
                lambda up: {},
                ("proxy", "recording", "cassetter"),
            ),
        )
    return found


def pytest_seconds(project: Path, args: list[str], off: tuple[str, ...], env: dict[str, str], path: str = "") -> float:
    """Wall time of one pytest run (interpreter start included, as a user waits for it); it must pass."""
    command = [PYTHON, "-m", "pytest", "-q", "-p", "no:warnings", *args]
    for plugin in (*QUIET, *off):
        command += ["-p", f"no:{plugin}"]
    environment = {**os.environ, **env, "PYTHONPATH": os.pathsep.join(p for p in (str(project), path) if p)}
    environment.pop("PYTHONDONTWRITEBYTECODE", None)  # a user's runs import from cached bytecode
    started = time.perf_counter()
    result = subprocess.run(
        command, cwd=project, env=environment, capture_output=True, text=True, timeout=RUN_TIMEOUT_S
    )
    seconds = time.perf_counter() - started
    if result.returncode != 0 or f"{TESTS} passed" not in result.stdout:
        raise RuntimeError(f"pytest {' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return seconds


def baseline_plugin(folder: Path, ref: str) -> str:
    """The plugin module as it was at `ref`, importable as `proxy_baseline_plugin` (a PYTHONPATH entry)."""
    source = subprocess.run(
        ["git", "-C", str(REPO), "show", f"{ref}:proxy/pytest_plugin/hooks.py"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "proxy_baseline_plugin.py").write_text(source)
    return str(folder)


def measure(baseline: str | None = None) -> dict[str, dict[str, float]]:
    """Seconds per tool: record (serial), replay (serial) and replay -n 2; "pytest" is the floor."""
    times: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-suite-") as temporary:
        root = Path(temporary)
        extra_path = baseline_plugin(root / "baseline", baseline) if baseline else ""
        floor = root / "floor"
        write_project(floor)
        projects = {}
        with app_process("suite", "/chat") as upstream:
            for tool in tools(baseline):
                project = root / tool.name.replace("@", "-")
                write_project(project)
                projects[tool.name] = project
                args = tool.args("once", upstream)
                times[tool.name] = {"record": pytest_seconds(project, args, tool.off, tool.env(upstream), extra_path)}
        # The upstream is stopped: every run below replays or fails.
        no_http = {"BENCH_NO_HTTP": "1"}
        times["pytest"] = {
            "replay": pytest_seconds(floor, [], TOOLS, no_http),
            "replay -n 2": pytest_seconds(floor, ["-n", "2", "-p", "xdist"], TOOLS, no_http),
        }
        for tool in tools(baseline):
            env, args = tool.env(upstream), tool.args("none", upstream)
            times[tool.name]["replay"] = pytest_seconds(projects[tool.name], args, tool.off, env, extra_path)
            times[tool.name]["replay -n 2"] = pytest_seconds(
                projects[tool.name], [*args, "-n", "2", "-p", "xdist"], tool.off, env, extra_path
            )
    return times


def report(times: dict[str, dict[str, float]]) -> list[str]:
    floor = times["pytest"]
    lines = [
        f"A generated suite of {TESTS} tests (half a JSON POST, half a streamed POST, one shared httpx client):",
        f"  pytest alone, no HTTP: {floor['replay']:.2f} s serial, {floor['replay -n 2']:.2f} s with -n 2",
    ]
    for name, row in times.items():
        if name == "pytest":
            continue
        over = {kind: (row[kind] - floor[kind]) / TESTS * 1000 for kind in ("replay", "replay -n 2")}
        lines.append(
            f"  {name:<22} record {row['record']:5.2f} s   replay {row['replay']:5.2f} s ({over['replay']:4.1f} ms/test"
            f" over pytest)   -n 2 {row['replay -n 2']:5.2f} s ({over['replay -n 2']:4.1f} ms/test)"
        )
    for other in ("pytest-recording", "cassetter"):
        for kind in ("replay", "replay -n 2"):
            lines.append(
                f"  proxy / {other} {kind}: {times['proxy'][kind] / times[other][kind]:.2f}"
                + ("  (must stay <= 1.0)" if other == "pytest-recording" else "")
            )
    return lines


def run(baseline: str | None = None) -> list[str]:
    return report(measure(baseline))


if __name__ == "__main__":
    given = sys.argv[1:]
    print("\n".join(run(given[1] if given[:1] == ["--baseline"] and len(given) > 1 else None)))
