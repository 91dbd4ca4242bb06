"""The HTTP API's request and response bodies as pydantic models: one source for validation and for
the schemas /openapi.json publishes.

Request models validate what a route takes (camelCase keys, snake_case accepted too, enum values in any
case) and `parse` turns the first failure into `InvalidField` (422) naming the field. Response models
describe what a route answers; the entities still build their answers themselves (`to_api`, the cheap
path a replayed turn takes), and the tests check every answer against its model.
"""

from __future__ import annotations

from typing import Annotated, Any, Self

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    ValidationError,
    create_model,
    field_validator,
)
from pydantic.alias_generators import to_camel

from proxy.connections.spec import ApiModel, CaseInsensitiveEnum, ConnectionSpec, raise_first


class SessionStatus(CaseInsensitiveEnum):
    PENDING = "PENDING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"


class TurnStatus(CaseInsensitiveEnum):
    PENDING = "PENDING"
    GENERATED = "GENERATED"
    FAILED = "FAILED"
    SKIPPED = "SKIPPED"


def _blank_is_absent(value: Any) -> Any:
    return None if value == "" else value


# An id or a short text where an empty string means "not given", as in the Galtea API.
Text = Annotated[str | None, BeforeValidator(_blank_is_absent)]
RequiredText = Annotated[str, BeforeValidator(_blank_is_absent)]


class RequestModel(ApiModel):
    """A request body."""

    @classmethod
    def parse(cls, data: dict[str, Any]) -> Self:
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise_first(exc)

    def given(self) -> set[str]:
        """The fields the request named (even as null): PATCH changes only those."""
        return self.model_fields_set


def _text_or_object(value: Any) -> Any:
    if value is None or isinstance(value, str | dict):
        return value
    raise ValueError("must be a string or an object")


# -- requests ----------------------------------------------------------------------------------


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


class VersionCreate(RequestModel):
    """Connections by id (or by name); the config file's `conversation`/`initialization`/`finalization`
    shorthands take names. Other Galtea version fields (description, systemPrompt…) are kept and read back."""

    model_config = ConfigDict(extra="allow")

    product_id: RequiredText
    name: Text = Field(default=None, description="default v<number>")
    conversation_endpoint_connection_id: Text = Field(default=None, description="required")
    initialization_endpoint_connection_id: Text = None
    finalization_endpoint_connection_id: Text = None
    endpoint_connection_id: Text = Field(default=None, description="older name of the conversation slot")
    conversation: Text = None
    initialization: Text = None
    finalization: Text = None


def _all_optional(model: type[BaseModel], name: str, **extra_fields: Any) -> type[RequestModel]:
    """`model` with every field optional: the shape of a PATCH (validated once merged with what is stored)."""
    fields: dict[str, Any] = {}
    for key, info in model.model_fields.items():
        annotation: Any = info.annotation
        fields[key] = (annotation | None, Field(default=None, description=info.description))
    built: type[RequestModel] = create_model(name, __base__=RequestModel, **fields, **extra_fields)
    return built


EndpointConnectionPatch = _all_optional(ConnectionSpec, "EndpointConnectionPatch")
TestConnectionRequest = _all_optional(
    ConnectionSpec,
    "TestConnectionRequest",
    id=(str | None, Field(default=None, description="a stored connection; the other fields override it")),
    input=(dict[str, Any] | str | None, Field(default=None, description="what the template renders")),
    context=(dict[str, Any] | None, None),
)


# -- responses ---------------------------------------------------------------------------------


class Answer(BaseModel):
    """A response body: camelCase keys, nothing undeclared."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class Session(Answer):
    id: str
    version_id: str
    product_id: str
    custom_id: str | None
    external_session_id: str | None = Field(description="the id the INITIALIZATION connection mapped as session_id")
    test_case_id: str | None
    test_id: str | None
    run_id: str | None
    user_id: None = Field(description="always null: no Galtea user launches a local session")
    context: dict[str, Any] | None
    metadata: dict[str, Any]
    status: SessionStatus
    stopping_reason: str | None
    error: str | None
    is_production: bool
    is_seed: bool
    recording_uri: None
    created_at: str
    deleted_at: str | None


class RenderedRequest(Answer):
    method: str
    url: str
    headers: dict[str, str] = Field(description="secrets masked")
    body: str | None


class Attempt(Answer):
    model_config = ConfigDict(extra="allow")
    attempt: int
    status: int | None
    latency_ms: float
    error: str | None
    cassette: str | None


class UpstreamReply(Answer):
    model_config = ConfigDict(extra="allow")
    status: int
    headers: dict[str, str]
    body: Any


class StreamEvent(Answer):
    offset_ms: float = Field(description="when the chunk that completed the event arrived, ms from the request")
    data: Any = Field(description="the event's data, parsed when it is JSON")


class Stream(Answer):
    model_config = ConfigDict(extra="allow")
    time_to_first_byte_ms: float
    chunks: list[list[float]] = Field(description="[offset_ms, bytes] per chunk, offsets from sending the request")
    events: list[StreamEvent]


class Exchange(Answer):
    """What one upstream call sent and received."""

    model_config = ConfigDict(extra="allow")
    request: RenderedRequest | None
    attempts: list[Attempt]
    response: UpstreamReply | None
    extracted: dict[str, Any]
    extraction_errors: dict[str, str]
    error: str | None
    ended_by_rule: int | None
    cassette: str | None = Field(description="hit, recorded, miss, live or injected (a fault rule acted)")
    stream: Stream | None = Field(default=None, description="a streamed reply's timing and events; null otherwise")


class InferenceResult(Answer):
    """A turn. A logged turn reads back the other fields it was given too."""

    model_config = ConfigDict(extra="allow")
    id: str
    session_id: str
    index: int
    input: Any
    actual_output: str | None
    retrieval_context: str | None
    traces: list[dict[str, Any]]
    latency: float | None
    time_to_first_token_ms: float | None = Field(
        default=None, description="responseMode sse: ms from sending the request to the first piece of text"
    )
    status: TurnStatus
    error: str | None
    exchange: Exchange | None = Field(description="null for a turn the client logged")
    created_at: str


class TurnResult(InferenceResult):
    session_status: SessionStatus
    stopping_reason: str | None


class Version(Answer):
    model_config = ConfigDict(extra="allow")
    id: str
    product_id: str
    name: str
    number: int
    conversation_endpoint_connection_id: str
    initialization_endpoint_connection_id: str | None
    finalization_endpoint_connection_id: str | None
    created_at: str
    deleted_at: str | None


class Product(Answer):
    id: str
    name: str
    description: str
    organization_id: str
    created_at: str
    deleted_at: str | None


class EndpointConnection(ConnectionSpec):
    """A stored connection: `authToken` and `password` read null, secret header values masked."""

    model_config = ConfigDict(extra="forbid")
    id: str
    has_auth_token: bool
    has_password: bool
    created_at: str
    deleted_at: str | None


class TestConnectionResult(Answer):
    success: bool
    status_code: int = Field(description="0 when no answer arrived")
    latency: float
    response: Any
    error: str | None
    extracted_output: dict[str, Any] | None
    extraction_error: str | None
    warnings: list[str] = Field(
        description="What the template rendered empty: each undefined variable, with the keys that do exist "
        "(`{{ input.user_mesage }} is undefined and renders empty; input has: user_message`)"
    )
    exchange: Exchange


class Deleted(Answer):
    id: str
    deleted: bool


class MinimumSdkVersion(Answer):
    latest_sdk_version_published: str
    minimum_sdk_version_supported: str


class Health(Answer):
    status: str
