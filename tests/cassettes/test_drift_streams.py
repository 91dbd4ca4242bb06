"""`proxy cassettes drift` on streamed answers: a recorded stream re-sent to a real upstream that streams, read to
its end and compared event by event (names, the JSON shape of each `data:`, how it ends, how many events),
recorded and re-recorded through the real forward route with the official OpenAI and Anthropic SDKs."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest
import yaml
from click.testing import CliRunner, Result

from proxy.cassettes.json_shapes import Difference
from proxy.cassettes.stream_shapes import stream_differences
from proxy.config.file import load_config
from tests.conftest import TEST_TOKEN, NoNetwork, running_proxy
from tests.streams import WORDS, Streaming, StreamingUpstream, anthropic_events, openai_chunk, openai_events

pytestmark = pytest.mark.e2e
CASSETTE = Path("cas") / "connections" / "llm.yaml"


@pytest.fixture
def streaming(streaming: Streaming, monkeypatch: pytest.MonkeyPatch) -> Streaming:
    """The streaming upstream, with the token the config names (`${CHAT_TOKEN}`) set."""
    monkeypatch.setenv("CHAT_TOKEN", TEST_TOKEN)
    return streaming


def write_config(tmp_path: Path, url: str, timeout: float = 10.0) -> Path:
    config = tmp_path / "proxy.yaml"
    config.write_text(
        "settings: {allow_http: true}\n"
        "connections:\n"
        f"  - {{name: llm, product_id: p, type: CONVERSATION, url: '{url}/v1', auth_type: BEARER,"
        " auth_token: '${CHAT_TOKEN}', input_template: '{{ input.user_message }}',"
        f" output_mapping: {{output: $.text}}, timeout: {timeout}}}\n"
    )
    return config


def recorded(tmp_path: Path, streaming: Streaming, call: Any, timeout: float = 10.0) -> tuple[StreamingUpstream, Path]:
    """`call(base_url)` made through the forward route of a recording server; the upstream and the config."""
    upstream, url = streaming
    config = write_config(tmp_path, url, timeout)
    upstream.reset(gap=0.005)
    with running_proxy(tmp_path, load_config(config), data_dir=tmp_path / "data", cassettes_dir=tmp_path / "cas") as p:
        call(p.url)
    assert len(interactions(tmp_path)) == 1
    return upstream, config


def openai_call(base_url: str) -> None:
    client = openai.OpenAI(base_url=f"{base_url}/forward/llm/v1", api_key="unused", max_retries=0)
    with client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}], stream=True) as s:
        assert [c.choices[0].delta.content for c in s if c.choices] == WORDS
    client.close()


def anthropic_call(base_url: str) -> None:
    client = anthropic.Anthropic(base_url=f"{base_url}/forward/llm", api_key="unused", max_retries=0)
    with client.messages.stream(model="claude", max_tokens=10, messages=[{"role": "user", "content": "hi"}]) as s:
        assert list(s.text_stream) == WORDS
    client.close()


def interactions(tmp_path: Path) -> list[dict[str, Any]]:
    return list(yaml.safe_load((tmp_path / CASSETTE).read_text())["interactions"])


def drift(tmp_path: Path, config: Path, *args: str) -> Result:
    where = ["--config", str(config), "--data-dir", str(tmp_path / "data"), "--cassettes", str(tmp_path / "cas")]
    from proxy.cli.main import main

    return CliRunner().invoke(main, ["cassettes", "drift", *args, *where])


def report(result: Result) -> dict[str, Any]:
    """The one interaction of a `--json` report."""
    (item,) = json.loads(result.output)["interactions"]
    return dict(item)


def openai_parts_events(words: list[str]) -> list[bytes]:
    """OpenAI chunks whose `delta.content` is an array of parts instead of a string."""
    chunks = [openai_chunk(w) for w in words]
    for chunk in chunks:
        chunk["choices"][0]["delta"]["content"] = [{"type": "text", "text": chunk["choices"][0]["delta"]["content"]}]
    return [f"data: {json.dumps(c)}\n\n".encode() for c in chunks] + [b"data: [DONE]\n\n"]


def test_an_openai_stream_is_compared_event_by_event(tmp_path: Path, streaming: Streaming) -> None:
    upstream, config = recorded(tmp_path, streaming, openai_call)

    plan = upstream.reset(gap=0.005)
    unchanged = drift(tmp_path, config)
    assert unchanged.exit_code == 0, unchanged.output
    assert "1 interactions: 0 drifted, 1 unchanged" in unchanged.output
    assert plan.calls["openai"] == 1 and len(plan.sent_at) == len(openai_events(WORDS))  # sent live, read to its end

    # Two pieces more: a live model's answer is never cut the same way twice.
    upstream.reset(gap=0.005, chunks=openai_events([*WORDS, "The ", "end."]))
    assert drift(tmp_path, config).exit_code == 0

    upstream.reset(gap=0.005, chunks=openai_parts_events(WORDS))
    parts = drift(tmp_path, config)
    assert parts.exit_code == 1
    assert "DRIFT    connections/llm #0 POST" in parts.output
    assert "event #0 $.choices[0].delta.content: string → array" in parts.output
    assert "$.usage: missing" not in parts.output  # the first differing event only, not the usage chunk's absence
    item = report(drift(tmp_path, config, "--json"))
    assert item["outcome"] == "drifted"
    assert item["differences"] == [
        {"path": "$.choices[0].delta.content", "change": "changed", "recorded": "string", "live": "array", "event": 0}
    ]


def test_an_openai_stream_without_its_end_or_far_longer_drifts(tmp_path: Path, streaming: Streaming) -> None:
    upstream, config = recorded(tmp_path, streaming, openai_call)

    upstream.reset(gap=0.005, chunks=openai_events(WORDS)[:-1])  # no `data: [DONE]`
    unended = drift(tmp_path, config)
    assert unended.exit_code == 1 and "end: [DONE] → none" in unended.output

    upstream.reset(gap=0.0, chunks=openai_events(WORDS * 5))
    longer = drift(tmp_path, config, "--json")
    assert report(longer)["differences"] == [{"path": "events", "change": "changed", "recorded": "9", "live": "41"}]


def test_an_anthropic_event_stream_drifts_on_a_renamed_event_and_a_missing_end(
    tmp_path: Path, streaming: Streaming
) -> None:
    upstream, config = recorded(tmp_path, streaming, anthropic_call)
    assert drift(tmp_path, config).exit_code == 0

    renamed = [c.replace(b"event: content_block_delta", b"event: text_delta") for c in anthropic_events(WORDS)]
    upstream.reset(gap=0.005, chunks=renamed)
    drifted = drift(tmp_path, config)
    assert drifted.exit_code == 1
    assert "event #2 event: content_block_delta → text_delta" in drifted.output

    upstream.reset(gap=0.005, chunks=anthropic_events(WORDS)[:-1])  # no `message_stop`
    item = report(drift(tmp_path, config, "--json"))
    assert item["differences"] == [
        {"path": "end", "change": "changed", "recorded": "message_stop", "live": "message_delta"}
    ]


def test_update_rerecords_the_stream_with_its_timing(tmp_path: Path, streaming: Streaming) -> None:
    upstream, config = recorded(tmp_path, streaming, openai_call)
    (before,) = interactions(tmp_path)
    before_body = json.loads(before["request"]["body"])

    upstream.reset(first_delay=0.2, gap=0.02, chunks=openai_parts_events(WORDS[:5]))
    updated = drift(tmp_path, config, "--update")
    assert updated.exit_code == 0, updated.output
    assert "UPDATED  connections/llm #0" in updated.output and "1 re-recorded" in updated.output
    (after,) = interactions(tmp_path)
    assert after["request"] == before["request"]  # replays still match it
    body = after["response"]["body"]["string"]
    assert '"content": [{"type": "text", "text": "Once "}]' in body and body.endswith("data: [DONE]\n\n")
    stream = after["proxy"]["stream"]
    assert sum(size for _, size in stream["chunks"]) == len(body.encode())
    assert len(stream["chunks"]) > 1 and stream["chunks"][0][0] >= 200  # the live timing, not the recorded one
    assert after["proxy"]["latency_ms"] >= stream["chunks"][-1][0]
    assert TEST_TOKEN not in (tmp_path / CASSETTE).read_text()

    again = drift(tmp_path, config)
    assert again.exit_code == 0, again.output
    assert "0 drifted, 1 unchanged" in again.output

    # Replayed offline at its recorded pace: the new body, its first chunk as late as it came live.
    offline = NoNetwork()
    with running_proxy(
        tmp_path / "replay",
        load_config(config),
        offline,
        cassettes_dir=tmp_path / "cas",
        record_mode="none",
        replay_latency="recorded",
    ) as proxy:
        started = time.perf_counter()
        with httpx.stream("POST", f"{proxy.url}/forward/llm/v1/chat/completions", json=before_body) as response:
            pieces = [(time.perf_counter() - started, chunk) for chunk in response.iter_bytes()]
    assert b"".join(chunk for _, chunk in pieces).decode() == body and offline.calls == 0
    assert pieces[0][0] >= 0.15, pieces[0][0]


def test_a_stream_longer_than_the_timeout_is_reported_not_waited_for(tmp_path: Path, streaming: Streaming) -> None:
    upstream, config = recorded(tmp_path, streaming, openai_call, timeout=0.5)

    upstream.reset(gap=0.5)  # ~4.5 s of stream
    started = time.perf_counter()
    result = drift(tmp_path, config, "--json")
    elapsed = time.perf_counter() - started
    assert result.exit_code == 1
    item = report(result)
    assert item["outcome"] == "error"
    assert item["error"].startswith("timed out after 0.5s: the stream had not ended (")
    assert "chunks read)" in item["error"]
    assert elapsed < 2.5, elapsed  # the timeout, with room for a loaded machine; far below the stream


def test_streams_alike_at_both_ends_have_no_differing_event() -> None:
    recorded = b"".join(openai_events(WORDS))
    # Fewer pieces, more pieces: alike from the start and from the end.
    assert stream_differences(recorded, b"".join(openai_events(WORDS[:5]))) == []
    assert stream_differences(recorded, b"".join(openai_events([*WORDS, "x", "y", "z"]))) == []
    # The same count, one event in the middle changed: found from both ends, named by its index.
    chunks = [openai_chunk(w) for w in WORDS]
    chunks[4]["choices"][0]["delta"]["refusal"] = None
    live = b"".join(f"data: {json.dumps(c)}\n\n".encode() for c in [*chunks, openai_chunk(usage={"total": 1})])
    # The usage chunk (event 8) differs too: only the first differing event is reported.
    assert stream_differences(recorded, live + b"data: [DONE]\n\n") == [
        Difference("$.choices[0].delta.refusal", None, "null", event=4)
    ]
