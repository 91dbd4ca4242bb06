"""What the engine needs to send a call somewhere, apart from what a connection renders: where the call is
watched as coming from (`CallSubject`) and, for the raw forward route, the whole target (`ForwardTarget`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from jsonpath_ng import JSONPath

from proxy.config.settings import DEFAULT_TIMEOUT_S
from proxy.connections.fault_rules import FaultRule
from proxy.connections.headers import Credentials, HeaderPlan, compile_headers
from proxy.connections.retry import RetryPolicy
from proxy.connections.spec import AuthType


@dataclass(frozen=True)
class CallSubject:
    """What a call observer (the flow log) is told a call was for."""

    id: str
    name: str
    auth_type: str
    connection_type: str
    mapping: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ForwardTarget:
    """Where a raw call goes and how: credentials and custom headers, timeout, retry policy, rate limit and
    fault rules. A connection gives one (`CompiledConnection.target`); so can anything else the engine calls."""

    id: str
    subject: CallSubject
    credentials: Credentials = field(default_factory=lambda: Credentials(AuthType.NONE))
    headers: Mapping[str, str] = field(default_factory=dict)
    timeout_s: float = DEFAULT_TIMEOUT_S
    retry_policy: RetryPolicy = field(default_factory=RetryPolicy.default)
    rate_limit: int | None = None
    faults: list[FaultRule] = field(default_factory=list)  # passed on as it is: the faults transport keys on it
    traceparent: bool = True
    # Credentials of the URL's query string, (name, value): what a drift check puts back in a recorded URL.
    query_credentials: tuple[tuple[str, str], ...] = ()
    adds: bool = True  # its headers and Galtea's per-call ones (False: the request goes up exactly as sent)
    stream_text_path: JSONPath | None = None  # where each event of a relayed stream holds its piece of text
    _plans: dict[bool, HeaderPlan] = field(default_factory=dict, compare=False, repr=False)

    def header_plan(self, send_traceparent: bool) -> HeaderPlan:
        """The target's headers, worked out once per traceparent setting."""
        plan = self._plans.get(send_traceparent)
        if plan is None:
            plan = self._plans[send_traceparent] = compile_headers(self.credentials, self.headers, send_traceparent)
        return plan
