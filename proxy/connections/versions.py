"""Versions: wire a session's lifecycle to its INITIALIZATION, CONVERSATION and FINALIZATION connections."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pydantic import ConfigDict, Field
from pydantic.alias_generators import to_camel

from proxy.connections.compiled import CompiledConnection
from proxy.connections.registry import ConnectionRegistry, new_id
from proxy.connections.spec import ConnectionType, RequestModel, RequiredText, Text, normalise_keys
from proxy.errors import InvalidField
from proxy.storage.entity_tables import EntityKind, EntityTable, now_iso
from proxy.storage.store import Store


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


# API field → (config shorthand, connection type the slot takes)
SLOTS = {
    "conversation_endpoint_connection_id": ("conversation", ConnectionType.CONVERSATION),
    "initialization_endpoint_connection_id": ("initialization", ConnectionType.INITIALIZATION),
    "finalization_endpoint_connection_id": ("finalization", ConnectionType.FINALIZATION),
}
SHORTHANDS = {shorthand for shorthand, _ in SLOTS.values()}
KNOWN_FIELDS = {"id", "name", "product_id", "number", "created_at", "deleted_at", "endpoint_connection_id", *SLOTS}
# What a version in the config file may hold: the Galtea SDK's version fields, and its connections by name.
CONFIG_FIELDS = frozenset(
    {"name", "product_id", "description", "dataset_description", "dataset_uri", "guardrails", "system_prompt"}
    | {"model_id", "parent_version_id", "otel_output_source_rule", "otel_input_source_rule"}
    | {"phone_connection_id", "web_rtc_connection_id", "endpoint_connection_id", *SLOTS, *SHORTHANDS}
)


@dataclass
class Version:
    id: str
    product_id: str
    name: str
    number: int
    created_at: str
    conversation_endpoint_connection_id: str | None = None
    initialization_endpoint_connection_id: str | None = None
    finalization_endpoint_connection_id: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # the SDK's other fields, kept and echoed back

    def to_api(self) -> dict[str, Any]:
        return {
            **self.extra,
            "id": self.id,
            "productId": self.product_id,
            "name": self.name,
            "number": self.number,
            "conversationEndpointConnectionId": self.conversation_endpoint_connection_id,
            "initializationEndpointConnectionId": self.initialization_endpoint_connection_id,
            "finalizationEndpointConnectionId": self.finalization_endpoint_connection_id,
            "createdAt": self.created_at,
            "deletedAt": None,
        }


class VersionKind(EntityKind[Version]):
    """Lists filter on product and name, by creation time; the latest of a product is its highest number."""

    table = "versions"
    label = "Version"
    columns: ClassVar[dict[str, type]] = {"product_id": str, "name": str, "number": int, "created_at": str}
    indexes = (("product_id", "name"), ("product_id", "number"), ("created_at",))

    def row(self, version: Version, store: Store) -> dict[str, Any]:
        data = {name: value for name, value in vars(version).items() if name != "id"}
        columns = {name: data.pop(name) for name in self.columns}
        return columns | {"data": json.dumps(data, ensure_ascii=False), "sealed": None}

    def revive(self, row: dict[str, Any], store: Store) -> Version:
        return Version(id=row["id"], **{name: row[name] for name in self.columns}, **json.loads(row["data"]))

    def upgrade(self, old: dict[str, Any], store: Store) -> dict[str, Any]:
        """From one JSON document a row."""
        return self.row(Version(**json.loads(old["data"])), store)


VERSIONS = VersionKind()


class VersionRegistry:
    def __init__(self, store: Store, connections: ConnectionRegistry) -> None:
        self.connections = connections
        self.table = EntityTable(store, VERSIONS)

    def load(self) -> None:
        self.table.load()

    def all(self) -> list[Version]:
        return self.table.all()

    def get(self, version_id: str) -> Version:
        return self.table.get(version_id)

    def latest_for_product(self, product_id: str) -> Version | None:
        versions = [v for v in self.table if v.product_id == product_id]
        return max(versions, key=lambda v: v.number) if versions else None

    def connection(self, version: Version, connection_type: ConnectionType) -> CompiledConnection | None:
        slot = next(name for name, (_, kind) in SLOTS.items() if kind is connection_type)
        conn_id = getattr(version, slot)
        if conn_id is None:
            return None
        return self.connections.get(conn_id)

    async def create(self, data: dict[str, Any]) -> Version:
        version = self._build(_fields(data))
        await self.table.save(version)
        return version

    async def upsert_by_name(self, data: dict[str, Any]) -> Version:
        """Config-file versions: connections named rather than referenced by id."""
        fields = _fields(data)
        existing = next(
            (v for v in self.table if v.name == fields.get("name") and v.product_id == fields.get("product_id")),
            None,
        )
        version = self._build(fields, existing)
        await self.table.save(version)
        return version

    def _build(self, fields: dict[str, Any], existing: Version | None = None) -> Version:
        product_id: str = fields["product_id"]
        fields["conversation_endpoint_connection_id"] = fields.get("conversation_endpoint_connection_id") or fields.get(
            "endpoint_connection_id"
        )
        number = (
            existing.number
            if existing
            else 1 + max((v.number for v in self.table if v.product_id == product_id), default=0)
        )
        name = fields.get("name") or f"v{number}"
        clash = next((v for v in self.table if v.name == name and v.product_id == product_id), None)
        if clash is not None and clash is not existing:
            raise InvalidField("name", f"a version named {name!r} already exists in product {product_id!r}")
        slots = {slot: self._resolve_slot(fields, slot, product_id) for slot in SLOTS}
        if slots["conversation_endpoint_connection_id"] is None:
            # Refused here rather than at the first turn, where the session would have nothing to call.
            raise InvalidField(
                "conversationEndpointConnectionId",
                "is required (`conversation:` in the config file): a version runs its turns through a "
                "CONVERSATION connection",
            )
        self._check_session_id_urls(slots)
        extra = {k: v for k, v in fields.items() if k not in KNOWN_FIELDS and k not in SHORTHANDS}
        return Version(
            id=existing.id if existing else new_id("ver"),
            product_id=product_id,
            name=name,
            number=number,
            created_at=existing.created_at if existing else now_iso(),
            extra={to_camel(k): v for k, v in extra.items()},
            **slots,
        )

    def _resolve_slot(self, fields: dict[str, Any], slot: str, product_id: str) -> str | None:
        shorthand, wanted = SLOTS[slot]
        ref = fields.get(slot) or fields.get(shorthand)
        if ref is None:
            return None
        api_field = to_camel(slot)
        conn = self.connections.find(ref, product_id)
        if conn is None:
            raise InvalidField(api_field, f"no endpoint connection {ref!r}")
        if conn.spec.type is not wanted:
            raise InvalidField(api_field, f"connection {conn.name!r} is {conn.spec.type.value}, not {wanted.value}")
        return conn.id

    def _check_session_id_urls(self, slots: dict[str, str | None]) -> None:
        if slots["initialization_endpoint_connection_id"]:
            return
        for slot in ("conversation_endpoint_connection_id", "finalization_endpoint_connection_id"):
            conn_id = slots[slot]
            if conn_id and self.connections.get(conn_id).url_uses_session_id():
                raise InvalidField(
                    "initializationEndpointConnectionId",
                    f"is required: the {SLOTS[slot][0]} connection's URL uses {{{{ session_id }}}}, "
                    "which only an INITIALIZATION connection provides",
                )


def _fields(data: dict[str, Any]) -> dict[str, Any]:
    """A version body validated, as snake_case fields; the fields it does not know kept beside them."""
    spec = VersionCreate.parse(data)
    return spec.model_dump(include=set(VersionCreate.model_fields)) | normalise_keys(spec.model_extra or {})
