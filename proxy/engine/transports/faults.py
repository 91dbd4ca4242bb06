"""The fault layer: the top of the transport stack, above the cassette, so what it injects is never
recorded and acts the same in live and replay mode. The engine passes each call's connection id and
configured rules in a request extension; rules set at run time live here, per connection and test id."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import httpx

from proxy.config.settings import MAX_UPSTREAM_BODY_BYTES
from proxy.connections.fault_rules import FaultPlan, FaultRule, current_test_id
from proxy.engine.transports import (
    FAULTS_EXTENSION,
    OUTCOME_EXTENSION,
    RECORDED_LATENCY_EXTENSION,
    REPLAYED_EXTENSION,
    WIRE_HEADERS,
    BodyCut,
    read_capped,
)

INJECTED = "injected"  # the OUTCOME_EXTENSION of an answer a rule acted on
PLANS_KEPT = 1024
# Where the rules acting on a call come from (GET /_proxy/faults answers it as `source`).
TEST_RULES = "test"  # set at run time with the call's X-Proxy-Test-Id
SET_RULES = "set"  # set at run time without a test id
OWN_RULES = "connection"  # the connection's (or connector's) own `faults`
NO_RULES = "none"


class FaultTransport(httpx.AsyncBaseTransport):
    def __init__(self, inner: httpx.AsyncBaseTransport, seed: int | None = None) -> None:
        self.inner = inner
        self.seed = seed
        self._configured: dict[str, FaultPlan] = {}  # by connection id: its own rules, with their counts
        self._set: dict[tuple[str, str | None], FaultPlan] = {}  # set at run time, by (connection id, test id)

    def set_rules(self, connection_id: str, rules: list[FaultRule], test_id: str | None = None) -> None:
        """Rules for the connection's calls (those carrying `test_id` only, when one is given), in place of
        its own; counts start again."""
        self._set[(connection_id, test_id)] = FaultPlan(rules, self.seed)

    def clear_rules(self, connection_id: str, test_id: str | None = None) -> bool:
        """Drop the rules set at run time; the connection's own apply again. Whether there were any."""
        return self._set.pop((connection_id, test_id), None) is not None

    def active(
        self, connection_id: str, rules: list[FaultRule], test_id: str | None = None
    ) -> tuple[str, FaultPlan | None]:
        """What acts on the connection's calls made for `test_id` (None: calls without one), as a call would
        find it, with its counts: (where the rules come from, the plan). Creates nothing."""
        found = self._set_plan(connection_id, test_id)
        if found is not None:
            return found
        if not rules:
            return NO_RULES, None
        plan = self._configured.get(connection_id)
        if plan is None or (plan.rules is not rules and plan.rules != rules):  # not called since it changed
            plan = FaultPlan(rules, self.seed)
        return OWN_RULES, plan

    def test_ids(self, connection_id: str) -> list[str]:
        """The tests that have rules of their own on the connection."""
        return sorted(test_id for conn, test_id in self._set if conn == connection_id and test_id is not None)

    def _set_plan(self, connection_id: str, test_id: str | None) -> tuple[str, FaultPlan] | None:
        plan = self._set.get((connection_id, test_id)) if test_id is not None else None
        if plan is not None:
            return TEST_RULES, plan
        plan = self._set.get((connection_id, None))
        return (SET_RULES, plan) if plan is not None else None

    def _plan(self, request: httpx.Request) -> FaultPlan | None:
        given = request.extensions.get(FAULTS_EXTENSION)
        if given is None or not (given[1] or self._set):  # no rule anywhere: no lookup per call
            return None
        connection_id, rules = given
        found = self._set_plan(connection_id, current_test_id())
        if found is not None:
            return found[1]
        if not rules:
            return None
        plan = self._configured.get(connection_id)
        if plan is None or (plan.rules is not rules and plan.rules != rules):  # the connection was changed
            if len(self._configured) >= PLANS_KEPT:  # testConnection's unsaved connections each have an id
                self._configured.clear()
            plan = self._configured[connection_id] = FaultPlan(rules, self.seed)
        return plan

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        plan = self._plan(request)
        rule = plan.pick(request.method, request.url.path) if plan is not None else None
        if rule is None:
            return await self.inner.handle_async_request(request)
        if rule.delay_ms:
            await asyncio.sleep(rule.delay_ms / 1000)
        response = injected_answer(rule) if rule.answers else await self.inner.handle_async_request(request)
        if rule.cut_after_bytes is not None:
            response = await _cut(response, rule.cut_after_bytes)
        # The answer is not the recording's: its latency is the one measured, delay included.
        extensions = {
            k: v for k, v in response.extensions.items() if k not in (RECORDED_LATENCY_EXTENSION, REPLAYED_EXTENSION)
        }
        response.extensions = {**extensions, OUTCOME_EXTENSION: INJECTED}
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


def injected_answer(rule: FaultRule) -> httpx.Response:
    status = rule.status if rule.status is not None else 200
    headers = {}
    if rule.retry_after is not None:
        headers["Retry-After"] = str(rule.retry_after)
    if isinstance(rule.body, str):
        content = rule.body.encode()
        headers["Content-Type"] = "application/json" if _is_json(rule.body) else "text/plain; charset=utf-8"
    else:
        body = rule.body if rule.body is not None else {"message": f"injected fault: HTTP {status}"}
        content = json.dumps(body, ensure_ascii=False).encode()
        headers["Content-Type"] = "application/json"
    return httpx.Response(status, headers=headers, content=content)


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


async def _cut(response: httpx.Response, limit: int) -> httpx.Response:
    """The same answer whose body breaks off after `limit` bytes: reading it raises BodyCut."""
    try:
        content = await read_capped(response, MAX_UPSTREAM_BODY_BYTES)
    finally:
        await response.aclose()
    headers = [(k, v) for k, v in response.headers.multi_items() if k.lower() not in WIRE_HEADERS]
    if limit >= len(content):
        return httpx.Response(response.status_code, headers=headers, content=content)
    cut = BodyCut(
        f"injected fault: the body was cut after {limit} of {len(content)} bytes",
        response.status_code,
        headers,
        content[:limit],
        len(content),
        INJECTED,
    )
    return httpx.Response(response.status_code, headers=headers, stream=_BrokenStream(content[:limit], cut))


class _BrokenStream(httpx.AsyncByteStream):
    def __init__(self, head: bytes, error: BodyCut) -> None:
        self.head = head
        self.error = error

    async def __aiter__(self) -> AsyncIterator[bytes]:
        if self.head:
            yield self.head
        raise self.error
