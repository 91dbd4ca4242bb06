"""Products. Galtea keeps products as entities of their own; here a product is the `productId` that
endpoint connections and versions name, listed so the galtea SDK's product look-ups work."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from proxy.connections.registry import ConnectionRegistry
from proxy.connections.versions import VersionRegistry
from proxy.errors import NotFound

ORGANIZATION_ID = "local"  # one organization: this server
DESCRIPTION = "Named by this server's endpoint connections and versions"


@dataclass(frozen=True)
class Product:
    id: str
    created_at: str  # when the first connection or version naming it was created

    def to_api(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.id,
            "description": DESCRIPTION,
            "organizationId": ORGANIZATION_ID,
            "createdAt": self.created_at,
            "deletedAt": None,
        }


def all_products(connections: ConnectionRegistry, versions: VersionRegistry) -> list[Product]:
    named = [(c.spec.product_id, c.created_at) for c in connections.all()]
    named += [(v.product_id, v.created_at) for v in versions.all()]
    first: dict[str, str] = {}
    for product_id, created_at in named:
        if product_id not in first or created_at < first[product_id]:
            first[product_id] = created_at
    return [Product(product_id, created_at) for product_id, created_at in first.items()]


def get_product(connections: ConnectionRegistry, versions: VersionRegistry, product_id: str) -> Product:
    for product in all_products(connections, versions):
        if product.id == product_id:
            return product
    raise NotFound(f"Product {product_id} not found")
