"""The HTTP API's response bodies as pydantic models (and the connection routes' request shapes): one source for
validation and for the schemas /openapi.json publishes.

Request models live with the domain that takes them (`RequestModel` in proxy.connections.spec, a session's and a
turn's in proxy.sessions.requests, a version's in proxy.connections.versions): they validate what a route takes
(camelCase keys, snake_case accepted too, enum values in any case) and `parse` turns the first failure into
`InvalidField` (422) naming the field. Response models describe what a route answers; the entities still build
their answers themselves (`to_api`, the cheap path a replayed turn takes), and the tests check every answer
against its model.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, create_model
from pydantic.alias_generators import to_camel

from proxy.connections.spec import ConnectionSpec, RequestModel
from proxy.sessions.requests import SessionStatus, TurnStatus


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
    latency_ms: float = Field(description="replayed: the latency the recording measured, not the replay's own")
    error: str | None
    cassette: str | None
    replayed: bool = Field(default=False, description="played back from the cassette")
    replay_pace: float | None = Field(
        default=None, description="a replay paced at the recorded timing: the speed its delays were divided by"
    )


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
    done_offset_ms: float | None = Field(
        default=None, description="a stream that ended with `data: [DONE]` (no event): when it arrived"
    )


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
