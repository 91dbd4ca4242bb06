from __future__ import annotations

import time
from email.utils import formatdate
from pathlib import Path
from typing import Any

import httpx
import pytest

from proxy.cassettes.library import CassetteLibrary
from proxy.cassettes.record_replay import RecordReplayTransport
from proxy.config.record_mode import RecordMode
from proxy.connections.retry import RetryPolicy, parse_retry_after
from proxy.connections.spec import BackoffStrategy
from proxy.engine.call import Engine
from proxy.engine.results import CallContext
from proxy.engine.transports import OUTCOME_EXTENSION, REPLAYED_EXTENSION
from proxy.security.redaction import Redactor
from proxy.security.vault import Vault, load_fernet
from proxy.storage.store import Store
from tests.helpers import compiled_connection as connection


def policy(strategy: str, initial: int = 100, cap: int = 30000, retries: int = 5) -> RetryPolicy:
    return RetryPolicy(True, retries, initial, BackoffStrategy(strategy), cap, frozenset({500}))


@pytest.mark.parametrize(
    ("strategy", "expected"),
    [("FIXED", [100, 100, 100, 100]), ("LINEAR", [100, 200, 300, 400]), ("EXPONENTIAL", [100, 200, 400, 800])],
)
def test_backoff_delays_per_strategy(strategy: str, expected: list[int]) -> None:
    assert [policy(strategy).backoff_ms(k) for k in range(1, 5)] == expected


def test_backoff_is_capped_by_max_delay() -> None:
    assert [policy("EXPONENTIAL", cap=300).backoff_ms(k) for k in range(1, 5)] == [100, 200, 300, 300]


def test_retry_after_seconds_and_http_date_are_honoured_up_to_the_cap() -> None:
    p = policy("FIXED", cap=5000)
    assert p.delay_ms(1, 429, "2") == 2000
    assert p.delay_ms(1, 503, "60") == 5000  # capped
    now = time.time()
    assert p.delay_ms(1, 429, formatdate(now + 3, usegmt=True), now=now) == pytest.approx(3000, abs=1000)
    assert p.delay_ms(1, 500, "2") == 100  # only 429/503 carry Retry-After meaning
    assert parse_retry_after("garbage") is None


class Script:
    """A MockTransport handler that answers from a list and counts calls."""

    def __init__(self, *answers: Any) -> None:
        self.answers = list(answers)
        self.calls = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.calls += 1
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        return answer


def engine_with(script: Script, sleeps: list[float]) -> Engine:
    async def fake_sleep(seconds: float) -> None:
        sleeps.append(seconds)

    return Engine(httpx.MockTransport(script), sleep=fake_sleep)


async def test_retries_retryable_status_with_exponential_backoff_then_succeeds() -> None:
    script = Script(httpx.Response(500), httpx.Response(502), httpx.Response(200, json={"reply": "ok"}))
    sleeps: list[float] = []
    conn = connection(retryEnabled=True, retryMaxAttempts=3, retryInitialDelayMs=100, retryableStatusCodes=[500, 502])
    result = await engine_with(script, sleeps).call(conn, CallContext(input={"m": "x"}))
    assert result.ok and result.output == "ok"
    assert script.calls == 3 and sleeps == [0.1, 0.2]
    assert [a.status for a in result.attempts] == [500, 502, 200]


async def test_max_attempts_means_retries_after_the_first_call() -> None:
    script = Script(httpx.Response(503, text="down"))
    sleeps: list[float] = []
    conn = connection(retryEnabled=True, retryMaxAttempts=2, retryInitialDelayMs=10, retryBackoffStrategy="fixed")
    result = await engine_with(script, sleeps).call(conn, CallContext(input={"m": "x"}))
    assert script.calls == 3 and sleeps == [0.01, 0.01]
    assert result.error == "External API responded with HTTP 503: Service Unavailable — down"


async def test_non_retryable_status_and_disabled_retry_call_once() -> None:
    for conn in (connection(retryEnabled=True), connection(retryEnabled=False)):
        script = Script(httpx.Response(422 if conn.spec.retry_enabled else 500, json={"detail": "bad"}))
        result = await engine_with(script, []).call(conn, CallContext(input={"m": "x"}))
        assert script.calls == 1 and not result.ok


