"""`proxy run` of 1,000 test cases x 3 turns: recorded live against the test upstream (its own process),
then replayed offline; turns per second of each, as a ratio, from one run. Wall time includes start-up."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.bench.harness import upstream_process, write_config

CASES, TURNS = 1000, 3


def timed_run(cwd: Path, mode: str) -> tuple[float, str]:
    args = [
        sys.executable,
        "-m",
        "proxy",
        "run",
        "dataset.jsonl",
        "--version",
        "v1",
        "--config",
        "bench.yaml",
        "--record-mode",
        mode,
        "--concurrency",
        "16",
        "--out",
        f"{mode}.jsonl",
    ]
    started = time.perf_counter()
    done = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=1800)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"proxy run {mode} failed: {done.stdout[-2000:]} {done.stderr[-2000:]}")
    return elapsed, done.stdout


def run() -> list[str]:
    with upstream_process() as upstream, tempfile.TemporaryDirectory() as tmp:
        cwd = Path(tmp)
        template = '{"message": "{{ input.user_message }}", "n": {{ past_turns | length }}}'
        mapping = {"output": "$.reply", "retrieval_context": "$.docs"}
        fields = {"auth_type": "NONE", "input_template": template, "output_mapping": mapping}
        write_config(cwd / "bench.yaml", "bench", f"{upstream}/chat", version=True, **fields)
        with open(cwd / "dataset.jsonl", "w") as f:
            for n in range(CASES):
                turns = [{"user_message": f"case {n} turn {t}"} for t in range(TURNS)]
                f.write(json.dumps({"id": f"tc-{n}", "turns": turns}) + "\n")
        live_s, _ = timed_run(cwd, "once")
        replay_s, summary = timed_run(cwd, "none")
    turns = CASES * TURNS
    assert f"{turns} hits" in summary, summary
    return [
        f"proxy run, {CASES} test cases x {TURNS} turns, concurrency 16 (wall time, start-up included)",
        f"  recorded live against the test upstream   {live_s:6.1f} s   {turns / live_s:7.0f} turns/s",
        f"  replayed offline (--record-mode none)     {replay_s:6.1f} s   {turns / replay_s:7.0f} turns/s",
        f"  ratio replay / live: {live_s / replay_s:.2f}",
    ]
