"""Endpoint connections: validated, compiled once, kept in memory, persisted write-through.

The Galtea API, the config loader and the CLI all change connections through here, so the
rules of Galtea endpoint connections (validation, credential keeping on PATCH, masked header write-back)
live in one place.
"""

from __future__ import annotations

import contextlib
import json
import logging
import uuid
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

from proxy.config.known_keys import check_model_keys
from proxy.config.settings import MASK
from proxy.connections.compiled import (
    CompiledConnection,
    compile_connection,
    connection_secrets,
    refuse_short_secrets,
    secret_fields,
)
from proxy.connections.spec import (
    CREDENTIALS_BY_AUTH,
    NULLABLE_TO_DEFAULT,
    READ_ONLY_FIELDS,
    AuthType,
    ConnectionSpec,
    normalise_keys,
    parse_spec,
)
from proxy.errors import InvalidField, NotFound
from proxy.security.origins import describe as describe_origin
from proxy.security.origins import same_origin
from proxy.security.redaction import Redactor
from proxy.security.url_secrets import FIELD_PREFIX, masked_url, query_secrets, refuse_masked, restore_masked
from proxy.storage.entity_tables import EntityKind, EntityTable, erase_and_update, now_iso
from proxy.storage.store import Store

SECRET_SPEC_FIELDS = ("auth_token", "password", "headers")
SPEC_COLUMNS = ("product_id", "name", "type")  # spec fields kept in columns of their own

log = logging.getLogger("proxy")


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:20]}"


class ConnectionKind(EntityKind[CompiledConnection]):
    """Lists filter on product, name and type, by creation time; the credentials are sealed."""

    table = "connections"
    label = "Endpoint connection"
    columns: ClassVar[dict[str, type]] = {"product_id": str, "name": str, "type": str, "created_at": str}
    indexes = (("product_id", "name"), ("type",), ("created_at",))
    owner = "connection"
    soft_delete = True

    def row(self, conn: CompiledConnection, store: Store) -> dict[str, Any]:
        everything = conn.spec.model_dump(mode="json")
        secret = {k: everything.pop(k) for k in SECRET_SPEC_FIELDS}
        columns = {k: everything.pop(k) for k in SPEC_COLUMNS}
        seal_url(everything, secret)
        return columns | {"created_at": conn.created_at, "data": json.dumps(everything), "sealed": store.seal(secret)}

    def spec(self, row: dict[str, Any], store: Store) -> ConnectionSpec:
        columns = {k: row[k] for k in SPEC_COLUMNS}
        return ConnectionSpec.model_validate(json.loads(row["data"]) | columns | store.unseal(row["sealed"]))

    def revive(self, row: dict[str, Any], store: Store) -> CompiledConnection:
        spec = self.spec(row, store)
        # Stored connections were valid when saved; --allow-http may have been on then. An older data
        # dir may hold a secret too short to mask: it still loads (the redactor warns about it).
        try:
            return compile_connection(row["id"], spec, row["created_at"], allow_http=True)
        except InvalidField as exc:
            # Saved before a template bound: kept (compiling never runs it) so it can be read and fixed;
            # its renders are held to the bounds like any other.
            log.warning("stored connection %s (%s): %s; loaded as stored", spec.name, row["id"], exc.message)
            return compile_connection(row["id"], spec, row["created_at"], allow_http=True, strict=False)

    def secrets(self, conn: CompiledConnection, store: Store) -> list[str]:
        return connection_secrets(conn.spec)

    def secrets_in(self, row: dict[str, Any], store: Store) -> list[str]:
        return connection_secrets(self.spec(row, store))

    def upgrade(self, old: dict[str, Any], store: Store) -> dict[str, Any]:
        """From `spec` (the non-secret fields, JSON) and `secrets` (already sealed)."""
        spec = json.loads(old["spec"])
        columns = {k: spec.pop(k) for k in SPEC_COLUMNS}
        sealed = old["secrets"]
        secret = store.unseal(sealed)
        if seal_url(spec, secret):
            sealed = store.seal(secret)
        return columns | {"created_at": old["created_at"], "data": json.dumps(spec), "sealed": sealed}


