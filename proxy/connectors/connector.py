"""A Cohere-style connector as it is held and read back: the id derived from its name, secrets sealed."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from proxy.errors import InvalidField
from proxy.security.url_secrets import masked_url

_SLUG = re.compile(r"[^a-z0-9]+")


@dataclass
class Connector:
    id: str
    name: str
    url: str
    created_at: str
    updated_at: str
    description: str | None = None
    excludes: list[str] = field(default_factory=list)
    active: bool = True
    continue_on_failure: bool = False
    oauth: dict[str, Any] | None = None  # without client_secret
    service_auth_type: str | None = None
    sealed: str | None = None  # Fernet token of {"token", "client_secret"}
    faults: list[dict[str, Any]] = field(default_factory=list)  # fault rules, as given
    acknowledged_insecure_http: bool = False  # an http:// URL accepted without --allow-http

    @property
    def shown_url(self) -> str:
        """Its URL as answers and messages show it: query-string credentials masked."""
        return masked_url(self.url)

    def to_api(self) -> dict[str, Any]:
        auth_type = "oauth" if self.oauth is not None else "service_auth" if self.service_auth_type else None
        return {
            "id": self.id,
            "organization_id": None,
            "name": self.name,
            "description": self.description,
            "url": self.shown_url,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "excludes": self.excludes,
            "auth_type": auth_type,
            "oauth": self.oauth,
            "active": self.active,
            "continue_on_failure": self.continue_on_failure,
            "faults": self.faults,
            "acknowledged_insecure_http": self.acknowledged_insecure_http,
        }


def connector_id(name: str) -> str:
    slug = _SLUG.sub("-", name.lower()).strip("-")
    if not slug:
        raise InvalidField("name", "must contain a letter or a digit (the id is derived from it)")
    return slug
