"""Real servers for tests: uvicorn on a free loopback port, in a background thread."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import uvicorn


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def serve_in_thread(app: Any, port: int | None = None, **options: Any) -> Iterator[str]:
    """Run an ASGI app on 127.0.0.1 until the block ends (`options`: more of uvicorn's); yields its base URL."""
    port = port or free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on", **options)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=lambda: asyncio.run(server.serve()), daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("test server did not start")
        time.sleep(0.01)
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


@contextlib.contextmanager
def proxy_serving(port: int, *args: str, env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """`python -m proxy serve --port PORT ARGS`, output discarded, from its first healthy answer to the block's end
    (`env`: its whole environment, else this process's).

    The block may kill the process itself."""
    process = subprocess.Popen(
        [sys.executable, "-m", "proxy", "serve", "--port", str(port), *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    try:
        wait_healthy(f"http://127.0.0.1:{port}", process)
        yield process
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait(timeout=10)
