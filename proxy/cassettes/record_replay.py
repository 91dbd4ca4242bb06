"""The record/replay transport: per request, the cassette handle it carries decides live, record or replay.

Redaction happens here, before anything is stored: credential headers are masked and every secret
the server knows is scrubbed, in every encoding its redactor knows, from the URL, headers (names too),
the status line and bodies, both ways.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any

import httpx

from proxy.cassettes.cassette import Cassette, Interaction, PreparedReply, make_interaction
from proxy.cassettes.handles import CassetteHandle
from proxy.cassettes.library import CassetteLibrary
from proxy.cassettes.matching import ABSENT, RecordedRequest
from proxy.config.settings import MASK, MAX_UPSTREAM_BODY_BYTES, OFF_LOOP_REPLY_BYTES
from proxy.connections.headers import is_secret_header
from proxy.engine.transports import (
    CASSETTE_EXTENSION,
    MATCH_BODY_EXTENSION,
    OUTCOME_EXTENSION,
    PARSED_BODY_EXTENSION,
    PER_RUN_EXTENSION,
    RECORDED_LATENCY_EXTENSION,
    REDACTED_EXTENSION,
    REPLAY_PACE_EXTENSION,
    REPLAYED_EXTENSION,
    REPLY_MEMO_EXTENSION,
    STREAM_EXTENSION,
    WIRE_HEADERS,
    CassetteRefused,
    read_capped,
    waited_ms,
)
from proxy.engine.transports.streams import (
    RecordingStream,
    ReplayStream,
    StreamTiming,
    is_streamed,
)
from proxy.security.head_masking import masked_reason, renames_of
from proxy.security.redaction import Redactor

MIN_PER_RUN_LEN = 8  # shorter values could occur by chance in a body
ALWAYS_MASKED = frozenset({"authorization", "proxy-authorization", "x-api-key", "api-key", "cookie", "set-cookie"})


class RecordReplayTransport(httpx.AsyncBaseTransport):
    def __init__(self, live: httpx.AsyncBaseTransport, library: CassetteLibrary, redactor: Redactor) -> None:
        self.live = live
        self.library = library
        self.redactor = redactor

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        handle: CassetteHandle | None = request.extensions.get(CASSETTE_EXTENSION)
        if handle is None or not (handle.replays or handle.records):  # mode off
            return _tag(await self.live.handle_async_request(request), "live")
        cassette, handle = await self.library.opened(handle)
        sent = await request.aread()
        body = request.extensions.get(MATCH_BODY_EXTENSION, sent)
        per_run = request.extensions.get(PER_RUN_EXTENSION) or {}
        uri, text = _redacted_uri_and_body(request, body, per_run, self.redactor)
        if handle.replays:
            hit = handle.next_hit(cassette, self._key(request, uri, text, body is text and body is sent))
            if hit is not None:
                try:
                    return await self._replay(hit)
                except (KeyError, TypeError, ValueError, AttributeError) as exc:  # hand-edited past what parsing checks
                    number = cassette.interactions.index(hit)
                    why = f"cassette {cassette.path}: interaction {number} is malformed ({exc})"
                    raise CassetteRefused(why) from None
        # Every header masked only now: to be recorded, or to explain a miss (a replay matches on few or none).
        recorded_request = RecordedRequest(request.method, uri, text, _masked_headers(request, self.redactor))
        if not handle.records:
            raise self.library.miss(cassette, recorded_request, handle)
        started = time.perf_counter()
        timing = StreamTiming()
        response = await self.live.handle_async_request(request)
        if is_streamed(response):
            timing.head()
            return self._recording(handle, cassette, request, recorded_request, response, timing)
        try:
            content = await read_capped(response, MAX_UPSTREAM_BODY_BYTES)
        finally:
            await response.aclose()
        # A rate-limit wait before sending is not the upstream's latency: a replay must not repeat it.
        latency_ms = (time.perf_counter() - started) * 1000 - waited_ms(request)
        interaction = await _redacted(recorded_request, response, content, latency_ms, self.redactor)
        await self.library.record(handle, cassette, interaction)
        headers = [(k, v) for k, v in response.headers.multi_items() if k.lower() not in WIRE_HEADERS]
        extensions = {
            **response.extensions,
            OUTCOME_EXTENSION: "recorded",
            RECORDED_LATENCY_EXTENSION: interaction.proxy["latency_ms"],  # what a replay will report
            REDACTED_EXTENSION: True,  # the body handed on is the recorded one, masked already: not masked twice
        }
        masked = interaction.response["body"]["string"]
        return httpx.Response(response.status_code, headers=headers, content=masked, extensions=extensions)

    def _recording(
        self,
        handle: CassetteHandle,
        cassette: Cassette,
        request: httpx.Request,
        recorded_request: RecordedRequest,
        response: httpx.Response,
        timing: StreamTiming,
    ) -> httpx.Response:
        """A streamed answer goes on as it arrives; it is recorded once it has ended whole."""

        async def record(content: bytes, timing: StreamTiming) -> None:
            # The whole body is masked at once, so a secret split across two chunks is masked too.
            latency_ms = (timing.latency_ms or 0.0) - waited_ms(request)
            interaction = await _redacted(recorded_request, response, content, latency_ms, self.redactor)
            interaction.proxy["stream"] = timing.to_cassette()
            await self.library.record(handle, cassette, interaction)
            timing.latency_ms = interaction.proxy["latency_ms"]  # what a replay will report

        headers = [(k, v) for k, v in response.headers.multi_items() if k.lower() not in WIRE_HEADERS]
        extensions = {**response.extensions, OUTCOME_EXTENSION: "recorded", STREAM_EXTENSION: timing}
        stream = RecordingStream(response, timing, MAX_UPSTREAM_BODY_BYTES, record)
        return httpx.Response(response.status_code, headers=headers, stream=stream, extensions=extensions)

    def _key(self, request: httpx.Request, uri: str, body: bytes, as_sent: bool) -> tuple[str, str, str, str]:
        """The match key, from what the caller already parsed when the body is matched as it was sent (no
        secret or per-run id replaced in it); only the headers the rules match on are masked."""
        rules = self.library.rules
        headers = {
            name: _mask_header(name, value, self.redactor)
            for name, value in request.headers.items()
            if name.lower() in rules.match_headers
        }
        document = request.extensions.get(PARSED_BODY_EXTENSION, ABSENT) if as_sent else ABSENT
        return rules.key(RecordedRequest(request.method, uri, body, headers), document)

    async def _replay(self, interaction: Interaction) -> httpx.Response:
        latency_ms = float(interaction.proxy.get("latency_ms") or 0.0)
        timing = StreamTiming.from_cassette(interaction.proxy.get("stream"), latency_ms)
        pace = self.library.replay_speed if self.library.replay_latency else None
        if timing is not None:
            return await self._replay_stream(interaction, timing, pace)
        if pace and latency_ms:
            await asyncio.sleep(latency_ms / 1000 / pace)
        prepared = interaction.prepared
        if prepared is None:
            prepared = interaction.prepared = _prepared(interaction, latency_ms)
        status, headers, content, extensions = prepared
        paced = {REPLAY_PACE_EXTENSION: pace} if pace and latency_ms else {}
        return httpx.Response(status, headers=headers, content=content, extensions={**extensions, **paced})

    async def _replay_stream(
        self, interaction: Interaction, timing: StreamTiming, pace: float | None
    ) -> httpx.Response:
        if pace and timing.ttfb_ms:
            await asyncio.sleep(timing.ttfb_ms / 1000 / pace)
        recorded = interaction.response
        # The chunks follow one another: no length up front.
        headers = [(k, v) for k, v in _recorded_headers(recorded) if k.lower() != b"content-length"]
        extensions = {
            OUTCOME_EXTENSION: "hit",
            REPLAYED_EXTENSION: True,
            RECORDED_LATENCY_EXTENSION: timing.latency_ms,
            STREAM_EXTENSION: timing,
            REDACTED_EXTENSION: True,
        }
        if pace:
            extensions[REPLAY_PACE_EXTENSION] = pace
        message = recorded["status"].get("message")
        if message:
            extensions["reason_phrase"] = message.encode()
        body = recorded["body"]["string"] or b""
        stream = ReplayStream(body.encode() if isinstance(body, str) else body, timing, pace)
        return httpx.Response(recorded["status"]["code"], headers=headers, stream=stream, extensions=extensions)

    async def aclose(self) -> None:
        await self.live.aclose()


def _tag(response: httpx.Response, outcome: str) -> httpx.Response:
    response.extensions = {**response.extensions, OUTCOME_EXTENSION: outcome}
    return response


def _mask_header(name: str, value: str, redactor: Redactor) -> str:
    if name.lower() in ALWAYS_MASKED or is_secret_header(name, value):
        return MASK
    return redactor.redact(value)


def _masked_headers(request: httpx.Request, redactor: Redactor) -> dict[str, str]:
    renames = renames_of(request.headers, redactor)
    return {renames.get(k, k): _mask_header(k, v, redactor) for k, v in request.headers.items()}


def _redacted_uri_and_body(
    request: httpx.Request, body: bytes, per_run: dict[str, str], redactor: Redactor
) -> tuple[str, bytes]:
    """The URL and body as matched and stored: secrets masked, and per-run ids (a Galtea session id rendered
    into the body, say) replaced by a stable `<name>` so a replay in another run still matches. The body is
    the very object given when nothing in it changed."""
    uri, text = redactor.redact(str(request.url)), redactor.redact_bytes(body)
    for name, value in per_run.items():
        if value and len(value) >= MIN_PER_RUN_LEN:
            token = f"<{name}>"
            uri = uri.replace(value, token)
            raw = value.encode()
            if raw in text:
                text = text.replace(raw, token.encode())
    return uri, text


def _prepared(interaction: Interaction, latency_ms: float) -> PreparedReply:
    """A recorded answer as every replay of it hands it out: its headers parsed, its body as bytes."""
    recorded = interaction.response
    headers = httpx.Headers(_recorded_headers(recorded))
    message = recorded["status"].get("message")
    body = recorded["body"]["string"] or b""
    extensions = {
        OUTCOME_EXTENSION: "hit",
        REPLAYED_EXTENSION: True,
        RECORDED_LATENCY_EXTENSION: latency_ms,
        REPLY_MEMO_EXTENSION: {},
        **({"reason_phrase": message.encode()} if message else {}),
    }
    return recorded["status"]["code"], headers, body.encode() if isinstance(body, str) else body, extensions


def _recorded_headers(recorded: dict[str, Any]) -> list[tuple[bytes, bytes]]:
    """A recorded answer's headers as bytes: httpx takes text headers as ASCII only, and a masked name or value
    (`x-tok-••••••••`) is not; as UTF-8 they read back as they were recorded."""
    return [
        (str(name).encode(), str(value).encode()) for name, values in recorded["headers"].items() for value in values
    ]


async def _redacted(
    request: RecordedRequest, response: httpx.Response, content: bytes, latency_ms: float, redactor: Redactor
) -> Interaction:
    """`redacted_interaction`, in a worker thread for a large body: masking every encoded form of every secret
    costs up to about a second a megabyte of escape-dense text, which must not hold up the event loop."""
    if len(content) > OFF_LOOP_REPLY_BYTES:
        return await asyncio.to_thread(redacted_interaction, request, response, content, latency_ms, redactor)
    return redacted_interaction(request, response, content, latency_ms, redactor)


def redacted_interaction(
    request: RecordedRequest, response: httpx.Response, content: bytes, latency_ms: float, redactor: Redactor
) -> Interaction:
    # A body that is not UTF-8 keeps every byte but the secrets' (see Redactor.redact_bytes).
    renames = renames_of(response.headers, redactor)
    response_headers = [(renames.get(k, k), _mask_header(k, v, redactor)) for k, v in response.headers.multi_items()]
    return make_interaction(
        request.method,
        request.uri,
        request.body,
        request.headers,
        response.status_code,
        masked_reason(response, redactor),
        response_headers,
        redactor.redact_bytes(content),
        {
            "recorded_at": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "latency_ms": round(latency_ms, 3),
        },
    )
