"""Shared pieces: start a server process on a free port, drive it with N concurrent clients."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.servers import wait_answering


def free_port() -> int:
    """A port free at this moment (the benchmarks run one server at a time, never beside pytest-xdist workers;
    some of the tools they start cannot report a port 0 they were given)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def process(args: list[str], health_url: str, env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(
        args, env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_answering(health_url, proc, 30, up=lambda status: status < 500)
        yield proc
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@contextlib.contextmanager
def app_process(app: str, path: str, env: dict[str, str] | None = None) -> Iterator[str]:
    """One of `tests.bench.apps` served by uvicorn on a free port; yields its base URL once `path` answers."""
    port = free_port()
    args = [sys.executable, "-m", "uvicorn", f"tests.bench.apps:{app}", "--port", str(port), "--log-level", "warning"]
    with process(args, f"http://127.0.0.1:{port}{path}", env):
        yield f"http://127.0.0.1:{port}"


def upstream_process() -> contextlib.AbstractContextManager[str]:
    return app_process("upstream", "/chat")


@dataclass
class Load:
    requests: int
    errors: int
    seconds: float
    latencies_ms: list[float]

    @property
    def per_second(self) -> float:
        return self.requests / self.seconds

    def pct(self, q: float) -> float:
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0

    def line(self, label: str) -> str:
        p50 = statistics.median(self.latencies_ms) if self.latencies_ms else 0.0
        return (
            f"{label:<44} {self.per_second:8.0f} req/s   p50 {p50:6.1f} ms   p99 {self.pct(0.99):6.1f} ms"
            f"   errors {self.errors}"
        )


async def drive(send: Callable[[httpx.AsyncClient], Awaitable[httpx.Response]], concurrency: int, total: int) -> Load:
    """`total` requests from `concurrency` clients; each client has its own connection pool."""
    latencies: list[float] = []
    errors = 0
    remaining = total

    async def worker() -> None:
        nonlocal remaining, errors
        async with httpx.AsyncClient(timeout=30) as client:
            while remaining > 0:
                remaining -= 1
                started = time.perf_counter()
                try:
                    response = await send(client)
                    ok = response.status_code < 400 and b'"success":false' not in response.content
                except httpx.HTTPError:
                    ok = False
                latencies.append((time.perf_counter() - started) * 1000)
                errors += not ok

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return Load(total, errors, time.perf_counter() - started, latencies)


def serve_command(config: Path, folder: Path, record_mode: str) -> tuple[list[str], str]:
    """`proxy serve` on a free port with its own data and cassette folders (never the repository's)."""
    port = free_port()
    args = [
        sys.executable,
        "-m",
        "proxy",
        "serve",
        "--config",
        str(config),
        "--port",
        str(port),
        "--data-dir",
        str(folder / "data"),
        "--cassettes",
        str(folder / "cassettes"),
        "--record-mode",
        record_mode,
    ]
    return args, f"http://127.0.0.1:{port}"


def write_config(path: Path, name: str, url: str, *, version: bool = False, **fields: Any) -> Path:
    """A config file at `path` with plain HTTP allowed and one CONVERSATION connection `name` of product `p` to
    `url` with `fields`; with `version`, a version `v1` of it."""
    connection = {"name": name, "product_id": "p", "type": "CONVERSATION", "url": url, **fields}
    data: dict[str, Any] = {"settings": {"allow_http": True}, "connections": [connection]}
    if version:
        data["versions"] = [{"name": "v1", "product_id": "p", "conversation": name}]
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def record_sessions(folder: Path, config: Path, cases: int, turns: int) -> None:
    """`proxy run` in record mode `once` over `cases` test cases of `turns` turns ("case N turn T"), into
    folder/replay/cassettes, where the replaying server of `serve_command(config, folder / "replay", ...)` reads."""
    dataset = folder / "cases.jsonl"
    dataset.write_text(
        "".join(
            json.dumps({"id": f"tc-{n}", "turns": [{"user_message": f"case {n} turn {t}"} for t in range(turns)]})
            + "\n"
            for n in range(cases)
        )
    )
    command = [sys.executable, "-m", "proxy", "run", str(dataset), "--version", "v1", "--config", str(config)]
    command += ["--cassettes", str(folder / "replay" / "cassettes"), "--data-dir", str(folder / "rec")]
    subprocess.run([*command, "--record-mode", "once"], check=True, capture_output=True, timeout=600)
