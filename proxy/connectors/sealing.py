"""How a connector is kept at rest: its `service_auth` token, OAuth `client_secret` and OAuth `client_id`
sealed together in one Fernet token. In memory the client id is plain (the API returns it, as Cohere does)
and the two secrets stay sealed on the connector until a call needs them."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any, ClassVar

from proxy.connectors.connector import Connector
from proxy.security.url_secrets import masked_url, secret_values
from proxy.storage.entity_tables import EntityKind, erase_and_update
from proxy.storage.store import Store


class ConnectorKind(EntityKind[Connector]):
    """Listed newest first; looked up by id (derived from the name)."""

    table = "connectors"
    label = "connector"
    columns: ClassVar[dict[str, type]] = {"name": str, "url": str, "created_at": str, "updated_at": str}
    indexes = (("created_at",),)
    owner = "connector"

    def row(self, connector: Connector, store: Store) -> dict[str, Any]:
        secrets = store.unseal(connector.sealed)
        client_id = (connector.oauth or {}).get("client_id")
        if client_id:
            connector = replace(connector, oauth={**(connector.oauth or {}), "client_id": None})
            secrets["client_id"] = client_id
        data = {name: value for name, value in vars(connector).items() if name not in ("id", "sealed")}
        columns = {name: data.pop(name) for name in self.columns}
        if connector.shown_url != connector.url:  # a credential in its query string: the URL is kept sealed
            secrets["url"], columns["url"] = connector.url, connector.shown_url
        sealed = store.seal(secrets) if secrets else None
        return columns | {"data": json.dumps(data, ensure_ascii=False), "sealed": sealed}

    def revive(self, row: dict[str, Any], store: Store) -> Connector:
        connector = Connector(id=row["id"], **{name: row[name] for name in self.columns}, **json.loads(row["data"]))
        secrets = store.unseal(row["sealed"])
        if "client_id" in secrets:
            connector.oauth = {**(connector.oauth or {}), "client_id": secrets.pop("client_id")}
        connector.url = secrets.pop("url", connector.url)
        connector.sealed = store.seal(secrets) if secrets else None
        return connector

    def secrets(self, connector: Connector, store: Store) -> list[str]:
        return list(store.unseal(connector.sealed).values()) + secret_values(connector.url)

    def secrets_in(self, row: dict[str, Any], store: Store) -> list[str]:
        secrets = store.unseal(row["sealed"])
        url = secrets.pop("url", row["url"])
        return [value for name, value in secrets.items() if name != "client_id"] + secret_values(url)

    def upgrade(self, old: dict[str, Any], store: Store) -> dict[str, Any]:
        """From one JSON document a row, the client id in it sealed apart (or, older still, in plain text)."""
        data = json.loads(old["data"])
        sealed_client_id = data.pop("sealed_client_id", None)
        if sealed_client_id:
            data["oauth"] = {**(data["oauth"] or {}), "client_id": store.unseal(sealed_client_id)["client_id"]}
        return self.row(Connector(**data), store)


CONNECTORS = ConnectorKind()


def seal_plain_urls(store: Store) -> None:
    """Rows written before a URL's query-string credentials were sealed hold it in plain in the `url` column: it
    is sealed now, and the plain text erased. Through `call`."""
    updates = {}
    for row in store.db.table(CONNECTORS.table).rows:
        secrets = store.unseal(row["sealed"])
        if "url" not in secrets and masked_url(row["url"]) != row["url"]:
            secrets["url"] = row["url"]
            updates[row["id"]] = {"url": masked_url(row["url"]), "sealed": store.seal(secrets)}
    erase_and_update(store, CONNECTORS.table, updates)