async def test_connection_errors_and_timeouts_are_retried() -> None:
    request = httpx.Request("POST", "https://up.test/chat")
    script = Script(
        httpx.ConnectError("refused", request=request),
        httpx.ReadTimeout("slow", request=request),
        httpx.Response(200, json={"reply": "ok"}),
    )
    conn = connection(retryEnabled=True, retryMaxAttempts=3, retryInitialDelayMs=1, retryBackoffStrategy="LINEAR")
    sleeps: list[float] = []
    result = await engine_with(script, sleeps).call(conn, CallContext(input={"m": "x"}))
    assert result.ok and script.calls == 3 and sleeps == [0.001, 0.002]
    assert result.attempts[0].error is not None and "connection refused" in result.attempts[0].error


async def test_retry_after_header_drives_the_wait() -> None:
    script = Script(httpx.Response(429, headers={"Retry-After": "2"}), httpx.Response(200, json={"reply": "ok"}))
    sleeps: list[float] = []
    conn = connection(retryEnabled=True, retryInitialDelayMs=10)
    result = await engine_with(script, sleeps).call(conn, CallContext(input={"m": "x"}))
    assert result.ok and sleeps == [2.0]
    assert result.attempts[1].waited_ms == 2000


async def test_end_rule_match_is_never_retried() -> None:
    script = Script(httpx.Response(500, json={"error": {"code": "conversation_ended"}}))
    conn = connection(
        retryEnabled=True,
        conversationEndRules=[
            {"statusCode": 500, "bodyMatch": {"path": "$.error.code", "equals": "conversation_ended"}}
        ],
    )
    result = await engine_with(script, []).call(conn, CallContext(input={"m": "x"}))
    assert script.calls == 1 and result.ok and result.ended_by_rule == 0


@pytest.mark.parametrize(
    ("extensions", "expected_sleeps"),
    [
        ({REPLAYED_EXTENSION: True, OUTCOME_EXTENSION: "hit"}, []),  # played back: no wait to repeat
        ({OUTCOME_EXTENSION: "hit"}, [0.1]),  # the outcome's name is not what decides
    ],
)
async def test_backoff_is_skipped_on_the_transports_replayed_flag(
    extensions: dict[str, Any], expected_sleeps: list[float]
) -> None:
    script = Script(httpx.Response(500, extensions=extensions), httpx.Response(200, json={"reply": "ok"}))
    sleeps: list[float] = []
    conn = connection(retryEnabled=True, retryMaxAttempts=2, retryInitialDelayMs=100, retryableStatusCodes=[500])
    result = await engine_with(script, sleeps).call(conn, CallContext(input={"m": "x"}))
    assert result.ok and script.calls == 2 and sleeps == expected_sleeps


async def test_a_replayed_retry_sequence_waits_nothing(tmp_path: Path) -> None:
    """Recorded live with its backoff; replayed from the cassette, the same two attempts without it."""
    store = Store(tmp_path / "data", Vault(load_fernet(tmp_path / "data")))
    library = CassetteLibrary(tmp_path / "cassettes", store)
    script = Script(httpx.Response(500), httpx.Response(200, json={"reply": "ok"}))
    sleeps: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        sleeps.append(seconds)

    engine = Engine(RecordReplayTransport(httpx.MockTransport(script), library, Redactor()), sleep=fake_sleep)
    conn = connection(retryEnabled=True, retryMaxAttempts=2, retryInitialDelayMs=100, retryableStatusCodes=[500])
    try:
        recorded = await engine.call(conn, CallContext(input={"m": "x"}, cassette=library.open("sessions", "r")))
        assert recorded.ok and sleeps == [0.1] and script.calls == 2
        handle = library.open("sessions", "r", RecordMode.NONE)
        replayed = await engine.call(conn, CallContext(input={"m": "x"}, cassette=handle))
        assert replayed.ok and [a.status for a in replayed.attempts] == [500, 200]
        assert sleeps == [0.1] and script.calls == 2  # nothing waited, nothing sent
    finally:
        await library.close()
        store.close()
