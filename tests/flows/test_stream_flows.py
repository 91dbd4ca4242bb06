"""A relayed stream in the flow log: written when it ends (or breaks) with its real timing, bytes, chunks, events
and joined text, shown `streaming` in the live list meanwhile; capped, masked, and exported to HAR as relayed.
Real streams from a real upstream, through the forward route live, recorded and replayed, read by the official
OpenAI and Anthropic SDKs."""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest
from haralyzer import HarParser

from proxy.config.file import Config
from proxy.config.settings import MASK, ReplayLatency
from tests.conftest import TEST_TOKEN, NoNetwork, RunningProxy, running_proxy
from tests.helpers import launch, llm_config
from tests.streams import USAGE, WORDS, Streaming, anthropic_events, openai_events, secret_echo_chunks

pytestmark = pytest.mark.e2e
OVER = ("complete", "cut")


def flows_over(proxy: RunningProxy, count: int) -> list[dict[str, Any]]:
    """The flows whose stream is over, oldest first, read from the log's SQLite file once there are `count`."""
    store = proxy.runtime.store
    query = "SELECT id, latency_ms, ttfb_ms, size, outcome, stream, data FROM flows WHERE stream IN (?, ?) ORDER BY id"
    deadline = time.monotonic() + 10
    while True:
        rows = store.call(lambda: store.db.conn.execute(query, OVER).fetchall())
        if len(rows) >= count or time.monotonic() > deadline:
            names = ("id", "latency_ms", "ttfb_ms", "size", "outcome", "stream", "data")
            flows = [dict(zip(names, row, strict=True)) for row in rows]
            for flow in flows:
                flow["data"] = json.loads(flow["data"])
            return flows
        time.sleep(0.02)


def har_entry(har: dict[str, Any]) -> dict[str, Any]:
    (entry,) = har["log"]["entries"]
    return entry


def offsets_in_order(stream: dict[str, Any]) -> bool:
    """Each event, then `data: [DONE]`, in the order they came, within the stream's duration."""
    offsets = [e["offsetMs"] for e in stream["events"]] + [stream["doneOffsetMs"]]
    return offsets == sorted(offsets) and offsets[-1] <= stream["durationMs"]


def openai_text(base_url: str) -> str:
    client = openai.OpenAI(base_url=f"{base_url}/forward/llm/v1", api_key="unused", max_retries=0)
    with client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}], stream=True) as s:
        text = "".join(c.choices[0].delta.content or "" for c in s if c.choices)
    client.close()
    return text


def anthropic_text(base_url: str) -> str:
    client = anthropic.Anthropic(base_url=f"{base_url}/forward/llm", api_key="unused", max_retries=0)
    with client.messages.stream(model="claude", max_tokens=10, messages=[{"role": "user", "content": "hi"}]) as s:
        text = "".join(s.text_stream)
    client.close()
    return text


def three_ways(
    tmp_path: Path, config: Config, read: Any, flows_expected: int = 1, paced: bool = False
) -> list[tuple[str, str, dict[str, Any], dict[str, Any], str]]:
    """The stream read live, recorded, then replayed offline (and, `paced`, replayed again at the recorded pace):
    (mode, text read, flow, HAR of the flow, its page) each."""
    cassettes = tmp_path / "cassettes"
    out = []
    runs: list[tuple[str, str, Any, dict[str, Any]]] = [
        ("off", "off", None, {}),
        ("once", "once", None, {}),
        ("none", "none", NoNetwork(), {}),
    ]
    if paced:
        runs.append(("paced", "none", NoNetwork(), {"replay_latency": ReplayLatency.RECORDED}))
    for name, mode, transport, settings in runs:
        with (
            running_proxy(
                tmp_path / name, config, transport, cassettes_dir=cassettes, record_mode=mode, **settings
            ) as proxy,
            httpx.Client(base_url=proxy.url) as client,
        ):
            text = read(proxy.url)
            (flow,) = flows_over(proxy, flows_expected)
            har = client.get(f"/flows/{flow['id']}.har").json()
            out.append((name, text, flow, har, client.get(f"/flows/{flow['id']}").text))
    return out


