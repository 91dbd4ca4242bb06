"""Streams above the transport: masking a body that arrives in chunks, and reading server-sent events."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.config.settings import MASK
from proxy.connections.mapping import compile_jsonpath
from proxy.engine.streaming import SseParser, sse_reply
from proxy.security.redaction import Redactor
from proxy.security.stream_masking import StreamMasker

SECRETS = ["tok-Sup3rSecret-4242", "pässwörd-ü😀-long"]
ECHOES = [
    "tok-Sup3rSecret-4242",
    "\\u0074ok-Sup3rSecret-4242",  # JSON-escaped first character
    "tok-Sup3r\\u0053ecret-4242",  # escaped in the middle
    "%74ok-Sup3rSecret-4242",  # percent-encoded
    "dG9rLVN1cDNyU2VjcmV0LTQyNDI",  # base64
    "pässwörd-ü😀-long",
    "p\\u00e4ssw\\u00f6rd-\\u00fc\\ud83d\\ude00-long",
    # In a JSON document inside the event's JSON string: one, three (the longest echo) and two documents deep.
    "tok-Sup3r\\\\u0053ecret-4242",
    "".join(f"\\\\\\\\\\\\\\\\u{ord(c):04x}" for c in "tok-Sup3rSecret-4242"),
    "p\\\\\\\\u00e4ssw\\\\\\\\u00f6rd-\\\\\\\\u00fc\\\\\\\\ud83d\\\\\\\\ude00-long",
]


def masker() -> StreamMasker:
    redactor = Redactor()
    redactor.register("test", SECRETS)
    return StreamMasker(redactor)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.sampled_from(ECHOES), min_size=1, max_size=4),
    st.lists(st.integers(min_value=1, max_value=1200), max_size=30),
)
def test_a_secret_split_anywhere_across_chunks_is_masked(echoes: list[str], cuts: list[int]) -> None:
    body = "".join(f'data: {{"text": "before {echo} after é"}}\n\n' for echo in echoes).encode()
    points = sorted({c for c in cuts if c < len(body)})
    pieces = [body[a:b] for a, b in zip([0, *points], [*points, len(body)], strict=True)]
    stream = masker()
    relayed = b"".join(stream.feed(piece) for piece in pieces) + stream.flush()
    redactor = stream.redactor
    assert relayed == redactor.redact_bytes(body)
    assert relayed.count(MASK.encode()) == len(echoes)
    assert b"Sup3r" not in relayed and "wörd".encode() not in relayed


def test_text_that_cannot_begin_an_echo_is_released_at_once() -> None:
    stream = masker()
    chunk = b'data: {"choices": [{"delta": {"content": "word "}}]}\n\n'
    assert [stream.feed(chunk) for _ in range(3)] == [chunk] * 3
    held = stream.feed(b'data: {"content": "tok-Sup')  # could be the start of the token
    assert held == b'data: {"content": "'
    assert stream.feed(b'er"}\n\n') == b'tok-Super"}\n\n'


def test_without_secrets_nothing_is_held_back() -> None:
    stream = StreamMasker(Redactor())
    assert stream.feed(b"data: tok-") == b"data: tok-" and stream.flush() == b""


def test_server_sent_events_across_chunks() -> None:
    parser = SseParser()
    parser.feed(b'event: delta\ndata: {"t": "a"}\r', 10.0)
    parser.feed(b'\n\r\n: a comment\ndata: {"t":', 20.0)
    parser.feed(b' "b"}\n\ndata: line one\ndata: line two\n\n', 30.0)
    parser.feed(b"data: [DONE]\n\ndata: after the end\n\n", 40.0)
    parser.end(50.0)
    assert [(e.offset_ms, e.data) for e in parser.events] == [
        (20.0, '{"t": "a"}'),
        (30.0, '{"t": "b"}'),
        (30.0, "line one\nline two"),
    ]
    assert parser.done


def test_a_last_event_without_its_blank_line_still_counts() -> None:
    parser = SseParser()
    parser.feed(b'data: {"t": "a"}', 5.0)
    parser.end(6.0)
    assert [e.data for e in parser.events] == ['{"t": "a"}']


def test_sse_reply_joins_pieces_and_finds_the_first_token() -> None:
    parser = SseParser()
    for offset, data in enumerate(['{"d": ""}', '{"d": "Hel"}', "not json", '{"d": "lo"}', '{"usage": {"n": 2}}']):
        parser.feed(f"data: {data}\n\n".encode(), float(offset))
    reply = sse_reply(parser.events, compile_jsonpath("$.d"))
    assert reply.document["text"] == "Hello"
    assert reply.document["last"] == {"usage": {"n": 2}}
    assert reply.document["events"][2] == "not json"
    assert reply.time_to_first_token_ms == 1.0  # the first non-empty piece, not the empty one before it
