"""`proxy run`: a dataset through the same engine as the server, in-process, one session per test case.

Turns run in order inside a session; sessions run concurrently (bounded). Results are deterministic:
no generated ids or wall-clock times, and replayed latencies are the recorded ones, so two replay
runs of a dataset give byte-identical results files.
"""

from __future__ import annotations

import asyncio
import json
import statistics
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from proxy.cassettes.words import counted, noun
from proxy.config.settings import DEFAULT_CONCURRENCY
from proxy.connections.versions import Version
from proxy.errors import ProxyError
from proxy.server.runtime import Runtime
from proxy.sessions import PENDING, Turn
from proxy.sessions.dataset import TestCase


@dataclass
class CaseResult:
    test_case_id: str
    external_session_id: str | None = None
    status: str = "FAILED"
    stopping_reason: str | None = None
    error: str | None = None
    turns: list[dict[str, Any]] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.status == "COMPLETED"

    def to_json_line(self) -> str:
        return json.dumps(
            {
                "testCaseId": self.test_case_id,
                "externalSessionId": self.external_session_id,
                "status": self.status,
                "stoppingReason": self.stopping_reason,
                "error": self.error,
                "turns": self.turns,
            },
            ensure_ascii=False,
            sort_keys=False,
        )


def turn_result(turn: Turn) -> dict[str, Any]:
    exchange = turn.exchange or {}
    return {
        "input": turn.input,
        "output": turn.actual_output,
        "retrievalContext": turn.retrieval_context,
        "traces": turn.traces,
        "latencyMs": turn.latency,
        "timeToFirstTokenMs": turn.time_to_first_token_ms,
        "status": turn.status,
        "cassette": exchange.get("cassette"),
    }


async def run_case(runtime: Runtime, version: Version, case: TestCase) -> CaseResult:
    result = CaseResult(case.id)
    sessions = runtime.sessions
    try:
        session = await sessions.create({"versionId": version.id, "testCaseId": case.id})
        for turn_input in case.turns:
            done = await sessions.run_turn(session.id, {"input": turn_input, "context": case.context})
            session = done.session
            result.turns.append(turn_result(done.turn))
            if session.status != PENDING:
                break
        if session.status == PENDING:
            session = await sessions.finish(session.id, {})
        result.status = session.status
        result.stopping_reason = session.stopping_reason
        result.error = session.error
        result.external_session_id = session.external_session_id or session.custom_id
    except ProxyError as exc:
        result.error = exc.message
    return result


async def run_dataset(
    runtime: Runtime,
    version: Version,
    cases: list[TestCase],
    concurrency: int = DEFAULT_CONCURRENCY,
    on_done: Callable[[CaseResult], None] | None = None,
) -> list[CaseResult]:
    gate = asyncio.Semaphore(concurrency)

    async def one(case: TestCase) -> CaseResult:
        async with gate:
            result = await run_case(runtime, version, case)
        if on_done:
            on_done(result)
        return result

    return list(await asyncio.gather(*(one(case) for case in cases)))


def summary(results: list[CaseResult]) -> list[str]:
    latencies = sorted(t["latencyMs"] for r in results for t in r.turns if t["latencyMs"] is not None)
    outcomes = Counter(t["cassette"] or "none" for r in results for t in r.turns)
    passed = sum(r.passed for r in results)

    def pct(q: float) -> str:
        if not latencies:
            return "-"
        return f"{latencies[min(len(latencies) - 1, int(q * len(latencies)))]:.1f} ms"

    median = f"{statistics.median(latencies):.1f} ms" if latencies else "-"
    rows = [
        ("sessions", f"{len(results)} ({passed} passed, {len(results) - passed} failed)"),
        ("turns", str(sum(len(r.turns) for r in results))),
        ("latency", f"p50 {median}   p95 {pct(0.95)}"),
        (
            "cassette",
            f"{counted(outcomes['hit'], 'hit')}, {outcomes['recorded']} recorded, "
            f"{counted(outcomes['miss'], 'miss', 'misses')}"
            + (f", {outcomes['live']} live" if outcomes.get("live") else ""),
        ),
    ]
    lines = [f"  {name:<9} {value}" for name, value in rows]
    failed = [r for r in results if not r.passed]
    for r in failed[:10]:
        lines.append(f"  FAILED {r.test_case_id}: {r.error}")
    if len(failed) > 10:
        lines.append(f"  … and {len(failed) - 10} more failed {noun(len(failed) - 10, 'session')} (see --out)")
    return lines