def test_openai_stream_flow_is_written_at_its_end_live_recorded_and_replayed(
    tmp_path: Path, streaming: Streaming
) -> None:
    upstream, url = streaming
    upstream.reset(first_delay=0.1, gap=0.03)
    whole = b"".join(openai_events(WORDS))
    for mode, text, flow, har, page in three_ways(tmp_path, llm_config(url), openai_text, paced=True):
        assert text == "".join(WORDS)
        assert flow["outcome"] == {"off": "live", "once": "recorded", "none": "hit", "paced": "hit"}[mode]
        assert flow["stream"] == "complete"
        stream = flow["data"]["exchange"]["stream"]
        body = flow["data"]["exchange"]["response"]["body"]
        assert body == whole.decode() and flow["size"] == len(whole) == stream["bytes"], mode
        # One entry per read: the upstream's 10 writes, fewer when two arrive together in one read.
        assert sum(size for _, size in stream["chunks"]) == len(whole) and not stream["truncated"]
        assert 1 < len(stream["chunks"]) <= len(WORDS) + 2
        assert [e["data"] for e in stream["events"]][-1]["usage"] == USAGE  # [DONE] ends it, no event
        # ... but the page shows it after the events, so the events and the stream's end add up
        assert offsets_in_order(stream) and 'id="stream-done"' in page and "<code>[DONE]</code>" in page
        assert f'id="stream-event-count">{len(WORDS) + 1}, then <code>data: [DONE]</code>' in page
        assert stream["text"] == "".join(WORDS)  # the connection's stream_text_path, by default OpenAI's
        offsets = [e["offsetMs"] for e in stream["events"]]
        assert offsets == sorted(offsets) and offsets[-1] <= stream["durationMs"]
        assert flow["latency_ms"] == stream["durationMs"] and flow["ttfb_ms"] == stream["timeToFirstByteMs"]
        if mode != "none":  # the upstream's pace (or the recording's): the stream lasts its delays
            assert stream["durationMs"] >= 100 + 30 * (len(WORDS) + 1)
            assert stream["durationMs"] - stream["timeToFirstByteMs"] >= 30 * (len(WORDS) + 1)
        (attempt,) = flow["data"]["exchange"]["attempts"]
        duration = f"{stream['durationMs']:.1f} ms"
        if mode in ("off", "once"):  # timed here: no label needed, none given
            assert not attempt["replayed"] and attempt["replayPace"] is None and "_recordedTimeMs" not in har_entry(har)
            assert f'id="latency">{duration}<' in page and "recorded:" not in page and "replayed in" not in page
            assert f'class="latency">{attempt["latencyMs"]:.1f} ms to its head<' in page  # timed to its head only
        else:  # the page's latency is the replay's own, its attempt's the recording's: each says so
            recorded = attempt["latencyMs"]
            assert attempt["replayed"] and recorded >= 100 + 30 * (len(WORDS) + 1)
            assert attempt["replayPace"] == (1.0 if mode == "paced" else None)
            pace = "at the recorded pace" if mode == "paced" else "at once"
            said = f"replayed in {duration}, {pace} (recorded: {recorded:.1f} ms)"
            assert f'id="latency">{said}<' in page
            assert f'class="latency">recorded: {recorded:.1f} ms<' in page
            assert har_entry(har)["_recordedTimeMs"] == recorded and har_entry(har)["comment"].endswith(f"time: {said}")
            if mode == "none":
                assert stream["durationMs"] < recorded
        (entry,) = har["log"]["entries"]
        content = entry["response"]["content"]
        assert content["text"] == whole.decode() and content["size"] == len(whole)
        assert content["mimeType"].startswith("text/event-stream")
        assert entry["time"] == stream["durationMs"]
        assert entry["timings"]["wait"] == round(stream["timeToFirstByteMs"], 3)
        assert entry["timings"]["receive"] == pytest.approx(stream["durationMs"] - stream["timeToFirstByteMs"], 1e-3)