def seal_url(data: dict[str, Any], secret: dict[str, Any]) -> bool:
    """A URL with a credential in its query string is kept sealed, and shown masked in `data`; whether it had one.
    A row read back takes the sealed URL over the shown one."""
    url = data.get("url")
    if not isinstance(url, str) or masked_url(url) == url:
        return False
    secret["url"], data["url"] = url, masked_url(url)
    return True


CONNECTIONS = ConnectionKind()


def seal_plain_urls(store: Store) -> None:
    """Rows written before a URL's query-string credentials were sealed (deleted ones too) hold it in plain in
    `data`: it is sealed now, and the plain text erased. Through `call`."""
    updates = {}
    for row in store.db.table(CONNECTIONS.table).rows:
        data, secret = json.loads(row["data"]), store.unseal(row["sealed"])
        if "url" not in secret and seal_url(data, secret):
            updates[row["id"]] = {"data": json.dumps(data), "sealed": store.seal(secret)}
    erase_and_update(store, CONNECTIONS.table, updates)
    if updates:
        log.info("sealed the credentials in the query string of %d stored connection URL(s)", len(updates))


class ConnectionRegistry:
    """Keeps `redactor` knowing the secrets of exactly the stored connections."""

    def __init__(self, store: Store, allow_http: bool, redactor: Redactor) -> None:
        self.allow_http = allow_http
        self.redactor = redactor
        # A server that only replays sends no credential anywhere: a short placeholder (`x`) is fine there.
        self.short_secrets_allowed = False
        self.table = EntityTable(store, CONNECTIONS, redactor)

    def load(self) -> None:
        self.table.load()
        self.table.store.call(seal_plain_urls, self.table.store)

    # -- reads -------------------------------------------------------------------------------

    def all(self) -> list[CompiledConnection]:
        return self.table.all()

    def get(self, conn_id: str) -> CompiledConnection:
        return self.table.get(conn_id)

    def by_name(self, name: str, product_id: str | None = None) -> CompiledConnection | None:
        for conn in self.table:
            if conn.spec.name == name and (product_id is None or conn.spec.product_id == product_id):
                return conn
        return None

    def find(self, ref: str, product_id: str | None = None) -> CompiledConnection | None:
        """By id, else by name in the product, else by name anywhere."""
        return self.table.find(ref) or self.by_name(ref, product_id) or self.by_name(ref)

    def resolve(self, ref: str) -> CompiledConnection:
        """A connection by id, else by name."""
        conn = self.find(ref)
        if conn is None:
            raise NotFound(f"Endpoint connection {ref} not found")
        return conn

    # -- writes ------------------------------------------------------------------------------

    async def create(self, data: dict[str, Any]) -> CompiledConnection:
        conn = self.build(data)
        self._check_unique(conn.spec)
        await self.table.save(conn)
        return conn

    def build(
        self, data: dict[str, Any], conn_id: str | None = None, created_at: str | None = None
    ) -> CompiledConnection:
        """Validate and compile without storing (creation, and testConnection without an id)."""
        spec = parse_spec(data)
        for name, value in (spec.headers or {}).items():
            if value == MASK:
                raise InvalidField(f"headers.{name}", "the masked value '••••••••' can only stand for a stored header")
        refuse_masked(spec.url)
        if not self.short_secrets_allowed:
            refuse_short_secrets(spec)
        return compile_connection(conn_id or new_id("ec"), spec, created_at or now_iso(), self.allow_http)

    async def update(self, conn_id: str, patch: dict[str, Any]) -> CompiledConnection:
        current = self.get(conn_id)
        conn = self.build_patched(current, patch)
        self._check_unique(conn.spec, exclude=conn_id)
        await self.table.save(conn)
        return conn

    def build_patched(self, current: CompiledConnection, patch: dict[str, Any]) -> CompiledConnection:
        """The stored connection with a PATCH (or testConnection overrides) applied and re-validated."""
        check_model_keys(patch, ConnectionSpec, allowed=READ_ONLY_FIELDS)
        given = normalise_keys(patch)
        spec = parse_spec(merge_patch(current.spec, given))
        refuse_short_secrets(spec, _given_in(given))  # a stored one from an older data dir is kept as it is
        refuse_credentials_to_new_origin(current.spec, spec, given)
        return compile_connection(current.id, spec, current.created_at, self.allow_http)

    async def upsert_by_name(self, data: dict[str, Any]) -> CompiledConnection:
        """Config-file connections: create, or replace the one with the same name and product."""
        probe = parse_spec(data)
        existing = self.by_name(probe.name, probe.product_id)
        if existing is None:
            return await self.create(data)
        conn = self.build(data, conn_id=existing.id, created_at=existing.created_at)
        await self.table.save(conn)
        return conn

    async def delete(self, conn_id: str) -> None:
        await self.table.delete(conn_id, now_iso())

    @contextlib.contextmanager
    def secrets_for_one_call(self, conn: CompiledConnection) -> Iterator[None]:
        """A connection that is not stored as it is (testConnection's fields or overrides): its secrets are
        masked in what the call produces, and forgotten after it."""
        with self.redactor.scoped(connection_secrets(conn.spec)):
            yield

    def _check_unique(self, spec: ConnectionSpec, exclude: str | None = None) -> None:
        clash = self.by_name(spec.name, spec.product_id)
        if clash is not None and clash.id != exclude:
            raise InvalidField("name", f"an endpoint connection named {spec.name!r} already exists in this product")


