"""A connector body as Cohere's API takes it (on PATCH every field optional), checked before it is applied."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from proxy.config.known_keys import check_model_keys
from proxy.config.settings import MAX_FAULT_RULES
from proxy.connections.compiled import check_secret_length
from proxy.connections.fault_rules import FaultRule
from proxy.connections.spec import check_url, raise_first
from proxy.errors import InvalidField
from proxy.security.url_secrets import query_secrets, secret_values

# What the API reads back beside the fields given: let through (and ignored) on input.
READ_ONLY_FIELDS = frozenset({"id", "organization_id", "created_at", "updated_at", "auth_type"})


class OAuthIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    client_id: str | None = None
    client_secret: str | None = None
    authorize_url: str | None = None
    token_url: str | None = None
    scope: str | None = None


class ServiceAuthIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["bearer", "basic", "noscheme"] = "noscheme"  # Cohere's default: the token as it is
    token: str = Field(min_length=1)

    @field_validator("type", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value


class ConnectorIn(BaseModel):
    """Fields as in Cohere's API; on PATCH every one is optional."""

    model_config = ConfigDict(extra="ignore")
    name: str | None = Field(default=None, min_length=1, max_length=200)
    url: str | None = Field(default=None, min_length=1, max_length=4000)
    description: str | None = None
    excludes: list[str] | None = None
    active: bool | None = None
    continue_on_failure: bool | None = None
    oauth: OAuthIn | None = None
    service_auth: ServiceAuthIn | None = None
    faults: list[FaultRule] | None = Field(default=None, max_length=MAX_FAULT_RULES)
    acknowledged_insecure_http: bool | None = None


# Connections take this key camelCase, and http:// refusals name it so: a connector takes that spelling too.
_ACKNOWLEDGED_CAMEL = "acknowledgedInsecureHttp"


def parse_connector(data: dict[str, Any], allow_http: bool, acknowledged: bool = False) -> ConnectorIn:
    """The body validated: known keys, one kind of auth, a URL it may call, secrets long enough to mask.
    `acknowledged`: the stored connector's acknowledgement of http, which the body may restate or withdraw."""
    if _ACKNOWLEDGED_CAMEL in data:
        data = {("acknowledged_insecure_http" if k == _ACKNOWLEDGED_CAMEL else k): v for k, v in data.items()}
    check_model_keys(data, ConnectorIn, allowed=READ_ONLY_FIELDS)
    try:
        fields = ConnectorIn.model_validate(data)
    except ValidationError as exc:
        raise_first(exc)
    if data.get("oauth") is not None and data.get("service_auth") is not None:
        raise InvalidField("oauth", "cannot be given together with service_auth")
    if fields.url is not None:
        given = fields.acknowledged_insecure_http
        check_url(fields.url, allow_http or (acknowledged if given is None else given))
        for secret in query_secrets(fields.url):
            check_secret_length(secret.field, secret.value)
    if fields.service_auth is not None:
        check_secret_length("service_auth.token", fields.service_auth.token)
    if fields.oauth is not None and fields.oauth.client_secret:
        check_secret_length("oauth.client_secret", fields.oauth.client_secret)
    return fields


def config_connector_secrets(data: dict[str, Any]) -> list[str]:
    """The secrets a config file's connector entry gives, read without validating it."""
    found = secret_values(data["url"]) if isinstance(data.get("url"), str) else []
    for block, key in (("service_auth", "token"), ("oauth", "client_secret")):
        section = data.get(block)
        if isinstance(section, dict) and isinstance(section.get(key), str):
            found.append(section[key])
    return found
