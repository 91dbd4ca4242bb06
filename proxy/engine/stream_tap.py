"""What the flow log keeps of a relayed stream while it passes: the bytes as relayed (masked) up to a cap, each
with the offset it arrived at, how many bytes and chunks went by, and how the stream ended. Each chunk costs an
append and two additions; the events, the joined text and the outcome are worked out once, when it is over."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from jsonpath_ng import JSONPath

from proxy.config.settings import DEFAULT_FLOW_BODY_MAX_BYTES
from proxy.connections.jsonpath_budget import JsonPathStopped, StepBudget
from proxy.engine.streaming import parse_events, sse_reply

log = logging.getLogger("proxy")
STREAMING, COMPLETE, CUT = "streaming", "complete", "cut"
# What a stream's last event says when it is whole: OpenAI's `data: [DONE]`, Anthropic's `message_stop`.
_TERMINATORS = (b"[DONE]", b'"message_stop"')


class StreamTap:
    def __init__(self, keep_bytes: int = DEFAULT_FLOW_BODY_MAX_BYTES) -> None:
        self.keep_bytes = keep_bytes
        self.kept: list[tuple[float, bytes]] = []  # (offset_ms, bytes as relayed), at most keep_bytes in all
        self.kept_size = 0
        self.truncated = False
        self.relayed_bytes = 0
        self.last = b""  # the last chunk relayed: does it end the stream as its format says?
        self.outcome = STREAMING
        self.text_path: JSONPath | None = None  # the connection's stream_text_path: each event's piece of text
        self.on_end: list[Callable[[], None]] = []  # told once the stream is over, whole or cut

    def saw(self, offset_ms: float, chunk: bytes) -> None:
        self.relayed_bytes += len(chunk)
        self.last = chunk
        room = self.keep_bytes - self.kept_size
        if room >= len(chunk):
            self.kept.append((offset_ms, chunk))
            self.kept_size += len(chunk)
        else:
            if room > 0:
                self.kept.append((offset_ms, chunk[:room]))
                self.kept_size += room
            self.truncated = True

    def finish(self, ended_whole: bool) -> None:
        """The stream is over: relayed to its end, or broken off (by the upstream, a cap or the client). A client
        that hangs up once the stream's last event has come (the OpenAI SDK does, at `[DONE]`) cut nothing."""
        if self.outcome != STREAMING:
            return
        terminated = any(mark in self.last for mark in _TERMINATORS)
        self.outcome = COMPLETE if ended_whole or terminated else CUT
        for told in self.on_end:
            try:
                told()
            except Exception as exc:  # watching a stream must never break it
                log.error("a stream observer failed: %s: %s", type(exc).__name__, exc)
        self.on_end.clear()

    @property
    def over(self) -> bool:
        return self.outcome != STREAMING

    def body(self) -> str:
        return b"".join(piece for _, piece in self.kept).decode("utf-8", "replace")

    def summary(self, event_stream: bool) -> dict[str, Any]:
        """What the flow log shows of the stream beside the timing: outcome, bytes, what was kept, the events
        (server-sent events only) and their joined text."""
        out: dict[str, Any] = {"outcome": self.outcome, "bytes": self.relayed_bytes, "truncated": self.truncated}
        if not event_stream:
            return out
        parser = parse_events(self.kept, self.kept[-1][0] if self.kept and not self.truncated else None)
        out.update(parser.to_json())
        if self.text_path is not None:
            try:
                text = sse_reply(parser.events, self.text_path, StepBudget.for_size(self.kept_size)).document["text"]
            except JsonPathStopped:
                text = None
            if text:
                out["text"] = text
        return out
