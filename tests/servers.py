"""Real servers for tests: uvicorn on a loopback port the system picks (port 0), in a background thread or as a
`proxy serve` process. The port is read from the listening socket, never picked beforehand: a port found free and
closed again may be taken by another xdist worker before the server binds it."""

from __future__ import annotations

import asyncio
import contextlib
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO, Any

import httpx
import uvicorn

ANNOUNCED = re.compile(r"proxy listening on (http://\S+)")


@contextlib.contextmanager
def serve_in_thread(app: Any, **options: Any) -> Iterator[str]:
    """Run an ASGI app on 127.0.0.1 until the block ends (`options`: more of uvicorn's); yields its base URL."""
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on", **options)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=lambda: asyncio.run(server.serve()), daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("test server did not start")
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def wait_answering(
    url: str, process: subprocess.Popen[Any], timeout_s: float = 20, up: Callable[[int], bool] = lambda s: s == 200
) -> None:
    """Until `GET url` answers a status `up` accepts; fails if the process dies or the time runs out."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if up(httpx.get(url).status_code):
                return
        except httpx.TransportError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"server at {url} did not start")
        time.sleep(0.05)


def wait_healthy(base_url: str, process: subprocess.Popen[Any], timeout_s: float = 20) -> None:
    """Until `GET /healthz` answers 200; fails if the process dies or the time runs out."""
    wait_answering(f"{base_url}/healthz", process, timeout_s)


def announced_url(process: subprocess.Popen[str], timeout_s: float = 20, seen: list[str] | None = None) -> str:
    """The URL `proxy serve --port 0` prints on its standard output (a text pipe) once it listens; the lines read
    until then are added to `seen`. Fails if the process ends or the time runs out first."""
    assert process.stdout is not None
    stdout: IO[str] = process.stdout
    lines = seen if seen is not None else []
    found: list[str] = []

    def read() -> None:
        for line in stdout:
            lines.append(line)
            if announced := ANNOUNCED.search(line):
                found.append(announced[1])
                return

    reader = threading.Thread(target=read, daemon=True)  # readline has no timeout of its own
    reader.start()
    reader.join(timeout_s)
    if not found:
        raise RuntimeError(f"proxy serve announced no URL within {timeout_s} s: {''.join(lines)[-2000:]}")
    return found[0]


@dataclass
class ServedProcess:
    process: subprocess.Popen[str]
    url: str

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])


@contextlib.contextmanager
def proxy_serving(*args: str, env: dict[str, str] | None = None) -> Iterator[ServedProcess]:
    """`python -m proxy serve --port 0 ARGS`, its logs discarded, from the moment it prints its URL to the block's
    end (`env`: its whole environment, else this process's).

    The block may kill the process itself."""
    process = subprocess.Popen(
        [sys.executable, "-m", "proxy", "serve", "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
        text=True,
    )
    try:
        yield ServedProcess(process, announced_url(process))
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait(timeout=10)
        assert process.stdout is not None
        process.stdout.close()
