from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx

from proxy.cassettes.library import CassetteLibrary
from proxy.cassettes.record_replay import RecordReplayTransport
from proxy.config.record_mode import RecordMode
from proxy.engine.call import Engine
from proxy.engine.results import CallContext
from proxy.engine.transports.live import PacedTransport
from proxy.engine.transports.ratelimit import RateLimiter, RateLimiters
from proxy.security.redaction import Redactor
from proxy.security.vault import Vault, load_fernet
from proxy.storage.store import Store
from tests.helpers import compiled_connection as connection


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


async def test_calls_over_the_limit_wait_for_the_rolling_window() -> None:
    clock = FakeClock()
    limiter = RateLimiter(2, 60.0, clock=clock, sleep=clock.sleep)
    assert await limiter.acquire() == 0
    clock.now += 10
    assert await limiter.acquire() == 0
    waited = await limiter.acquire()  # third call inside the minute waits until the first leaves the window
    assert waited == 50.0 and clock.sleeps == [50.0]
    assert await limiter.acquire() == 10.0  # the second call's slot frees 10 s later


async def test_limit_is_shared_by_every_caller_of_a_connection() -> None:
    limiters = RateLimiters(window_s=0.3)
    seen = set()
    for _ in range(3):
        limiter = limiters.get("ec_1", 2)
        assert limiter is not None
        seen.add(id(limiter))
    assert len(seen) == 1
    assert limiters.get("ec_1", None) is None


async def test_engine_call_waits_rather_than_fails_when_over_the_limit() -> None:
    answer = httpx.MockTransport(lambda r: httpx.Response(200, json={"reply": "ok"}))
    engine = Engine(PacedTransport(answer, RateLimiters(0.4)))
    conn = connection(rateLimit=2)
    started = time.perf_counter()
    results = await asyncio.gather(*(engine.call(conn, CallContext(input={"m": str(i)})) for i in range(3)))
    elapsed = time.perf_counter() - started
    assert all(r.ok for r in results)
    assert elapsed >= 0.35  # the third call waited for the window
    assert max(r.attempts[0].waited_ms for r in results) >= 350


async def test_the_wait_for_a_slot_is_no_part_of_the_attempt_timeout() -> None:
    """The timeout starts when the request is sent: a call that waits longer than its timeout for the rate
    limit still succeeds, and reports the wait as waitedMs, not as latency."""

    async def answer(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(0.2)  # the upstream's own time, well inside the timeout
        return httpx.Response(200, json={"reply": "ok"})

    engine = Engine(PacedTransport(httpx.MockTransport(answer), RateLimiters(window_s=1.2)))
    conn = connection(rateLimit=1, timeout=0.5)
    first = await engine.call(conn, CallContext(input={"m": "1"}))
    second = await engine.call(conn, CallContext(input={"m": "2"}))  # waits ~1 s for the first to leave the window
    assert first.ok and second.ok, second.error
    (attempt,) = second.attempts
    assert 700 <= attempt.waited_ms <= 1300
    assert 150 <= attempt.latency_ms < 500


async def test_after_the_wait_the_attempt_still_has_its_timeout() -> None:
    async def slow(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(0.8)
        return httpx.Response(200, json={"reply": "late"})

    engine = Engine(PacedTransport(httpx.MockTransport(slow), RateLimiters(window_s=0.6)))
    conn = connection(rateLimit=1, timeout=0.5)
    await engine.call(conn, CallContext(input={"m": "1"}))
    started = time.perf_counter()
    result = await engine.call(conn, CallContext(input={"m": "2"}))
    assert result.error == "timed out after 0.5s"
    assert result.attempts[0].waited_ms > 0  # the slot was waited for, then the timeout ran in full
    assert 0.45 <= time.perf_counter() - started - result.attempts[0].waited_ms / 1000 < 0.75


async def test_a_recording_keeps_the_upstream_latency_without_the_wait(tmp_path: Path) -> None:
    store = Store(tmp_path / "data", Vault(load_fernet(tmp_path / "data")))
    library = CassetteLibrary(tmp_path / "cassettes", store)
    answer = httpx.MockTransport(lambda r: httpx.Response(200, json={"reply": "ok"}))
    engine = Engine(RecordReplayTransport(PacedTransport(answer, RateLimiters(window_s=0.6)), library, Redactor()))
    conn = connection(rateLimit=1)
    try:
        handle = library.open("sessions", "paced", RecordMode.NEW_EPISODES)
        for n in range(2):
            result = await engine.call(conn, CallContext(input={"m": str(n)}, cassette=handle))
            assert result.ok and result.outcome == "recorded"
        assert result.attempts[0].waited_ms >= 400 and result.attempts[0].latency_ms < 200
        recorded = (await library.cassette(handle.name)).interactions
        assert [i.proxy["latency_ms"] < 200 for i in recorded] == [True, True]  # a replay will not wait again
    finally:
        await library.close()
        store.close()
