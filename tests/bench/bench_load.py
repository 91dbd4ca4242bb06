"""Load, all in one run on this machine:
- 200 concurrent sessions replaying for 60 s through the HTTP API: errors, p50/p99, turns/s, peak RSS;
- the forward route (live, record mode off) against calling the upstream directly, a minimal Starlette +
  httpx pass-through proxy, and mitmproxy in reverse mode, all driven by wrk with the same request;
- a bare Starlette endpoint returning a small JSON body (the upstream itself), the replay target's yardstick.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from tests.bench.harness import process, serve_command, upstream_process
from tests.servers import free_port

ROOT = Path(__file__).resolve().parents[2]
MITMDUMP = ROOT / ".venv-mitm" / "bin" / "mitmdump"
REPLAY_SECONDS = float(os.environ.get("PROXY_LOAD_SECONDS", "60"))
SESSIONS, TURNS = 200, 5
WRK_SECONDS, WRK_CONNECTIONS = 10, 32


def wrk(url: str, body: str) -> float:
    """Requests per second from wrk, POSTing a small JSON body."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(
            f'wrk.method = "POST"\nwrk.body = {json.dumps(body)}\nwrk.headers["Content-Type"] = "application/json"\n'
        )
    out = subprocess.run(
        ["wrk", "-t2", f"-c{WRK_CONNECTIONS}", f"-d{WRK_SECONDS}s", "-s", script.name, url],
        capture_output=True,
        text=True,
        timeout=WRK_SECONDS + 30,
    ).stdout
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        raise RuntimeError(f"{url}: {errors.group(1)} non-2xx answers under load")
    return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]


def peak_rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) / 1024  # type: ignore[union-attr]


async def replay_sessions(base: str, version: str, seconds: float) -> tuple[list[float], int, int]:
    latencies: list[float] = []
    errors = 0
    deadline = time.monotonic() + seconds

    async def client_loop(n: int) -> None:
        nonlocal errors
        async with httpx.AsyncClient(base_url=base, timeout=60) as client:
            while time.monotonic() < deadline:
                session = (await client.post("/sessions", json={"versionId": version, "testCaseId": f"tc-{n}"})).json()
                for turn in range(TURNS):
                    started = time.perf_counter()
                    answer = await client.post(
                        f"/sessions/{session['id']}/turns", json={"input": {"user_message": f"case {n} turn {turn}"}}
                    )
                    latencies.append((time.perf_counter() - started) * 1000)
                    ok = answer.status_code == 201 and answer.json()["exchange"]["cassette"] == "hit"
                    errors += not ok
                await client.patch(f"/sessions/{session['id']}/finish", json={})

    await asyncio.gather(*(client_loop(n) for n in range(SESSIONS)))
    return latencies, errors, len(latencies)


def run() -> list[str]:
    lines = []
    body = json.dumps({"message": "hello"})
    with upstream_process() as upstream, tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        config = tmp / "load.yaml"
        config.write_text(
            "settings: {allow_http: true}\n"
            "connections:\n"
            f"  - {{name: bench, product_id: p, type: CONVERSATION, url: '{upstream}/chat', auth_type: NONE,\n"
            '      input_template: \'{"message": "{{ input.user_message }}"}\', output_mapping: {output: $.reply}}\n'
            "versions:\n  - {name: v1, product_id: p, conversation: bench}\n"
        )
        # Record the sessions the replay load will use.
        dataset = tmp / "load.jsonl"
        dataset.write_text(
            "".join(
                json.dumps({"id": f"tc-{n}", "turns": [{"user_message": f"case {n} turn {t}"} for t in range(TURNS)]})
                + "\n"
                for n in range(SESSIONS)
            )
        )
        subprocess.run(
            [
                sys.executable,
                "-m",
                "proxy",
                "run",
                str(dataset),
                "--version",
                "v1",
                "--config",
                str(config),
                "--cassettes",
                str(tmp / "replay" / "cassettes"),  # where the replaying server reads them
                "--data-dir",
                str(tmp / "rec"),
                "--record-mode",
                "once",
            ],
            check=True,
            capture_output=True,
            timeout=600,
        )

        bare = wrk(f"{upstream}/chat", body)
        args, base = serve_command(config, tmp / "replay", "none")
        with process(args, f"{base}/healthz") as proxy_process:
            version = httpx.get(f"{base}/versions").json()[0]["id"]
            started = time.perf_counter()
            latencies, errors, turns = asyncio.run(replay_sessions(base, version, REPLAY_SECONDS))
            elapsed = time.perf_counter() - started
            rss = peak_rss_mb(proxy_process.pid)
        ordered = sorted(latencies)
        replay_rate = turns / elapsed
        lines += [
            f"Replay: {SESSIONS} concurrent sessions x {TURNS} turns, repeated for {REPLAY_SECONDS:.0f} s, over HTTP",
            f"  {turns} turns, {errors} errors, {replay_rate:.0f} turns/s, p50 {ordered[len(ordered) // 2]:.1f} ms,"
            f" p99 {ordered[int(len(ordered) * 0.99)]:.1f} ms, peak RSS {rss:.0f} MB",
            f"  bare Starlette endpoint (the upstream, wrk): {bare:.0f} req/s;"
            f" replay / bare = {replay_rate / bare:.2f} (target >= 0.25)",
        ]

        args, base = serve_command(config, tmp / "forward", "off")
        with process(args, f"{base}/healthz"):
            forward = wrk(f"{base}/forward/bench/chat", body)
        port = free_port()
        env = {"PASSTHROUGH_TARGET": upstream}
        pass_args = [
            sys.executable,
            "-m",
            "uvicorn",
            "tests.bench.apps:passthrough",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ]
        with process(pass_args, f"http://127.0.0.1:{port}/chat", env=env):
            passthrough = wrk(f"http://127.0.0.1:{port}/chat", body)
        mitm = None
        if MITMDUMP.exists():
            port = free_port()
            with process(
                [str(MITMDUMP), "--mode", f"reverse:{upstream}", "-p", str(port), "-q"], f"http://127.0.0.1:{port}/chat"
            ):
                mitm = wrk(f"http://127.0.0.1:{port}/chat", body)
        lines += [
            f"Forward route, live (wrk, {WRK_CONNECTIONS} connections, {WRK_SECONDS} s each)",
            f"  upstream direct                        {bare:8.0f} req/s",
            f"  proxy /forward (record mode off)       {forward:8.0f} req/s   {forward / bare:.2f} of direct",
            f"  minimal Starlette + httpx pass-through {passthrough:8.0f} req/s"
            f"   forward / it = {forward / passthrough:.2f} (target >= 1)",
            f"  mitmproxy reverse mode                 {mitm:8.0f} req/s"
            f"   forward / it = {forward / mitm:.2f} (target >= 2)"
            if mitm
            else "  mitmproxy reverse mode: not installed (make bench installs it into .venv-mitm)",
        ]
    return lines


if shutil.which("wrk") is None:
    raise SystemExit("the load benchmark needs wrk: apt-get install wrk")
