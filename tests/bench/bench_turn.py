"""The turn route in replay, from one run: server CPU per replayed turn and the rate against a bare endpoint.

Clients over lean keep-alive connections create sessions, play their recorded turns and finish them, for
`BENCH_TURN_SECONDS` (default 30); the server's CPU (user + system, from /proc) over that time divided by
the turns played is the CPU per turn with its share of create and finish. The bare Starlette endpoint (the
upstream) is driven by wrk for as long in the same run: replay turns/s over its req/s is the ratio.
`python -m tests.bench.bench_turn`; `BENCH_TURN_SECONDS=10` for a quick look; `BENCH_TURN_PROFILE=out.txt`
records the server with py-spy during the replay (raw collapsed stacks, 200 samples/s).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from tests.bench.bench_load import BODY, cpu_seconds, load_config, replay_sessions, wrk
from tests.bench.harness import process, record_sessions, serve_command, upstream_process

SECONDS = float(os.environ.get("BENCH_TURN_SECONDS", "30"))
PROFILE = os.environ.get("BENCH_TURN_PROFILE")
CLIENTS, TURNS = 32, 5


def profiler(pid: int, out: str) -> subprocess.Popen[bytes]:
    py_spy = Path(sys.executable).with_name("py-spy")
    command = [str(py_spy), "record", "-r", "200", "--nonblocking", "-f", "raw", "-o", out, "-p", str(pid)]
    return subprocess.Popen([*command, "-d", f"{SECONDS:.0f}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def run() -> list[str]:
    with upstream_process() as upstream, tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        config = load_config(tmp, upstream)
        record_sessions(tmp, config, CLIENTS, TURNS)
        bare = wrk(f"{upstream}/chat", BODY, SECONDS)
        args, base = serve_command(config, tmp / "replay", "none")
        with process(args, f"{base}/healthz") as proxy_process:
            version = httpx.get(f"{base}/versions").json()[0]["id"]
            spy = profiler(proxy_process.pid, PROFILE) if PROFILE else None
            started, cpu = time.perf_counter(), cpu_seconds(proxy_process.pid)
            latencies, errors, _ = asyncio.run(replay_sessions(base, version, SECONDS, CLIENTS))
            elapsed = time.perf_counter() - started
            cpu = cpu_seconds(proxy_process.pid) - cpu
            if spy is not None:
                spy.wait(timeout=SECONDS + 30)
    turns = len(latencies)
    rate = turns / elapsed
    return [
        f"Turn route in replay: {CLIENTS} clients, sessions of {TURNS} turns created and finished, {SECONDS:.0f} s",
        f"  {turns} turns, {errors} errors, {rate:.0f} turns/s; server CPU {cpu / turns * 1e6:.0f} µs per turn"
        f" (create and finish shares included; target <= 500)",
        f"  bare Starlette endpoint (wrk): {bare:.0f} req/s; replay / bare = {rate / bare:.2f} (target >= 0.25)",
    ]


if __name__ == "__main__":
    print("\n".join(run()))
