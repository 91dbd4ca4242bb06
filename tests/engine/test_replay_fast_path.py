"""A replay hit does only what a replay needs: no header masking, no second parse of the request body, and a
recorded answer decoded once however often it is played; matching and answers stay as they were."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from proxy.cassettes import record_replay as record_replay_module
from proxy.cassettes.library import CassetteLibrary
from proxy.cassettes.matching import MatchRules
from proxy.cassettes.record_replay import RecordReplayTransport
from proxy.config.record_mode import RecordMode
from proxy.connections.compiled import CompiledConnection, compile_connection
from proxy.connections.spec import parse_spec
from proxy.engine.call import Engine
from proxy.engine.results import CallContext
from proxy.engine.transports import REPLAYED_EXTENSION, CassetteMiss
from proxy.security import jsonbounds
from proxy.security.redaction import Redactor
from proxy.security.vault import Vault, load_fernet
from proxy.storage.store import Store

REPLY = {"reply": "recorded answer", "docs": ["a"]}


def connection(**fields: Any) -> CompiledConnection:
    spec = parse_spec(
        {
            "name": "c",
            "productId": "p",
            "url": "https://up.test/chat",
            "type": "CONVERSATION",
            "authType": "BEARER",
            "authToken": "fast-path-token-1",
            "inputTemplate": '{"message": "{{ input.m }}", "n": 1}',
            "outputMapping": {"output": "$.reply"},
            **fields,
        }
    )
    return compile_connection("ec_c", spec, "2026-01-01T00:00:00Z", allow_http=False)


class Setup:
    def __init__(self, tmp_path: Path, rules: MatchRules | None = None) -> None:
        self.store = Store(tmp_path / "data", Vault(load_fernet(tmp_path / "data")))
        self.library = CassetteLibrary(tmp_path / "cassettes", self.store, rules)
        self.live_calls = 0

        def live(request: httpx.Request) -> httpx.Response:
            self.live_calls += 1
            return httpx.Response(200, json=REPLY)

        self.engine = Engine(RecordReplayTransport(httpx.MockTransport(live), self.library, Redactor()))

    async def call(self, conn: CompiledConnection, message: str, mode: RecordMode) -> Any:
        handle = self.library.open("sessions", "tc", mode, repeat_last=True)
        return await self.engine.call(conn, CallContext(input={"m": message}, cassette=handle))


@pytest.fixture
async def setup(tmp_path: Path) -> AsyncIterator[Setup]:
    made = Setup(tmp_path)
    yield made
    await made.library.close()
    made.store.close()


async def test_a_replay_hit_masks_no_request_header_but_a_recording_does(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    masked: list[str] = []
    real = record_replay_module._mask_header
    monkeypatch.setattr(record_replay_module, "_mask_header", lambda n, v, r: masked.append(n) or real(n, v, r))
    conn = connection()
    recorded = await setup.call(conn, "hi", RecordMode.ONCE)
    assert recorded.ok and recorded.outcome == "recorded" and "authorization" in masked
    masked.clear()
    replayed = await setup.call(conn, "hi", RecordMode.NONE)
    assert replayed.ok and replayed.outcome == "hit" and replayed.output == "recorded answer"
    assert masked == []  # nothing matches on headers: none is masked
    assert setup.live_calls == 1


async def test_a_miss_still_masks_and_explains(setup: Setup) -> None:
    conn = connection()
    await setup.call(conn, "hi", RecordMode.ONCE)
    missed = await setup.call(conn, "something else", RecordMode.NONE)
    assert missed.outcome == "miss" and "differing at body $.message" in (missed.error or "")


async def test_a_miss_names_the_whole_path_of_a_key_with_a_colon_and_a_dot(setup: Setup) -> None:
    conn = connection(inputTemplate='{"meta": {"a:b.c": "{{ input.m }}"}}')
    await setup.call(conn, "hi", RecordMode.ONCE)
    missed = await setup.call(conn, "bye", RecordMode.NONE)
    nearest = missed.attempts[-1].nearest
    assert missed.outcome == "miss" and nearest is not None and nearest["path"] == "$.meta['a:b.c']"
    assert """differing at body $.meta['a:b.c']: "hi" recorded, "bye" now""" in (missed.error or "")


async def test_the_match_key_reuses_the_body_the_engine_parsed(setup: Setup, monkeypatch: pytest.MonkeyPatch) -> None:
    conn = connection()
    await setup.call(conn, "hi", RecordMode.ONCE)
    monkeypatch.setattr(MatchRules, "parsed_body", lambda self, body: pytest.fail("the request body was parsed again"))
    replayed = await setup.call(conn, "hi", RecordMode.NONE)
    assert replayed.outcome == "hit" and replayed.output == "recorded answer"


async def test_ignored_body_paths_still_match_on_the_parsed_body(tmp_path: Path) -> None:
    made = Setup(tmp_path, MatchRules(ignore_body=("$.n",)))
    try:
        await made.call(connection(), "hi", RecordMode.ONCE)
        other_n = connection(inputTemplate='{"message": "{{ input.m }}", "n": 2}')
        assert (await made.call(other_n, "hi", RecordMode.NONE)).outcome == "hit"
        assert (await made.call(other_n, "ho", RecordMode.NONE)).outcome == "miss"
    finally:
        await made.library.close()
        made.store.close()


async def test_a_recorded_answer_is_prepared_once_and_still_comes_back_as_a_flagged_response(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    conn = connection()
    await setup.call(conn, "hi", RecordMode.ONCE)
    first = await setup.call(conn, "hi", RecordMode.NONE)
    assert first.attempts[-1].replayed and first.reply.json == REPLY
    parsed: list[str] = []
    real = jsonbounds.loads
    monkeypatch.setattr(jsonbounds, "loads", lambda text, *a: parsed.append(str(text)) or real(text, *a))
    headers_built: list[object] = []
    monkeypatch.setattr(record_replay_module, "_prepared", lambda *a: headers_built.append(a) or pytest.fail())
    again = await setup.call(conn, "hi", RecordMode.NONE)
    assert again.ok and again.output == "recorded answer" and again.reply.json == REPLY
    assert again.attempts[-1].replayed and again.reply.headers["content-type"] == "application/json"
    assert not any("recorded answer" in text for text in parsed)  # the reply's JSON came from its memo
    assert headers_built == []


async def test_the_transport_seam_still_answers_an_httpx_response_with_the_replayed_flag(setup: Setup) -> None:
    conn = connection()
    await setup.call(conn, "hi", RecordMode.ONCE)
    handle = setup.library.open("sessions", "tc", RecordMode.NONE)
    request = httpx.Request(
        "POST", "https://up.test/chat", content=b'{"message": "hi", "n": 1}', extensions={"proxy.cassette": handle}
    )
    response = await setup.engine.transport.handle_async_request(request)
    assert isinstance(response, httpx.Response) and response.extensions[REPLAYED_EXTENSION] is True
    assert response.json() == REPLY
    with pytest.raises(CassetteMiss):
        await setup.engine.transport.handle_async_request(request)  # played through, no repeat_last
