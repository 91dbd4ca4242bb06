"""The fault-rule routes' bodies and answers as pydantic models: rules set, cleared and active on a connection."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from proxy.config.settings import MAX_FAULT_RULES
from proxy.connections.fault_rules import FaultRule
from proxy.server.api.schemas import Answer


class FaultsSet(BaseModel):
    model_config = ConfigDict(extra="ignore")
    faults: list[FaultRule] = Field(max_length=MAX_FAULT_RULES, description="the rules, in the order they are tried")


class FaultsSetAnswer(Answer):
    connection: str = Field(description="the connection's id (connector:<id> for a connector)")
    test_id: str | None = Field(description="the X-Proxy-Test-Id the rules apply to; null: every call")
    faults: list[FaultRule]


class FaultsCleared(Answer):
    connection: str
    test_id: str | None
    cleared: bool = Field(description="whether rules had been set")


class ActiveFault(FaultRule):
    """A rule as it was given, with what it has done so far."""

    used: int = Field(description="calls it has acted on so far (what counts against `times`)")


class FaultsActive(Answer):
    connection: str = Field(description="the connection's id (connector:<id> for a connector)")
    test_id: str | None = Field(description="the X-Proxy-Test-Id asked about; null: calls without one")
    source: Literal["test", "set", "connection", "none"] = Field(
        description="where the rules acting on those calls come from: set at run time for this test, set at run "
        "time without a test id, the connection's own `faults`, or none"
    )
    faults: list[ActiveFault] = Field(description="the rules, in the order they are tried")
    test_ids: list[str] | None = Field(
        description="without X-Proxy-Test-Id: the tests that have rules of their own (null with one)"
    )
