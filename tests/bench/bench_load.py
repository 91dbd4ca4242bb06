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
import tempfile
import time
from pathlib import Path

import httpx

from tests.bench.harness import (
    app_process,
    free_port,
    process,
    record_sessions,
    serve_command,
    upstream_process,
    write_config,
)
from tests.bench.rawhttp import RawConnection

ROOT = Path(__file__).resolve().parents[2]
MITMDUMP = ROOT / ".venv-mitm" / "bin" / "mitmdump"
REPLAY_SECONDS = float(os.environ.get("PROXY_LOAD_SECONDS", "60"))
SESSIONS, TURNS = 200, 5
WRK_SECONDS, WRK_CONNECTIONS = 10, 32
BODY = json.dumps({"message": "hello"})


def wrk(url: str, body: str, seconds: float = WRK_SECONDS) -> float:
    """Requests per second from wrk, POSTing a small JSON body."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(
            f'wrk.method = "POST"\nwrk.body = {json.dumps(body)}\nwrk.headers["Content-Type"] = "application/json"\n'
        )
    out = subprocess.run(
        ["wrk", "-t2", f"-c{WRK_CONNECTIONS}", f"-d{seconds:.0f}s", "-s", script.name, url],
        capture_output=True,
        text=True,
        timeout=seconds + 30,
    ).stdout
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        raise RuntimeError(f"{url}: {errors.group(1)} non-2xx answers under load")
    return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) / 1024  # type: ignore[union-attr]


async def replay_sessions(
    base: str, version: str, seconds: float, sessions: int = SESSIONS
) -> tuple[list[float], int, bytes]:
    """`sessions` clients, each creating a session, playing its TURNS turns and finishing it, until the time is up.
    Returns the turn latencies, the errors and one turn's answer."""
    host, port = base.removeprefix("http://").split(":")
    latencies: list[float] = []
    errors = 0
    sample = b""
    deadline = time.monotonic() + seconds

    async def client_loop(n: int) -> None:
        nonlocal errors, sample
        async with RawConnection(host, int(port)) as client:
            while time.monotonic() < deadline:
                status, raw = await client.request("POST", "/sessions", {"versionId": version, "testCaseId": f"tc-{n}"})
                session_id = json.loads(raw)["id"]
                for turn in range(TURNS):
                    started = time.perf_counter()
                    status, raw = await client.request(
                        "POST", f"/sessions/{session_id}/turns", {"input": {"user_message": f"case {n} turn {turn}"}}
                    )
                    latencies.append((time.perf_counter() - started) * 1000)
                    errors += not (status == 201 and json.loads(raw)["exchange"]["cassette"] == "hit")
                    sample = raw
                await client.request("PATCH", f"/sessions/{session_id}/finish", {})

    await asyncio.gather(*(client_loop(n) for n in range(sessions)))
    return latencies, errors, sample


def load_config(folder: Path, upstream: str) -> Path:
    template = '{"message": "{{ input.user_message }}"}'
    fields = {"auth_type": "NONE", "input_template": template, "output_mapping": {"output": "$.reply"}}
    return write_config(folder / "load.yaml", "bench", f"{upstream}/chat", version=True, **fields)


def forward_route(upstream: str, config: Path, folder: Path, body: str, bare: float) -> list[str]:
    """The forward route (live, record mode off) against the minimal pass-through and mitmproxy."""
    args, base = serve_command(config, folder / "forward", "off")
    with process(args, f"{base}/healthz"):
        forward = wrk(f"{base}/forward/bench/chat", body)
    with app_process("passthrough", "/chat", {"PASSTHROUGH_TARGET": upstream}) as passthrough_base:
        passthrough = wrk(f"{passthrough_base}/chat", body)
    mitm = None
    if MITMDUMP.exists():
        port = free_port()
        with process(
            [str(MITMDUMP), "--mode", f"reverse:{upstream}", "-p", str(port), "-q"], f"http://127.0.0.1:{port}/chat"
        ):
            mitm = wrk(f"http://127.0.0.1:{port}/chat", body)
    return [
        f"Forward route, live (wrk, {WRK_CONNECTIONS} connections, {WRK_SECONDS} s each)",
        f"  upstream direct                        {bare:8.0f} req/s",
        f"  proxy /forward (record mode off)       {forward:8.0f} req/s   {forward / bare:.2f} of direct",
        f"  minimal Starlette + httpx pass-through {passthrough:8.0f} req/s"
        f"   forward / it = {forward / passthrough:.2f} (target >= 3)",
        f"  mitmproxy reverse mode                 {mitm:8.0f} req/s"
        f"   forward / it = {forward / mitm:.2f} (target >= 3)"
        if mitm
        else "  mitmproxy reverse mode: not installed (make bench installs it into .venv-mitm)",
    ]


