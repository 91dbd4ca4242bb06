"""Streams end to end: relayed live as they arrive, recorded with their chunk timing, replayed offline with
the official OpenAI and Anthropic SDKs, and read whole by a streaming endpoint connection."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest
import vcr
import yaml
from click.testing import CliRunner

from proxy.cli.main import main
from proxy.config.file import Config
from tests.conftest import TEST_TOKEN, NoNetwork, running_proxy
from tests.helpers import bearer_conversation, llm_config, wait_flows
from tests.streams import USAGE, WORDS, Streaming, openai_chunk, secret_echo_chunks

pytestmark = pytest.mark.e2e


def openai_stream(base_url: str) -> list[tuple[float, str | None, Any]]:
    """(arrival, content, usage) of each chunk the OpenAI SDK yields, arrival from the call."""
    client = openai.OpenAI(base_url=f"{base_url}/forward/llm/v1", api_key="unused", max_retries=0)
    started = time.perf_counter()
    seen = []
    with client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}], stream=True) as s:
        for chunk in s:
            content = chunk.choices[0].delta.content if chunk.choices else None
            seen.append((time.perf_counter() - started, content, chunk.usage.total_tokens if chunk.usage else None))
    client.close()
    return seen


def cassette_interactions(path: Path) -> list[dict[str, Any]]:
    return list(yaml.safe_load(path.read_text())["interactions"])


def test_openai_stream_is_relayed_as_it_arrives_recorded_and_replayed(tmp_path: Path, streaming: Streaming) -> None:
    upstream, url = streaming
    cassettes = tmp_path / "cassettes"
    plan = upstream.reset(first_delay=0.4, gap=0.15)
    with running_proxy(tmp_path / "a", llm_config(url), cassettes_dir=cassettes) as proxy:
        started = time.perf_counter()
        live = openai_stream(proxy.url)
    last_sent = plan.sent_at[-1] - started
    assert [c for _, c, _ in live if c] == WORDS
    assert live[-1][2] == USAGE["total_tokens"]
    # The first chunk reached the SDK while the upstream was still a second away from sending its last.
    assert live[0][0] < last_sent - 0.8, (live[0][0], last_sent)

    path = cassettes / "connections" / "llm.yaml"
    (interaction,) = cassette_interactions(path)
    stream = interaction["proxy"]["stream"]
    assert len(stream["chunks"]) == len(WORDS) + 2  # one timing entry per upstream chunk: words, usage, [DONE]
    assert sum(size for _, size in stream["chunks"]) == len(interaction["response"]["body"]["string"].encode())
    assert stream["chunks"][0][0] >= 400 and stream["time_to_first_byte_ms"] < stream["chunks"][0][0]
    assert TEST_TOKEN not in path.read_text()
    # Plain vcrpy loads the cassette and replays the stream as one body.
    with vcr.use_cassette(str(path), record_mode="none") as cassette:
        assert len(cassette) == 1
        played = httpx.post(f"{url}/v1/chat/completions", json={})
        assert cassette.play_count == 1
    assert all(f'"content": "{w}"' in played.text for w in WORDS) and played.text.endswith("data: [DONE]\n\n")

    # The upstream is stopped for the replays: no network at all.
    upstream.reset(cut_after=0)
    offline = NoNetwork()
    for latency, speed, first_at_least, first_below in (
        ("none", 1.0, 0.0, 0.3),
        ("recorded", 1.0, 0.38, 2.0),
        ("recorded", 4.0, 0.09, 0.3),
    ):
        with running_proxy(
            tmp_path / f"b-{latency}-{speed}",
            llm_config(url),
            offline,
            cassettes_dir=cassettes,
            record_mode="none",
            replay_latency=latency,
            replay_speed=speed,
        ) as proxy:
            replayed = openai_stream(proxy.url)
        assert [c for _, c, _ in replayed] == [c for _, c, _ in live]
        assert first_at_least <= replayed[0][0] < first_below, (latency, speed, replayed[0][0])
        if latency == "recorded" and speed == 1.0:
            # The gaps come back too: the last chunk about as long after the first as when recorded.
            assert replayed[-1][0] - replayed[0][0] > 0.8 * (live[-1][0] - live[0][0])
    assert offline.calls == 0


def test_anthropic_event_stream_works_the_same(tmp_path: Path, streaming: Streaming) -> None:
    upstream, url = streaming
    cassettes = tmp_path / "cassettes"

    def text_deltas(base_url: str) -> list[str]:
        client = anthropic.Anthropic(base_url=f"{base_url}/forward/llm", api_key="unused", max_retries=0)
        with client.messages.stream(model="claude", max_tokens=10, messages=[{"role": "user", "content": "hi"}]) as s:
            pieces = list(s.text_stream)
            final = s.get_final_message()
        client.close()
        assert final.usage.output_tokens == len(WORDS)
        return pieces

    upstream.reset(gap=0.02)
    with running_proxy(tmp_path / "a", llm_config(url), cassettes_dir=cassettes) as proxy:
        live = text_deltas(proxy.url)
    assert live == WORDS
    (interaction,) = cassette_interactions(cassettes / "connections" / "llm.yaml")
    assert len(interaction["proxy"]["stream"]["chunks"]) == len(WORDS) + 5  # start, block start/stop, delta, stop

    with running_proxy(
        tmp_path / "b", llm_config(url), NoNetwork(), cassettes_dir=cassettes, record_mode="none"
    ) as proxy:
        assert text_deltas(proxy.url) == WORDS


def test_a_stream_cut_mid_body_reaches_the_client_cut_and_is_not_recorded(tmp_path: Path, streaming: Streaming) -> None:
    upstream, url = streaming
    upstream.reset(cut_after=3)
    cassettes = tmp_path / "cassettes"
    with running_proxy(tmp_path / "a", llm_config(url, retry_enabled=True), cassettes_dir=cassettes) as proxy:
        received = b""
        with pytest.raises(httpx.RemoteProtocolError):  # an unfinished chunked body, never a clean end
            with httpx.stream("POST", f"{proxy.url}/forward/llm/v1/chat/completions", json={}) as response:
                assert response.status_code == 200
                for chunk in response.iter_raw():
                    received += chunk
        assert proxy.runtime.library._cassettes["connections/llm"].interactions == []
    assert received.count(b"data: ") == 3
    assert upstream.plan.calls["openai"] == 1  # bytes had reached the client: never retried
    assert not (cassettes / "connections" / "llm.yaml").exists() or not cassette_interactions(
        cassettes / "connections" / "llm.yaml"
    )


def test_a_secret_split_across_two_chunks_never_reaches_the_client_or_the_cassette(
    tmp_path: Path, streaming: Streaming
) -> None:
    upstream, url = streaming
    upstream.reset(chunks=secret_echo_chunks(TEST_TOKEN), gap=0.05)
    cassettes = tmp_path / "cassettes"
    with running_proxy(tmp_path / "a", llm_config(url), cassettes_dir=cassettes) as proxy:
        with httpx.stream("POST", f"{proxy.url}/forward/llm/v1/chat/completions", json={}) as response:
            chunks = list(response.iter_raw())
    body = b"".join(chunks)
    assert TEST_TOKEN.encode() not in body and TEST_TOKEN[:7].encode() not in body
    assert b"your key is \xe2\x80\xa2" in body and body.endswith(b"data: [DONE]\n\n")
    path = cassettes / "connections" / "llm.yaml"
    assert TEST_TOKEN[:7] not in path.read_text()
    (interaction,) = cassette_interactions(path)
    assert "your key is •••••••• ok" in interaction["response"]["body"]["string"]


# -- a streaming endpoint connection ------------------------------------------------------------------


def sse_config(url: str) -> Config:
    conversation = bearer_conversation(
        "chat",
        f"{url}/v1/chat/completions",
        input_template='{"stream": true, "messages": [{"role": "user", "content": "{{ input.user_message }}"}]}',
        response_mode="sse",
        output_mapping={"output": "$.text", "tokens": "$.last.usage.total_tokens"},
    )
    final = {
        "name": "final",
        "product_id": "p",
        "type": "FINALIZATION",
        "url": f"{url}/final",
        "auth_type": "NONE",
        "input_template": "{}",
        "output_mapping": {},
    }
    version = {"name": "v1", "product_id": "p", "conversation": "chat", "finalization": "final"}
    return Config(connections=[conversation, final], versions=[version])


def run_turn(client: httpx.Client, test_case: str) -> tuple[dict[str, Any], dict[str, Any]]:
    version = client.get("/versions", params={"names[]": "v1"}).json()[0]["id"]
    session = client.post("/sessions", json={"versionId": version, "testCaseId": test_case}).json()
    turn = client.post(f"/sessions/{session['id']}/turns", json={"input": {"user_message": "hi"}}).json()
    finished = client.patch(f"/sessions/{session['id']}/finish", json={}).json()
    return turn, finished


def test_streaming_connection_joins_the_text_and_reports_time_to_first_token(
    tmp_path: Path, streaming: Streaming
) -> None:
    upstream, url = streaming
    upstream.reset(first_delay=0.3, gap=0.02)
    cassettes = tmp_path / "cassettes"
    with running_proxy(tmp_path / "a", sse_config(url), cassettes_dir=cassettes) as proxy:
        with httpx.Client(base_url=proxy.url) as client:
            turn, _ = run_turn(client, "tc-1")
            session = client.get(f"/sessions/{turn['sessionId']}").json()
            (flow,) = [e for e in wait_flows(client, 2, session=turn["sessionId"]) if "turn of chat" in e["comment"]]
            flow_page = client.get(f"/flows/{flow['_flowId']}").text
    assert turn["status"] == "GENERATED", turn["error"]
    assert turn["actualOutput"] == "".join(WORDS)
    assert turn["exchange"]["extracted"]["tokens"] == USAGE["total_tokens"]  # mapped over the final event
    assert session["metadata"]["tokens"] == USAGE["total_tokens"]
    assert 300 <= turn["timeToFirstTokenMs"] < turn["latency"]
    stream = turn["exchange"]["stream"]
    assert len(stream["chunks"]) == len(WORDS) + 2
    assert stream["events"][0]["data"] == openai_chunk(WORDS[0])
    assert len(stream["events"]) == len(WORDS) + 1  # [DONE] ends the stream and is no event
    assert stream["events"][0]["offsetMs"] == turn["timeToFirstTokenMs"]
    # [DONE] is kept as a relayed stream's is: when it came, after the last event, and the terminator row shown.
    assert stream["events"][-1]["offsetMs"] <= stream["doneOffsetMs"] == stream["chunks"][-1][0]
    assert 'id="stream-done"' in flow_page and "<code>[DONE]</code>" in flow_page

    with running_proxy(
        tmp_path / "b", sse_config(url), NoNetwork(), cassettes_dir=cassettes, record_mode="none"
    ) as proxy:
        with httpx.Client(base_url=proxy.url) as client:
            replayed, _ = run_turn(client, "tc-1")
    assert replayed["actualOutput"] == turn["actualOutput"]
    assert replayed["timeToFirstTokenMs"] == turn["timeToFirstTokenMs"]  # the recorded value
    assert replayed["latency"] == turn["latency"]
    assert replayed["exchange"]["stream"] == turn["exchange"]["stream"]


def test_streaming_connection_cut_mid_stream_fails_the_turn_records_nothing_and_still_finalizes(
    tmp_path: Path, streaming: Streaming
) -> None:
    upstream, url = streaming
    upstream.reset(cut_after=4)
    cassettes = tmp_path / "cassettes"
    with running_proxy(tmp_path / "a", sse_config(url), cassettes_dir=cassettes) as proxy:
        with httpx.Client(base_url=proxy.url) as client:
            turn, finished = run_turn(client, "tc-cut")
    assert turn["status"] == "FAILED"
    assert "closed the connection mid-reply" in turn["error"]
    assert finished["status"] == "FAILED"
    assert upstream.plan.calls["final"] == 1  # FINALIZATION ran after the failed turn
    recorded = cassette_interactions(cassettes / "sessions" / "tc-cut.yaml")
    assert [i["request"]["uri"] for i in recorded] == [f"{url}/final"]  # the finalization call alone


def test_streaming_connection_refuses_a_bad_response_mode(tmp_path: Path) -> None:
    with running_proxy(tmp_path) as proxy, httpx.Client(base_url=proxy.url) as client:
        data = {
            "name": "c",
            "productId": "p",
            "url": "http://127.0.0.1:9/x",
            "type": "CONVERSATION",
            "authType": "NONE",
            "inputTemplate": '{"m": "{{ input }}"}',
            "outputMapping": {"output": "$.text"},
        }
        bad_mode = client.post("/endpointConnections", json={**data, "responseMode": "xml"})
        bad_path = client.post("/endpointConnections", json={**data, "responseMode": "SSE", "streamTextPath": "$["})
        good = client.post("/endpointConnections", json={**data, "responseMode": "SSE", "streamTextPath": "$.t"})
    assert bad_mode.status_code == 422 and "responseMode" in bad_mode.json()["message"]
    assert bad_path.status_code == 422 and "streamTextPath" in bad_path.json()["message"]
    assert good.status_code == 201, good.text
    assert good.json()["responseMode"] == "sse" and good.json()["streamTextPath"] == "$.t"


def test_check_run_and_inspector_show_the_stream(tmp_path: Path, streaming: Streaming) -> None:
    upstream, url = streaming
    upstream.reset(first_delay=0.1, gap=0.01)
    config = sse_config(url)
    path = tmp_path / "proxy.yaml"
    settings = {"allow_http": True}
    path.write_text(
        yaml.safe_dump({"settings": settings, "connections": config.connections, "versions": config.versions})
    )
    where = ["--config", str(path), "--data-dir", str(tmp_path / "data"), "--cassettes", str(tmp_path / "cassettes")]

    checked = CliRunner().invoke(main, ["check", "chat", *where, "--input", '{"user_message": "hi"}'])
    assert checked.exit_code == 0, checked.output
    assert f'→ "{"".join(WORDS)}"' in checked.output
    assert f"{len(WORDS) + 2} chunks, {len(WORDS) + 1} events, first token at " in checked.output
    assert checked.output.split("Stream  first byte")[1].count(' ms  {"id": "c-1"') == len(WORDS) + 1

    dataset = tmp_path / "cases.jsonl"
    dataset.write_text('{"id": "tc-run", "input": {"user_message": "hi"}}\n')
    outs = []
    for index, mode in enumerate(("once", "none", "none")):
        out = tmp_path / f"results-{index}.jsonl"
        ran = CliRunner().invoke(
            main, ["run", str(dataset), "--version", "v1", *where, "--record-mode", mode, "--out", str(out)]
        )
        assert ran.exit_code == 0, ran.output
        outs.append(out.read_text())
        upstream.reset(cut_after=0)  # replays only from here on
    (turn,) = json.loads(outs[1])["turns"]
    assert turn["output"] == "".join(WORDS) and turn["timeToFirstTokenMs"] >= 100
    assert outs[1] == outs[2]  # replays are byte-identical, time to first token included

    with (
        running_proxy(
            tmp_path / "inspect", config, NoNetwork(), cassettes_dir=tmp_path / "cassettes", record_mode="none"
        ) as proxy,
        httpx.Client(base_url=proxy.url) as client,
    ):
        turn_api, _ = run_turn(client, "tc-run")
        page = client.get(f"/inspector/sessions/{turn_api['sessionId']}").text
    assert f"{len(WORDS) + 2} chunks</h3>" in page and "Stream · first byte at" in page
    assert "chat.completion.chunk" in page
    assert page.count('class="stream-done"') == 1 and "<code>[DONE]</code>" in page  # the turn's terminator row


def test_a_stream_whose_reader_hangs_up_at_its_last_event_is_still_recorded(
    tmp_path: Path, streaming: Streaming
) -> None:
    """The OpenAI SDK stops reading at `data: [DONE]` and closes the response. When the upstream ends its body a
    moment later, the client's hang-up cancelled the relay mid-read and the whole stream went unrecorded (about one
    recording in seven under load); the rest of the stream is read and it is recorded."""
    upstream, url = streaming
    events = [f"data: {json.dumps(openai_chunk(word))}\n\n".encode() for word in WORDS] + [b"data: [DONE]\n\n"]
    upstream.reset(gap=0.1, chunks=[*events, b""])  # the body's end comes 0.1 s after [DONE]
    with running_proxy(tmp_path, llm_config(url)) as proxy:
        with httpx.Client(timeout=10) as client:
            with client.stream("POST", f"{proxy.url}/forward/llm/v1/chat/completions", json={"stream": True}) as r:
                assert r.headers["x-proxy-cassette"] == "recorded"
                for line in r.iter_lines():
                    if line == "data: [DONE]":
                        break  # and the response is closed, as the SDK does
        deadline = time.monotonic() + 5
        cassette = proxy.runtime.library._cassettes.get("connections/llm")
        while (cassette is None or not cassette.interactions) and time.monotonic() < deadline:
            time.sleep(0.05)
            cassette = proxy.runtime.library._cassettes.get("connections/llm")
        assert cassette is not None and len(cassette.interactions) == 1
        recorded = cassette.interactions[0].response["body"]["string"]
    assert recorded.endswith(b"data: [DONE]\n\n") and recorded.count(b"data: ") == len(WORDS) + 1