def test_anthropic_event_stream_flow_keeps_its_named_events_and_text(tmp_path: Path, streaming: Streaming) -> None:
    upstream, url = streaming
    upstream.reset(gap=0.01)
    config = llm_config(url, stream_text_path="$.delta.text")
    for mode, text, flow, _, _ in three_ways(tmp_path, config, anthropic_text):
        assert text == "".join(WORDS)
        stream = flow["data"]["exchange"]["stream"]
        assert stream["text"] == "".join(WORDS), mode
        assert [e["event"] for e in stream["events"]] == [
            json.loads(chunk.split(b"data: ")[1])["type"] for chunk in anthropic_events(WORDS)
        ]
        assert stream["events"][-1]["event"] == "message_stop" and flow["stream"] == "complete"


def test_the_live_list_shows_a_stream_streaming_then_the_same_row_over(tmp_path: Path, streaming: Streaming) -> None:
    upstream, url = streaming
    upstream.reset(first_delay=0.3, gap=0.05)
    with running_proxy(tmp_path, llm_config(url), record_mode="off") as proxy:
        seen: list[dict[str, Any]] = []
        with httpx.stream("GET", f"{proxy.url}/flows/events", timeout=10) as feed:
            lines = feed.iter_lines()
            assert next(lines).startswith("retry:")
            reader = threading.Thread(target=openai_text, args=(proxy.url,))
            reader.start()
            for line in lines:
                if line.startswith("data: "):
                    seen.append(json.loads(line[6:]))
                    if seen[-1]["stream"] in OVER:
                        break
            reader.join()
    first, last = seen[0], seen[-1]
    assert first["stream"] == "streaming" and first["latency_ms"] is None and first["size"] == 0
    assert last["id"] == first["id"] and last["stream"] == "complete" and last["at"] == first["at"]
    assert last["size"] == len(b"".join(openai_events(WORDS))) and last["latency_ms"] >= 300 + 50 * len(WORDS)


def test_a_client_that_hangs_up_mid_stream_leaves_a_cut_flow_with_the_bytes_relayed(
    tmp_path: Path, streaming: Streaming
) -> None:
    upstream, url = streaming
    upstream.reset(gap=0.2)
    with running_proxy(tmp_path, llm_config(url), record_mode="off") as proxy:
        received = b""
        with httpx.stream("POST", f"{proxy.url}/forward/llm/v1/chat/completions", json={}) as response:
            for chunk in response.iter_raw():
                received += chunk
                if received.count(b"data: ") >= 2:
                    break  # closes the connection with the stream half way
        (flow,) = flows_over(proxy, 1)
    stream = flow["data"]["exchange"]["stream"]
    assert flow["stream"] == stream["outcome"] == "cut"
    whole = len(b"".join(openai_events(WORDS)))
    assert len(received) <= stream["bytes"] == flow["size"] < whole
    assert flow["data"]["exchange"]["response"]["body"].encode().startswith(received)  # kept as relayed


def test_an_upstream_that_breaks_its_stream_leaves_a_cut_flow(tmp_path: Path, streaming: Streaming) -> None:
    upstream, url = streaming
    upstream.reset(cut_after=3, gap=0.01)
    with running_proxy(tmp_path, llm_config(url), record_mode="off") as proxy:
        received = b""
        with pytest.raises(httpx.RemoteProtocolError):
            with httpx.stream("POST", f"{proxy.url}/forward/llm/v1/chat/completions", json={}) as response:
                for chunk in response.iter_raw():
                    received += chunk
        (flow,) = flows_over(proxy, 1)
    stream = flow["data"]["exchange"]["stream"]
    assert flow["stream"] == "cut" and stream["bytes"] == len(received) == flow["size"]
    assert flow["data"]["exchange"]["response"]["body"] == received.decode()
    assert len(stream["events"]) == 3


def test_the_body_a_stream_flow_keeps_is_capped_and_marked_truncated(tmp_path: Path, streaming: Streaming) -> None:
    upstream, url = streaming
    upstream.reset(gap=0.0)
    whole = b"".join(openai_events(WORDS))
    with (
        running_proxy(tmp_path, llm_config(url), record_mode="off", flow_body_max_bytes=300) as proxy,
        httpx.Client(base_url=proxy.url) as client,
    ):
        assert openai_text(proxy.url) == "".join(WORDS)  # the client gets it all
        (flow,) = flows_over(proxy, 1)
        har = client.get(f"/flows/{flow['id']}.har").json()
        page = client.get(f"/flows/{flow['id']}").text
    stream = flow["data"]["exchange"]["stream"]
    assert flow["data"]["exchange"]["response"]["body"] == whole[:300].decode()
    assert stream["truncated"] and stream["bytes"] == flow["size"] == len(whole) and flow["stream"] == "complete"
    content = har["log"]["entries"][0]["response"]["content"]
    assert content["text"] == whole[:300].decode() and "truncated" in content["comment"]
    assert 'id="stream-truncated"' in page


