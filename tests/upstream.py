"""A real upstream test server that records every request it receives and answers from a script.

Tests assert on exactly what arrived (method, path, query, headers, body). A script is a list of
replies for a path, used in order (the last one repeats); without one, the server echoes.
`/echo-auth/<encoding>` answers the token of the Authorization header it received, encoded as
`tests.encodings.ECHOES[encoding]` says (an upstream that echoes a credential back).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from tests.encodings import ECHOES
from tests.servers import serve_in_thread


@dataclass
class Received:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Reply:
    status: int = 200
    json: Any = None
    text: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # before the headers
    trickle: float = 0.0  # between body chunks (slow body)
    chunks: int = 1


class Upstream:
    def __init__(self) -> None:
        self.received: list[Received] = []
        self._scripts: dict[str, list[Reply]] = {}
        self._handlers: list[tuple[str, Callable[[Received], Reply]]] = []
        self._lock = threading.Lock()
        self.app = Starlette(
            routes=[Route("/{path:path}", self._handle, methods=["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"])]
        )

    def script(self, path: str, *replies: Reply) -> None:
        with self._lock:
            self._scripts[path] = list(replies)

    def handle(self, prefix: str, handler: Callable[[Received], Reply]) -> None:
        """Answer every request under `prefix` with `handler(received)` (stateful fake APIs)."""
        with self._lock:
            self._handlers = [(p, h) for p, h in self._handlers if p != prefix] + [(prefix, handler)]

    def requests_to(self, path: str) -> list[Received]:
        return [r for r in self.received if r.path == path]

    def clear(self) -> None:
        with self._lock:
            self.received.clear()
            self._scripts.clear()
            self._handlers.clear()

    def _next_reply(self, path: str) -> Reply | None:
        with self._lock:
            replies = self._scripts.get(path)
            if not replies:
                return None
            return replies.pop(0) if len(replies) > 1 else replies[0]

    async def _handle(self, request: Request) -> Response:
        body = await request.body()
        path = "/" + request.path_params["path"]
        received = Received(request.method, path, request.url.query, dict(request.headers), body)
        with self._lock:
            self.received.append(received)
            matching = [(len(prefix), h) for prefix, h in self._handlers if path.startswith(prefix)]
            handler = max(matching, key=lambda m: m[0])[1] if matching else None  # the most specific prefix
        if path.startswith("/echo-auth/"):
            return self._echo_auth(received, path.removeprefix("/echo-auth/"))
        reply = handler(received) if handler else self._next_reply(path)
        if reply is None:
            return Response(
                json.dumps({"reply": f"echo {body.decode(errors='replace')}", "path": path}),
                media_type="application/json",
            )
        if reply.delay:
            await asyncio.sleep(reply.delay)
        content = reply.text if reply.text is not None else json.dumps(reply.json)
        media = "application/json" if reply.text is None else "text/plain"
        if reply.trickle:
            data = content.encode()
            size = max(1, len(data) // reply.chunks)

            async def pieces() -> Any:
                for start in range(0, len(data), size):
                    yield data[start : start + size]
                    await asyncio.sleep(reply.trickle)

            return StreamingResponse(pieces(), status_code=reply.status, headers=reply.headers, media_type=media)
        return Response(content, status_code=reply.status, headers=reply.headers, media_type=media)

    @staticmethod
    def _echo_auth(received: Received, encoding: str) -> Response:
        token = received.headers.get("authorization", "").partition(" ")[2]
        return Response(ECHOES[encoding](token), media_type="application/json")  # no charset named


@contextlib.contextmanager
def serve_upstream() -> Iterator[tuple[Upstream, str]]:
    """A fresh `Upstream` on its own loopback port until the block ends: (upstream, base URL)."""
    upstream = Upstream()
    with serve_in_thread(upstream.app) as url:
        yield upstream, url


def chat_completion(received: Received, **fields: Any) -> Reply:
    """An OpenAI-shaped chat completion answering the first message with `answer to <its content>`, with `fields`
    besides."""
    content = received.json["messages"][0]["content"]
    message = {"role": "assistant", "content": f"answer to {content}"}
    choice = {"index": 0, "finish_reason": "stop", "message": message}
    return Reply(
        json={
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 1,
            "model": "m",
            **fields,
            "choices": [choice],
        }
    )


class Threads:
    """A thread-style chat API: POST /threads → id; POST /threads/{id}/messages; DELETE /threads/{id}."""

    def __init__(self, upstream: Upstream) -> None:
        self.ids = itertools.count(1)
        self.messages: dict[str, list[str]] = {}
        upstream.handle("/threads", self)

    def __call__(self, request: Received) -> Reply:
        parts = request.path.strip("/").split("/")
        if request.method == "POST" and parts == ["threads"]:
            thread_id = f"th_{next(self.ids)}"
            self.messages[thread_id] = []
            return Reply(json={"id": thread_id, "plan": "gold"})
        thread_id = parts[1]
        if thread_id not in self.messages:
            return Reply(status=404, json={"detail": f"no thread {thread_id!r}"})
        if request.method == "DELETE":
            return Reply(json={"deleted": thread_id})
        message = request.json["message"]
        self.messages[thread_id].append(message)
        return Reply(
            json={
                "reply": f"[{thread_id}#{len(self.messages[thread_id])}] {message}",
                "docs": [f"doc-{thread_id}"],
                "spans": [{"name": "llm", "type": "GENERATION", "latencyMs": 5}],
            }
        )
