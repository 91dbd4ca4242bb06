"""Cohere-style connectors: registered with a test query, searched through the same engine.

The id is derived from the name. `oauth` and `service_auth` are exclusive; `client_secret` and `token`
are encrypted at rest and never returned; the OAuth `client_id` is encrypted at rest and returned, as in
Cohere. The body (`proxy.connectors.input`), the entity (`proxy.connectors.connector`), how it is kept at rest
(`proxy.connectors.sealing`) and its calls (`proxy.connectors.search`) are modules of their own.
"""

from __future__ import annotations

from typing import Any

from proxy.cassettes.library import CassetteLibrary
from proxy.connectors.connector import Connector, connector_id
from proxy.connectors.input import ConnectorIn, parse_connector
from proxy.connectors.sealing import CONNECTORS, seal_plain_urls
from proxy.connectors.search import ConnectorCalls
from proxy.engine.call import Engine
from proxy.errors import InvalidField
from proxy.security.origins import same_origin
from proxy.security.redaction import Redactor
from proxy.security.url_secrets import query_secrets, refuse_masked, restore_masked
from proxy.storage.entity_tables import EntityTable, now_iso
from proxy.storage.store import Store


class ConnectorRegistry:
    """Keeps `redactor` knowing the secrets of exactly the stored connectors; `calls` makes their calls."""

    def __init__(
        self, store: Store, engine: Engine, library: CassetteLibrary, allow_http: bool, redactor: Redactor
    ) -> None:
        self.store = store
        self.allow_http = allow_http
        self.table = EntityTable(store, CONNECTORS, redactor)
        self.calls = ConnectorCalls(self, engine, library, redactor)

    def load(self) -> None:
        self.table.load()
        self.store.call(seal_plain_urls, self.store)

    # -- reads -------------------------------------------------------------------------------

    def page(self, limit: int | None, offset: int | None) -> tuple[list[Connector], int]:
        newest_first = sorted(self.table, key=lambda c: c.created_at, reverse=True)
        start = offset or 0
        return newest_first[start : start + limit if limit is not None else None], len(newest_first)

    def get(self, connector_id_: str) -> Connector:
        return self.table.get(connector_id_)

    # -- writes ------------------------------------------------------------------------------

    async def create(self, data: dict[str, Any]) -> Connector:
        fields = parse_connector(data, self.allow_http)
        if not fields.name:
            raise InvalidField("name", "is required")
        if not fields.url:
            raise InvalidField("url", "is required")
        refuse_masked(fields.url)
        new_id = connector_id(fields.name)
        if self.table.find(new_id) is not None:
            raise InvalidField("name", f"a connector with id {new_id!r} (from this name) already exists")
        now = now_iso()
        connector = Connector(id=new_id, name=fields.name, url=fields.url, created_at=now, updated_at=now)
        secrets = self._apply(connector, fields, {})
        await self.calls.register(connector, secrets)
        await self.table.save(connector)
        return connector

    async def update(self, connector_id_: str, data: dict[str, Any]) -> Connector:
        current = self.get(connector_id_)
        fields = parse_connector(data, self.allow_http, current.acknowledged_insecure_http)
        updated = Connector(**{**current.__dict__})
        if fields.name is not None and fields.name != current.name:
            new_id = connector_id(fields.name)
            if new_id != current.id:
                raise InvalidField("name", "renaming would change the connector's id; create a new connector")
            updated.name = fields.name
        if fields.url is not None:
            updated.url = restore_masked(fields.url, current.url)  # a masked credential keeps the stored one
        stored = self.secrets_of(current)
        secrets = self._apply(updated, fields, stored)
        if not same_origin(current.url, updated.url):
            restated = {
                "token": fields.service_auth is not None,
                "client_secret": bool(fields.oauth and fields.oauth.client_secret),
            }
            kept = [name for name in stored if name in secrets and not restated.get(name)]
            given_in_url = {secret.field for secret in query_secrets(fields.url or "")}
            kept += [s.field for s in query_secrets(updated.url) if s.field not in given_in_url]
            if kept:
                # Checked before the registration test query, which would carry the stored secret to the new URL.
                raise InvalidField(
                    "url",
                    f"moves the connector to another origin, and its stored {' and '.join(dict.fromkeys(kept))} would "
                    "be sent there: give service_auth (or oauth, or the URL's credential) again in the same request, "
                    "or keep the origin",
                )
        updated.updated_at = now_iso()
        if updated.url != current.url or updated.sealed != current.sealed:
            await self.calls.register(updated, secrets)  # a new address or credential is tested again
        await self.table.save(updated)
        return updated

    async def upsert(self, data: dict[str, Any]) -> Connector:
        """Config-file connectors: create, or update the one with the same name."""
        name = data.get("name")
        existing = self.table.find(connector_id(name)) if isinstance(name, str) and name else None
        return await (self.update(existing.id, data) if existing else self.create(data))

    async def delete(self, connector_id_: str) -> None:
        await self.table.delete(connector_id_, now_iso())

    def _apply(self, connector: Connector, fields: ConnectorIn, secrets: dict[str, str]) -> dict[str, str]:
        """Copy the given fields onto the connector; returns its (possibly new) secrets, sealed on it."""
        for name in ("description", "excludes", "active", "continue_on_failure", "acknowledged_insecure_http"):
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

    def secrets_of(self, connector: Connector) -> dict[str, str]:
        return self.store.unseal(connector.sealed)
