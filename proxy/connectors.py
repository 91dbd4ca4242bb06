"""Cohere-style connectors: registered with a test query, searched through the same engine.

The id is derived from the name. `oauth` and `service_auth` are exclusive; `client_secret` and `token`
are encrypted at rest and never returned; the OAuth `client_id` is encrypted at rest and returned, as in
Cohere. Registration sends `POST {url}` with a test query through the normal call path (cassettes
included) and is cancelled — with a 400 saying why, never a 409 or 5xx, which the cohere SDK retries —
when the connector cannot be reached, answers non-2xx, or has no `results` list. A search answers each
result whole and names the connector's `excludes` as `excluded_fields`: as in Cohere, excluded fields
remain in the document and are only kept out of the prompt.
"""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from proxy.connection import CompiledConnection, check_secret_length
from proxy.engine import CallLabel, CallResult, Engine
from proxy.errors import BadRequest, InvalidField, NotFound
from proxy.faults import FaultRule
from proxy.known_keys import check_model_keys
from proxy.mapping import CompiledMapping
from proxy.models import AuthType, ConnectionSpec, ConnectionType, HttpMethod, check_url, raise_first
from proxy.origins import same_origin
from proxy.redaction import Redactor
from proxy.registry import now_iso
from proxy.settings import MAX_FAULT_RULES
from proxy.store import Store, entity_json
from proxy.targets import CallSubject, ForwardTarget
from proxy.templating import CompiledTemplate
from proxy.transports.library import CassetteLibrary

REGISTRATION_QUERY = "proxy connector registration test"
# What the API reads back beside the fields given: let through (and ignored) on input.
READ_ONLY_FIELDS = frozenset({"id", "organization_id", "created_at", "updated_at", "auth_type"})
_SLUG = re.compile(r"[^a-z0-9]+")


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
    oauth: dict[str, Any] | None = None  # without client_secret; at rest, without client_id too
    service_auth_type: str | None = None
    sealed: str | None = None  # Fernet token of {"token", "client_secret"}
    sealed_client_id: str | None = None  # at rest only: Fernet token of {"client_id"}
    faults: list[dict[str, Any]] = field(default_factory=list)  # fault rules, as given

    def to_api(self) -> dict[str, Any]:
        auth_type = "oauth" if self.oauth is not None else "service_auth" if self.service_auth_type else None
        return {
            "id": self.id,
            "organization_id": None,
            "name": self.name,
            "description": self.description,
            "url": self.url,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "excludes": self.excludes,
            "auth_type": auth_type,
            "oauth": self.oauth,
            "active": self.active,
            "continue_on_failure": self.continue_on_failure,
            "faults": self.faults,
        }


def connector_id(name: str) -> str:
    slug = _SLUG.sub("-", name.lower()).strip("-")
    if not slug:
        raise InvalidField("name", "must contain a letter or a digit (the id is derived from it)")
    return slug


def auth_header(auth_type: str | None, token: str | None) -> dict[str, str]:
    if not auth_type or not token:
        return {}
    value = {"bearer": f"Bearer {token}", "basic": f"Basic {token}", "noscheme": token}[auth_type]
    return {"Authorization": value}


def redactor_owner(connector_id_: str) -> tuple[str, str]:
    return ("connector", connector_id_)


def stored_connector_secrets(store: Store) -> list[tuple[Connector, dict[str, str]]]:
    """Every stored connector with its secrets decrypted."""
    found = []
    for data in store.call(store.load, "connectors"):
        connector = Connector(**data)
        found.append((connector, store.unseal(connector.sealed)))
    return found


def config_connector_secrets(data: dict[str, Any]) -> list[str]:
    """The secrets a config file's connector entry gives, read without validating it."""
    found = []
    for block, key in (("service_auth", "token"), ("oauth", "client_secret")):
        section = data.get(block)
        if isinstance(section, dict) and isinstance(section.get(key), str):
            found.append(section[key])
    return found


