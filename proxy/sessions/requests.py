"""What the session routes take: the request bodies of a session, a turn and an inference result, and the
statuses a session and a turn go through (validated once, at the route, as pydantic models)."""

from __future__ import annotations

from typing import Any

from pydantic import ConfigDict, Field, StrictBool, field_validator

from proxy.connections.spec import CaseInsensitiveEnum, RequestModel, RequiredText, Text


class SessionStatus(CaseInsensitiveEnum):
    PENDING = "PENDING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"


class TurnStatus(CaseInsensitiveEnum):
    PENDING = "PENDING"
    GENERATED = "GENERATED"
    FAILED = "FAILED"
    SKIPPED = "SKIPPED"


def _text_or_object(value: Any) -> Any:
    if value is None or isinstance(value, str | dict):
        return value
    raise ValueError("must be a string or an object")


class SessionCreate(RequestModel):
    version_id: Text = None
    product_id: Text = Field(default=None, description="instead of versionId: that product's latest version")
    custom_id: Text = None
    test_case_id: Text = Field(default=None, description="refused when isProduction is true")
    test_id: Text = None
    dataset_id: Text = Field(default=None, description="alias of testId")
    run_id: Text = Field(default=None, description="refused on a production session")
    is_production: StrictBool | None = Field(
        default=None, description="absent or null: true without a testCaseId, false with one"
    )
    context: str | dict[str, Any] | None = Field(
        default=None, description='refused with testCaseId; plain text is stored as {"value": "<text>"}'
    )
    metadata: dict[str, Any] | None = None
    status: SessionStatus | None = Field(default=None, description="default PENDING; case-insensitive")

    _context = field_validator("context", mode="before")(_text_or_object)


class SessionUpdate(RequestModel):
    custom_id: Text = None
    context: str | dict[str, Any] | None = None
    metadata: dict[str, Any] | None = None
    status: SessionStatus | None = None
    stopping_reason: Text = None
    error: Text = None

    _context = field_validator("context", mode="before")(_text_or_object)


class SessionFinish(RequestModel):
    stopping_reason: Text = Field(default=None, description="→ COMPLETED")
    error: Text = Field(default=None, description="→ FAILED")


class TurnRequest(RequestModel):
    input: dict[str, Any] | str = Field(description='an object such as {"user_message": "Hi"}, or a string')
    context: dict[str, Any] | None = Field(default=None, description="merged over the session's context")

    @field_validator("input", mode="before")
    @classmethod
    def _input(cls, value: Any) -> Any:
        if value is None:
            raise ValueError('is required: an object such as {"user_message": "Hi"}, or a string')
        if not isinstance(value, dict | str):
            raise ValueError("must be an object or a string")
        return value


class InferenceResultCreate(RequestModel):
    """A turn the client ran itself. Other fields (token counts, costs…) are kept and read back."""

    model_config = ConfigDict(extra="allow")

    session_id: RequiredText
    input: Any = None
    actual_output: Any = None
    retrieval_context: Any = None
    latency: float | None = None
    status: TurnStatus | None = Field(default=None, description="default GENERATED")
    error: Text = None
    traces: list[dict[str, Any]] | None = None

    @field_validator("latency", mode="before")
    @classmethod
    def _number(cls, value: Any) -> Any:
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise ValueError("must be a number")
        return value