def test_a_secret_echoed_across_two_chunks_is_masked_in_the_flow_and_its_har(
    tmp_path: Path, streaming: Streaming
) -> None:
    upstream, url = streaming
    upstream.reset(chunks=secret_echo_chunks(TEST_TOKEN), gap=0.05)
    with (
        running_proxy(tmp_path, llm_config(url), record_mode="off") as proxy,
        httpx.Client(base_url=proxy.url) as client,
    ):
        assert openai_text(proxy.url) == f"your key is {MASK} ok"
        (flow,) = flows_over(proxy, 1)
        har = client.get("/flows.har").text
        page = client.get(f"/flows/{flow['id']}").text
        raw = proxy.runtime.store.call(lambda: proxy.runtime.store.db.conn.execute("SELECT data FROM flows").fetchall())
    for shown in (har, page, str(raw)):
        assert TEST_TOKEN[:7] not in shown and TEST_TOKEN[7:] not in shown
    assert flow["data"]["exchange"]["stream"]["text"] == f"your key is {MASK} ok"
    assert f"your key is {MASK} ok" in json.loads(har)["log"]["entries"][0]["response"]["content"]["text"]


def test_the_har_export_loads_in_haralyzer_and_has_the_har_1_2_fields(tmp_path: Path, streaming: Streaming) -> None:
    upstream, url = streaming
    upstream.reset(gap=0.01)
    cassettes = tmp_path / "cassettes"
    with (
        running_proxy(tmp_path, llm_config(url), cassettes_dir=cassettes, record_mode="none") as proxy,
        httpx.Client(base_url=proxy.url) as client,
    ):
        missed = client.post("/forward/llm/v1/chat/completions", json={})  # nothing recorded: a miss
        assert missed.status_code == 404
        recorded = client.post("/forward/llm/v1/chat/completions", json={}, headers={"X-Proxy-Record-Mode": "once"})
        assert recorded.status_code == 200
        flows_over(proxy, 1)
        document = client.get("/flows.har").json()
    parser = HarParser(document)
    assert parser.browser["name"] == "proxy" and parser.version == "1.2"
    entries = parser.pages[0].entries
    assert len(entries) == 2
    streamed, miss = sorted(entries, key=lambda e: -e.status)
    assert streamed.response.text == b"".join(openai_events(WORDS)).decode()
    assert streamed.response.mimeType.startswith("text/event-stream")
    assert miss.response.text == "" and miss.status == 0
    assert streamed.time > 0 and streamed.timings["wait"] <= streamed.time
    log = document["log"]
    assert {"version", "creator", "browser", "entries"} <= set(log)
    for entry in log["entries"]:
        assert {"startedDateTime", "time", "request", "response", "cache", "timings"} <= set(entry)
        assert {"size", "mimeType", "text"} <= set(entry["response"]["content"])
        timings = entry["timings"]
        assert {"send", "wait", "receive"} <= set(timings) and all(v >= 0 for v in timings.values())
        assert entry["time"] == pytest.approx(timings["send"] + timings["wait"] + timings["receive"], abs=0.01)