def merge_patch(current: ConnectionSpec, patch: dict[str, Any]) -> dict[str, Any]:
    """Galtea's write rules: empty credentials keep the stored ones, masked headers (and masked credentials in
    the URL's query string) keep stored values, changing authType drops the credentials the new type does not
    use."""
    merged = current.model_dump(mode="json")
    for key, value in patch.items():
        if key not in merged:
            continue
        if key in ("auth_token", "password") and not value:
            continue
        if key == "headers" and isinstance(value, dict):
            stored = current.headers or {}
            value = {name: stored.get(name, v) if v == MASK else v for name, v in value.items()}
            for name, v in value.items():
                if v == MASK:
                    raise InvalidField(f"headers.{name}", "'••••••••' stands for a stored value, and none is stored")
        if key == "url" and isinstance(value, str):
            value = restore_masked(value, current.url)
        if value is None and key in NULLABLE_TO_DEFAULT:
            merged.pop(key)
            continue
        merged[key] = value
    if "auth_type" in patch and patch["auth_type"] is not None:
        new_type = AuthType.parse(patch["auth_type"], "authType")
        if new_type is not current.auth_type:
            kept = CREDENTIALS_BY_AUTH[new_type]
            for credential in ("auth_token", "username", "password"):
                if credential not in kept and credential not in _explicit(patch, credential):
                    merged[credential] = None
    return merged


def refuse_credentials_to_new_origin(current: ConnectionSpec, new: ConnectionSpec, given: dict[str, Any]) -> None:
    """A stored credential only ever goes to the origin it was stored for: a URL moved to another origin must
    come with its credentials given again in the same request (a web page, or a typo, could otherwise send
    them anywhere)."""
    if same_origin(current.url, new.url):
        return
    kept = stored_credentials_kept(new, given)
    if kept:
        raise InvalidField(
            "url",
            f"moves the connection from {describe_origin(masked_url(current.url))} to "
            f"{describe_origin(masked_url(new.url))}, and the stored "
            f"{', '.join(kept)} would be sent there: give {'it' if len(kept) == 1 else 'them'} again in the same "
            "request, or keep the origin",
        )


def stored_credentials_kept(new: ConnectionSpec, given: dict[str, Any]) -> list[str]:
    """The API names of the credentials `new` still carries from the stored connection rather than from the request."""
    was_given = _given_in(given)
    return list(dict.fromkeys(field for field, _ in secret_fields(new) if not was_given(field)))


def _given_in(patch: dict[str, Any]) -> Callable[[str], bool]:
    """Whether a secret field (as `secret_fields` names it) was given in this PATCH, not kept from the store."""
    headers = patch["headers"] if isinstance(patch.get("headers"), dict) else {}
    url = patch.get("url")
    # A credential in the URL is given when the URL sent holds it rather than the mask, which keeps the stored one.
    url_fields = {secret.field for secret in query_secrets(url)} if isinstance(url, str) else set()

    def given(field: str) -> bool:
        if field.startswith("headers."):
            return headers.get(field.removeprefix("headers."), MASK) != MASK
        if field.startswith(FIELD_PREFIX):
            return field in url_fields
        return bool(patch.get({"authToken": "auth_token"}.get(field, field)))

    return given


def _explicit(patch: dict[str, Any], key: str) -> set[str]:
    return {key} if patch.get(key) else set()
