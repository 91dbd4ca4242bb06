"""Faults on purpose: rules that make calls to a connection fail the way real upstreams do.

A rule answers a status (with `Retry-After`) and a body, delays the call, or cuts the body after some
bytes. It acts on the first `times` matching calls, or on a `probability` share of them; its generator
is seeded (the rule's `seed`, else `settings.fault_seed`) so a run repeats. The first rule that matches
and fires acts; one whose `times` are used up lets the next rule have the call.

Rules come from a connection's (or connector's) `faults` field, or are set at run time with
`PUT /_proxy/faults/{connection}`; rules set with `X-Proxy-Test-Id: T` apply only to calls that carry
`T`. A call carries the test id of the request it serves (`scoped_to_test`, set by the API layer).
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from contextvars import ContextVar
from fnmatch import fnmatchcase
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from proxy.config.settings import MAX_FAULT_DELAY_MS

TEST_ID_HEADER = "X-Proxy-Test-Id"
# The test id of the request being served: each request runs in its own context, so concurrent
# requests (and two servers in one process) never see each other's.
_test_id: ContextVar[str | None] = ContextVar("proxy_fault_test_id", default=None)


class FaultMatch(BaseModel):
    model_config = ConfigDict(extra="ignore")
    method: str | None = Field(default=None, min_length=1, description="HTTP method, any case")
    path: str | None = Field(default=None, min_length=1, description="URL path; a glob (`*` matches anything)")


class FaultRule(BaseModel):
    model_config = ConfigDict(extra="ignore")
    status: int | None = Field(default=None, ge=100, le=599, description="answer this status instead")
    retry_after: int | str | None = Field(default=None, description="Retry-After of the answer: seconds or a date")
    delay_ms: int | None = Field(default=None, ge=0, le=MAX_FAULT_DELAY_MS, description="wait before the call")
    cut_after_bytes: int | None = Field(default=None, ge=0, description="the body breaks off after this many bytes")
    body: Any = Field(default=None, description="the answer's body: a string as it is, anything else as JSON")
    times: int | None = Field(default=None, ge=1, description="act on the first N matching calls only")
    probability: float | None = Field(default=None, ge=0, le=1, description="act on this share of matching calls")
    seed: int | None = Field(default=None, description="seed of this rule's generator (else settings.fault_seed)")
    match: FaultMatch | None = None

    @field_validator("retry_after")
    @classmethod
    def _retry_after(cls, value: int | str | None) -> int | str | None:
        if isinstance(value, int) and value < 0:
            raise ValueError("must be 0 or more seconds, or an HTTP date")
        if isinstance(value, str) and (not value.strip() or "\n" in value or "\r" in value):
            raise ValueError("must be seconds or an HTTP date on one line")
        return value

    @model_validator(mode="after")
    def _acts(self) -> FaultRule:
        if self.status is None and self.body is None and self.delay_ms is None and self.cut_after_bytes is None:
            raise ValueError("a rule must do something: give status, body, delay_ms or cut_after_bytes")
        if self.retry_after is not None and self.status is None:
            raise ValueError("retry_after needs a status to answer with")
        return self

    def matches(self, method: str, path: str) -> bool:
        match = self.match
        if match is None:
            return True
        if match.method is not None and match.method.upper() != method.upper():
            return False
        return match.path is None or fnmatchcase(path, match.path)

    @property
    def answers(self) -> bool:
        """Whether the rule answers itself, instead of letting the call through."""
        return self.status is not None or self.body is not None


class FaultPlan:
    """Rules in use, with what each has done so far: calls acted on, and its generator."""

    def __init__(self, rules: list[FaultRule], default_seed: int | None = None) -> None:
        self.rules = rules
        self.fired = [0] * len(rules)
        self.randoms = [
            _generator(rule.seed if rule.seed is not None else default_seed, index) for index, rule in enumerate(rules)
        ]

    def pick(self, method: str, path: str) -> FaultRule | None:
        """The rule that acts on this call, counted; None lets the call through untouched."""
        for index, rule in enumerate(self.rules):
            if not rule.matches(method, path):
                continue
            if rule.times is not None and self.fired[index] >= rule.times:
                continue
            if rule.probability is not None and self.randoms[index].random() >= rule.probability:
                continue
            self.fired[index] += 1
            return rule
        return None


def _generator(seed: int | None, index: int) -> random.Random:
    # A string seed is hashed with SHA-512: the same on every run and every machine.
    return random.Random(f"{seed}/{index}") if seed is not None else random.Random()


def current_test_id() -> str | None:
    return _test_id.get()


@contextlib.contextmanager
def scoped_to_test(test_id: str | None) -> Iterator[None]:
    """Calls made inside carry `test_id` (the X-Proxy-Test-Id of the request they serve)."""
    token = _test_id.set(test_id or None)
    try:
        yield
    finally:
        _test_id.reset(token)
