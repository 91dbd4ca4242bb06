"""The Cohere-compatible connector routes' bodies and answers as pydantic models (snake_case, as Cohere's API)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class CohereAnswer(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Connector(CohereAnswer):
    id: str
    organization_id: str | None
    name: str
    description: str | None
    url: str
    created_at: str
    updated_at: str
    excludes: list[str]
    auth_type: str | None = Field(description="oauth, service_auth or null")
    oauth: dict[str, Any] | None = Field(description="without client_secret")
    active: bool
    continue_on_failure: bool
    faults: list[dict[str, Any]] = Field(default_factory=list, description="fault rules, as given")
    acknowledged_insecure_http: bool = Field(default=False, description="an http:// URL accepted without --allow-http")


class ConnectorAnswer(CohereAnswer):
    connector: Connector


class ConnectorList(CohereAnswer):
    connectors: list[Connector]
    total_count: int


class ConnectorDeleted(CohereAnswer):
    pass


class SearchRequest(BaseModel):
    query: str = Field(min_length=1)


class SearchAnswer(CohereAnswer):
    model_config = ConfigDict(extra="allow")
    results: list[Any]
    warning: str | None = Field(default=None, description="the connector failed and continue_on_failure is set")