def forward_replay(upstream: str, config: Path, folder: Path, body: str, bare: float) -> list[str]:
    """The forward route replaying one recorded answer (record mode none) against the bare endpoint."""
    args, base = serve_command(config, folder / "forward-replay", "once")
    with process(args, f"{base}/healthz"):  # record the answer; the server flushes its cassette when it stops
        httpx.post(f"{base}/forward/bench/chat", content=body, headers={"Content-Type": "application/json"})
    args, base = serve_command(config, folder / "forward-replay", "none")
    with process(args, f"{base}/healthz"):
        replayed = wrk(f"{base}/forward/bench/chat", body)
    return [
        f"Forward route in replay (wrk, {WRK_CONNECTIONS} connections, {WRK_SECONDS} s, record mode none)",
        f"  bare Starlette endpoint                {bare:8.0f} req/s",
        f"  proxy /forward replaying               {replayed:8.0f} req/s   {replayed / bare:.2f} of it (target >= 0.4)",
    ]


def run() -> list[str]:
    lines = []
    with upstream_process() as upstream, tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        config = load_config(tmp, upstream)
        record_sessions(tmp, config, SESSIONS, TURNS)  # the sessions the replay load will use

        bare = wrk(f"{upstream}/chat", BODY)
        args, base = serve_command(config, tmp / "replay", "none")
        with process(args, f"{base}/healthz") as proxy_process:
            version = httpx.get(f"{base}/versions").json()[0]["id"]
            started, proxy_cpu, driver_cpu = time.perf_counter(), cpu_seconds(proxy_process.pid), time.process_time()
            latencies, errors, sample = asyncio.run(replay_sessions(base, version, REPLAY_SECONDS))
            elapsed = time.perf_counter() - started
            proxy_cpu = (cpu_seconds(proxy_process.pid) - proxy_cpu) / elapsed * 100
            driver_cpu = (time.process_time() - driver_cpu) / elapsed * 100
            rss = peak_rss_mb(proxy_process.pid)
        (tmp / "turn.json").write_bytes(sample)
        with app_process("canned_turn", "/turn", {"CANNED_TURN": str(tmp / "turn.json")}) as canned_base:
            canned = wrk(f"{canned_base}/turn", json.dumps({"input": {"user_message": "case 1 turn 2"}}))
        ordered = sorted(latencies)
        turns = len(latencies)
        replay_rate = turns / elapsed
        lines += [
            f"Replay: {SESSIONS} concurrent sessions x {TURNS} turns, repeated for {REPLAY_SECONDS:.0f} s, over HTTP",
            f"  {turns} turns, {errors} errors, {replay_rate:.0f} turns/s, p50 {ordered[len(ordered) // 2]:.1f} ms,"
            f" p99 {ordered[int(len(ordered) * 0.99)]:.1f} ms, peak RSS {rss:.0f} MB",
            f"  CPU: proxy {proxy_cpu:.0f}% of a core, the load driver {driver_cpu:.0f}%",
            f"  bare Starlette endpoint (the upstream, wrk): {bare:.0f} req/s;"
            f" replay / bare = {replay_rate / bare:.2f} (target >= 0.25)",
            f"  Starlette endpoint answering a canned turn, no work (wrk): {canned:.0f} req/s;"
            f" replay / it = {replay_rate / canned:.2f}",
        ]

        lines += forward_replay(upstream, config, tmp, BODY, bare)
        lines += forward_route(upstream, config, tmp, BODY, bare)
    return lines


if shutil.which("wrk") is None:
    raise SystemExit("the load benchmark needs wrk: apt-get install wrk")

if __name__ == "__main__":  # the forward route alone: python -m tests.bench.bench_load
    with upstream_process() as upstream_url, tempfile.TemporaryDirectory() as folder_name:
        folder = Path(folder_name)
        direct = wrk(f"{upstream_url}/chat", BODY)
        print("\n".join(forward_route(upstream_url, load_config(folder, upstream_url), folder, BODY, direct)))