class ConnectorRegistry:
    """Keeps `redactor` knowing the secrets of exactly the stored connectors."""

    def __init__(
        self, store: Store, engine: Engine, library: CassetteLibrary, allow_http: bool, redactor: Redactor
    ) -> None:
        self.store = store
        self.engine = engine
        self.library = library
        self.allow_http = allow_http
        self.redactor = redactor
        self._by_id: dict[str, Connector] = {}
        self._seq = itertools.count(1)

    def load(self) -> None:
        plain: list[Connector] = []
        for connector, secrets in stored_connector_secrets(self.store):
            if connector.sealed_client_id:
                sealed = self.store.unseal(connector.sealed_client_id)
                connector.oauth = {**(connector.oauth or {}), "client_id": sealed["client_id"]}
                connector.sealed_client_id = None
            elif connector.oauth and connector.oauth.get("client_id"):
                plain.append(connector)  # stored before the client id was encrypted
            self.redactor.register(redactor_owner(connector.id), secrets.values())
            self._by_id[connector.id] = connector
            next(self._seq)
        if plain:
            rows = [("connectors", c.id, next(self._seq), self._stored(c)) for c in plain]
            self.store.call(self.store.put_erasing, rows)

    # -- reads -------------------------------------------------------------------------------

    def page(self, limit: int | None, offset: int | None) -> tuple[list[Connector], int]:
        newest_first = sorted(self._by_id.values(), key=lambda c: c.created_at, reverse=True)
        start = offset or 0
        return newest_first[start : start + limit if limit is not None else None], len(newest_first)

    def get(self, connector_id_: str) -> Connector:
        connector = self._by_id.get(connector_id_)
        if connector is None:
            raise NotFound(f"connector {connector_id_} not found")
        return connector

    # -- writes ------------------------------------------------------------------------------

    async def create(self, data: dict[str, Any]) -> Connector:
        fields = self._parse(data)
        if not fields.name:
            raise InvalidField("name", "is required")
        if not fields.url:
            raise InvalidField("url", "is required")
        new_id = connector_id(fields.name)
        if new_id in self._by_id:
            raise InvalidField("name", f"a connector with id {new_id!r} (from this name) already exists")
        now = now_iso()
        connector = Connector(id=new_id, name=fields.name, url=fields.url, created_at=now, updated_at=now)
        secrets = self._apply(connector, fields, {})
        await self._register(connector, secrets)
        await self._persist(connector)
        return connector

    async def update(self, connector_id_: str, data: dict[str, Any]) -> Connector:
        current = self.get(connector_id_)
        fields = self._parse(data)
        updated = Connector(**{**current.__dict__})
        if fields.name is not None and fields.name != current.name:
            new_id = connector_id(fields.name)
            if new_id != current.id:
                raise InvalidField("name", "renaming would change the connector's id; create a new connector")
            updated.name = fields.name
        if fields.url is not None:
            updated.url = fields.url
        stored = self._secrets(current)
        secrets = self._apply(updated, fields, stored)
        if not same_origin(current.url, updated.url):
            restated = {
                "token": fields.service_auth is not None,
                "client_secret": bool(fields.oauth and fields.oauth.client_secret),
            }
            kept = [name for name in stored if name in secrets and not restated.get(name)]
            if kept:
                # Checked before the registration test query, which would carry the stored secret to the new URL.
                raise InvalidField(
                    "url",
                    f"moves the connector to another origin, and its stored {' and '.join(kept)} would be sent "
                    "there: give service_auth (or oauth) again in the same request, or keep the origin",
                )
        updated.updated_at = now_iso()
        if updated.url != current.url or updated.sealed != current.sealed:
            await self._register(updated, secrets)  # a new address or credential is tested again
        await self._persist(updated)
        return updated

    async def upsert(self, data: dict[str, Any]) -> Connector:
        """Config-file connectors: create, or update the one with the same name."""
        name = data.get("name")
        existing = self._by_id.get(connector_id(name)) if isinstance(name, str) and name else None
        return await (self.update(existing.id, data) if existing else self.create(data))

    async def delete(self, connector_id_: str) -> None:
        self.get(connector_id_)
        del self._by_id[connector_id_]
        await self.store.write(self.store.delete_entity, "connectors", connector_id_)
        self.redactor.forget(redactor_owner(connector_id_))

    def _parse(self, data: dict[str, Any]) -> ConnectorIn:
        check_model_keys(data, ConnectorIn, allowed=READ_ONLY_FIELDS)
        try:
            fields = ConnectorIn.model_validate(data)
        except ValidationError as exc:
            raise_first(exc)
            raise
        if data.get("oauth") is not None and data.get("service_auth") is not None:
            raise InvalidField("oauth", "cannot be given together with service_auth")
        if fields.url is not None:
            check_url(fields.url, self.allow_http)
        if fields.service_auth is not None:
            check_secret_length("service_auth.token", fields.service_auth.token)
        if fields.oauth is not None and fields.oauth.client_secret:
            check_secret_length("oauth.client_secret", fields.oauth.client_secret)
        return fields

    def _apply(self, connector: Connector, fields: ConnectorIn, secrets: dict[str, str]) -> dict[str, str]:
        """Copy the given fields onto the connector; returns its (possibly new) secrets, sealed on it."""
        for name in ("description", "excludes", "active", "continue_on_failure"):
            value = getattr(fields, name)
            if value is not None:
                setattr(connector, name, value)
        if fields.faults is not None:
            connector.faults = [rule.model_dump(exclude_none=True) for rule in fields.faults]
        if fields.service_auth is not None:
            connector.oauth = None
            connector.service_auth_type = fields.service_auth.type
            secrets = {"token": fields.service_auth.token}
        if fields.oauth is not None:
            if connector.service_auth_type and fields.service_auth is None and "token" in secrets:
                raise InvalidField("oauth", "the connector uses service_auth; a connector takes one or the other")
            oauth = fields.oauth.model_dump()
            client_secret = oauth.pop("client_secret") or secrets.get("client_secret")
            connector.oauth, connector.service_auth_type = oauth, None
            secrets = {"client_secret": client_secret} if client_secret else {}
        connector.sealed = self.store.seal(secrets) if secrets else None
        return secrets

    def _secrets(self, connector: Connector) -> dict[str, str]:
        return self.store.unseal(connector.sealed)

    def _stored(self, connector: Connector) -> str:
        """The connector as its row keeps it: the OAuth client id sealed."""
        client_id = (connector.oauth or {}).get("client_id")
        if not client_id:
            return entity_json(connector)
        sealed = self.store.seal({"client_id": client_id})
        oauth = {**(connector.oauth or {}), "client_id": None}
        return entity_json(replace(connector, oauth=oauth, sealed_client_id=sealed))

    async def _persist(self, connector: Connector) -> None:
        await self.store.write(self.store.put, "connectors", connector.id, next(self._seq), self._stored(connector))
        self._by_id[connector.id] = connector
        self.redactor.register(redactor_owner(connector.id), self._secrets(connector).values())  # the old ones go

    # -- calls -------------------------------------------------------------------------------

    def _as_connection(self, connector: Connector, token: str | None) -> CompiledConnection:
        """The connector as the engine sees a connection: POST to its URL with its service auth."""
        spec = ConnectionSpec.model_construct(
            name=connector.name,
            product_id="connectors",
            url=connector.url,
            type=ConnectionType.CONVERSATION,
            http_method=HttpMethod.POST,
            auth_type=AuthType.NONE,
            headers=auth_header(connector.service_auth_type, token),
            faults=[FaultRule.model_validate(rule) for rule in connector.faults],
            **{
                name: ConnectionSpec.model_fields[name].get_default(call_default_factory=True)
                for name in ConnectionSpec.model_fields
                if name not in ("name", "product_id", "url", "type", "http_method", "auth_type", "headers", "faults")
            },
        )
        return CompiledConnection(
            f"connector:{connector.id}",
            spec,
            connector.created_at,
            None,
            CompiledTemplate("", url=True),  # never rendered: a connector's URL is sent as it is
            CompiledMapping({}),
        )

    def _target(self, connector: Connector, token: str | None) -> ForwardTarget:
        """Where the engine sends the connector's calls: POST to its URL with its service auth."""
        target_id = f"connector:{connector.id}"
        subject = CallSubject(target_id, connector.name, AuthType.NONE.value, ConnectionType.CONVERSATION.value)
        faults = [FaultRule.model_validate(rule) for rule in connector.faults]
        return ForwardTarget(target_id, subject, headers=auth_header(connector.service_auth_type, token), faults=faults)

    def as_connection(self, connector: Connector) -> CompiledConnection:
        """The connector as the engine sees a connection, with its stored credential."""
        return self._as_connection(connector, self._secrets(connector).get("token"))

    async def call(
        self, connector: Connector, body: dict[str, Any], token: str | None = None, kind: str = "connector search"
    ) -> CallResult:
        token = token if token is not None else self._secrets(connector).get("token")
        target = self._target(connector, token)
        handle = self.library.server_handle("connectors", connector.name, "search", self.library.default_mode)
        payload = json.dumps(body, ensure_ascii=False).encode()
        return await self.engine.forward(
            target, "POST", connector.url, {"Content-Type": "application/json"}, payload, handle, CallLabel(kind)
        )

    async def _register(self, connector: Connector, secrets: dict[str, str]) -> None:
        # Until the test query passes the secrets are not the connector's: known for this call only.
        with self.redactor.scoped(secrets.values()):
            result = await self.call(
                connector, {"query": REGISTRATION_QUERY}, secrets.get("token"), "connector registration"
            )
        problem = search_problem(result)
        if problem:
            raise BadRequest(f"connector registration cancelled: the test query to {connector.url} {problem}")

    async def search(self, connector_id_: str, body: dict[str, Any]) -> tuple[dict[str, Any], CallResult]:
        connector = self.get(connector_id_)
        if not connector.active:
            raise BadRequest(f"connector {connector.id} is inactive: activate it (active: true) to search")
        query = body.get("query")
        if not isinstance(query, str) or not query:
            raise InvalidField("query", "is required (a non-empty string)")
        result = await self.call(connector, body)
        problem = search_problem(result)
        if problem:
            if connector.continue_on_failure:
                warning = f"connector {connector.id} failed: it {problem}"
                return {"results": [], "excluded_fields": list(connector.excludes), "warning": warning}, result
            raise SearchFailed(f"connector {connector.id} failed: it {problem}", result)
        assert result.reply is not None
        # As in Cohere, excluded fields stay in each document: they are named for the client to keep them out
        # of its prompt.
        return {**result.reply.json, "excluded_fields": list(connector.excludes)}, result


class SearchFailed(Exception):
    def __init__(self, message: str, result: CallResult) -> None:
        super().__init__(message)
        self.message = message
        self.result = result


def search_problem(result: CallResult) -> str | None:
    """Why a connector call does not count as a search answer, or None when it does."""
    reply = result.reply
    if reply is None:
        return f"could not be completed: {result.error}"
    if not 200 <= reply.status < 300:
        return f"answered HTTP {reply.status}: {reply.text[:300]}"
    if not reply.is_json or not isinstance(reply.json, dict) or not isinstance(reply.json.get("results"), list):
        return f"answered without a 'results' list: {reply.text[:300]}"
    return None
