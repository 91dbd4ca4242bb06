"""A real upstream that streams: OpenAI- and Anthropic-shaped server-sent events with real delays between the
chunks, one that cuts its stream off mid-body, and a plain JSON endpoint (a FINALIZATION target). It notes
when it sent each chunk, so a test can tell a relayed stream from a buffered one."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

WORDS = ["Once ", "upon ", "a ", "time ", "there ", "was ", "a ", "stream."]
USAGE = {"prompt_tokens": 3, "completion_tokens": len(WORDS), "total_tokens": 3 + len(WORDS)}


def openai_chunk(content: str | None = None, usage: dict[str, int] | None = None) -> dict[str, Any]:
    choices = [] if content is None else [{"index": 0, "delta": {"content": content}, "finish_reason": None}]
    chunk: dict[str, Any] = {"id": "c-1", "object": "chat.completion.chunk", "created": 0, "model": "m"}
    return {**chunk, "choices": choices, **({"usage": usage} if usage else {})}


def openai_events(words: list[str]) -> list[bytes]:
    events = [openai_chunk(w) for w in words] + [openai_chunk(usage=USAGE)]
    return [f"data: {json.dumps(e)}\n\n".encode() for e in events] + [b"data: [DONE]\n\n"]


def secret_echo_chunks(secret: str) -> list[bytes]:
    """An OpenAI event that echoes `secret`, cut in two inside the secret, then `[DONE]`."""
    echo = f'data: {{"choices": [{{"index": 0, "delta": {{"content": "your key is {secret} ok"}}}}]}}\n\n'.encode()
    cut = echo.index(secret.encode()) + 7
    return [echo[:cut], echo[cut:], b"data: [DONE]\n\n"]


def anthropic_events(words: list[str]) -> list[bytes]:
    message = {"id": "msg-1", "type": "message", "role": "assistant", "content": [], "model": "claude"}
    message |= {"stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 3, "output_tokens": 0}}
    events: list[tuple[str, dict[str, Any]]] = [
        ("message_start", {"type": "message_start", "message": message}),
        (
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        ),
    ]
    for word in words:
        delta = {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": word}}
        events.append(("content_block_delta", delta))
    events += [
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": len(words)},
            },
        ),
        ("message_stop", {"type": "message_stop"}),
    ]
    return [f"event: {name}\ndata: {json.dumps(data)}\n\n".encode() for name, data in events]


@dataclass
class Plan:
    first_delay: float = 0.0  # before the first chunk (after the head)
    gap: float = 0.05  # between chunks
    cut_after: int | None = None  # chunks sent before the connection is dropped
    chunks: list[bytes] | None = None  # instead of the shaped events
    sent_at: list[float] = field(default_factory=list)  # perf_counter when each chunk went out
    calls: dict[str, int] = field(default_factory=dict)


class StreamingUpstream:
    def __init__(self) -> None:
        self.plan = Plan()
        self.app = Starlette(
            routes=[
                Route("/v1/chat/completions", self._openai, methods=["POST"]),
                Route("/v1/messages", self._anthropic, methods=["POST"]),
                Route("/final", self._final, methods=["POST"]),
            ]
        )

    def reset(self, **plan: Any) -> Plan:
        self.plan = Plan(**plan)
        return self.plan

    def _count(self, path: str) -> None:
        self.plan.calls[path] = self.plan.calls.get(path, 0) + 1

    async def _openai(self, request: Request) -> Response:
        self._count("openai")
        return self._stream(self.plan.chunks or openai_events(WORDS))

    async def _anthropic(self, request: Request) -> Response:
        self._count("anthropic")
        return self._stream(self.plan.chunks or anthropic_events(WORDS))

    async def _final(self, request: Request) -> Response:
        self._count("final")
        return JSONResponse({"ok": True})

    def _stream(self, chunks: list[bytes]) -> Response:
        plan = self.plan

        async def body() -> AsyncIterator[bytes]:
            await asyncio.sleep(plan.first_delay)
            for index, chunk in enumerate(chunks):
                if plan.cut_after is not None and index == plan.cut_after:
                    raise ConnectionAbortedError("the upstream drops the stream on purpose")
                if index:
                    await asyncio.sleep(plan.gap)
                plan.sent_at.append(time.perf_counter())
                yield chunk

        return StreamingResponse(body(), media_type="text/event-stream")


# What the `streaming` fixture gives a test: the upstream and its base URL.
Streaming = tuple[StreamingUpstream, str]