def test_a_streamed_flow_in_a_real_browser(tmp_path: Path, streaming: Streaming) -> None:
    """The live list shows the stream `streaming…`, then fills the same row in; its page shows the stream."""
    from playwright.sync_api import sync_playwright

    upstream, url = streaming
    upstream.reset(first_delay=0.3, gap=0.08)
    with running_proxy(tmp_path, llm_config(url), record_mode="off") as proxy, sync_playwright() as p:
        browser = launch(p)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(f"{proxy.url}/flows")
        page.wait_for_selector("text=· live")
        reader = threading.Thread(target=openai_text, args=(proxy.url,))
        reader.start()
        row = page.wait_for_selector("tr.flow[data-stream=streaming]")
        assert "streaming…" in row.inner_text()
        page.wait_for_selector("tr.flow[data-stream=complete]")
        reader.join()
        assert page.locator("tr.flow").count() == 1
        whole = len(b"".join(openai_events(WORDS)))
        assert str(whole) in page.inner_text("tr.flow") and "streaming…" not in page.inner_text("tr.flow")

        page.click("tr.flow a")
        page.wait_for_selector("#stream-events")
        assert page.inner_text("#stream-outcome") == "complete"
        assert page.inner_text("#stream-bytes") == str(whole)
        assert page.inner_text("#stream-text") == "".join(WORDS)
        events = page.locator("#stream-events tr")
        assert events.count() == 1 + len(WORDS) + 1 + 1  # the heading, the words, the usage, the end
        assert events.last.inner_text().endswith("[DONE] the end of the stream, no event")
        assert " ms" in events.nth(1).inner_text() and "Once" in events.nth(1).inner_text()
        assert "Output mapping" not in page.content()
        folder = Path(os.environ.get("PROXY_SCREENSHOT_DIR", str(tmp_path)))
        page.screenshot(path=str(folder / "flow-stream.png"), full_page=True)
        assert (folder / "flow-stream.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        browser.close()


def test_a_flow_log_from_before_streams_were_tracked_gets_its_column(tmp_path: Path, streaming: Streaming) -> None:
    upstream, url = streaming
    upstream.reset(gap=0.0)
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    with sqlite3.connect(data_dir / "proxy.db") as old:
        old.execute(
            "CREATE TABLE flows (id INTEGER PRIMARY KEY AUTOINCREMENT, at TEXT NOT NULL, kind TEXT NOT NULL,"
            " method TEXT, url TEXT, status INTEGER, latency_ms REAL, ttfb_ms REAL, size INTEGER, outcome TEXT,"
            " connection TEXT, connection_id TEXT, session_id TEXT, error TEXT, data TEXT NOT NULL)"
        )
        old.execute(
            "INSERT INTO flows (at, kind, url, data) VALUES ('2026-01-01T00:00:00.000Z', 'forward', 'http://old/',"
            ' \'{"exchange": {"attempts": []}}\')'
        )
    old.close()
    with running_proxy(tmp_path, llm_config(url), record_mode="off") as proxy:
        assert openai_text(proxy.url) == "".join(WORDS)
        (flow,) = flows_over(proxy, 1)
        listed = httpx.get(f"{proxy.url}/flows").text
    assert flow["id"] == 2 and flow["stream"] == "complete"
    assert "http://old/" in listed and 'data-stream="complete"' in listed


def test_a_streamed_har_entry_is_served_back_by_chromiums_har_router(tmp_path: Path, streaming: Streaming) -> None:
    """Playwright's HAR router (`route_from_har`) answers Chromium's requests from the export: the stream's body."""
    from playwright.sync_api import sync_playwright

    upstream, url = streaming
    upstream.reset(gap=0.0)
    with running_proxy(tmp_path, llm_config(url), record_mode="off") as proxy:
        openai_text(proxy.url)
        (flow,) = flows_over(proxy, 1)
        har = httpx.get(f"{proxy.url}/flows/{flow['id']}.har").json()
    path = tmp_path / "flow.har"
    path.write_text(json.dumps(har))
    request = har["log"]["entries"][0]["request"]
    calls = upstream.plan.calls["openai"]
    with sync_playwright() as p:
        browser = launch(p)
        context = browser.new_context()
        context.route_from_har(str(path), not_found="abort")
        page = context.new_page()
        status, media, text = page.evaluate(
            """async ([url, body]) => {
                const r = await fetch(url, {method: "POST", body, headers: {"content-type": "application/json"}});
                return [r.status, r.headers.get("content-type"), await r.text()];
            }""",
            [request["url"], request["postData"]["text"]],
        )
        browser.close()
    assert upstream.plan.calls["openai"] == calls  # answered from the HAR, not by the upstream
    assert status == 200 and media.startswith("text/event-stream")
    assert text == b"".join(openai_events(WORDS)).decode()
