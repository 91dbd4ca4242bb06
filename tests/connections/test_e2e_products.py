"""Products are the ids that endpoint connections and versions name: the galtea SDK's product look-ups work."""

from __future__ import annotations

import httpx
import pytest
from galtea import Galtea
from galtea.domain.exceptions.entity_not_found_exception import EntityNotFoundException
from pydantic.alias_generators import to_camel, to_snake

from tests.conftest import RunningProxy, chat_connection
from tests.helpers import post

pytestmark = pytest.mark.e2e


def test_sdk_product_look_ups(galtea: Galtea, proxy_server: RunningProxy, upstream_url: str) -> None:
    with httpx.Client(base_url=proxy_server.url) as api:
        assert api.get("/products").json() == []
        conn = post(api, "/endpointConnections", chat_connection(upstream_url, productId="support-bot"))
        # A version may name a product of its own while it calls another product's connection.
        version = post(api, "/versions", {"productId": "sales-bot", "conversationEndpointConnectionId": conn["id"]})
        missing = api.get("/products/nope")
        assert missing.status_code == 404 and missing.json() == {"message": "Product nope not found"}
        assert api.get("/products", params={"ids[]": ["support-bot", "nope"]}).status_code == 404

    support = galtea.products.get_by_name("support-bot")
    assert (support.id, support.name, support.organization_id) == ("support-bot", "support-bot", "local")
    assert support.created_at == conn["createdAt"] and isinstance(support.description, str)
    sales = galtea.products.get("sales-bot")
    assert sales.created_at == version["createdAt"]
    assert [p.id for p in galtea.products.list(id="sales-bot")] == ["sales-bot"]
    assert [p.id for p in galtea.products.list(sort_by_created_at="asc")] == ["support-bot", "sales-bot"]
    with pytest.raises(EntityNotFoundException):
        galtea.products.get_by_name("no-such-product")
    # The SDK's version look-up asks for the product to tell a missing product from a missing version.
    assert galtea.versions.get_by_name(product_id="sales-bot", version_name="v1").id == version["id"]
    with pytest.raises(EntityNotFoundException, match="Version with name v9 does not exist"):
        galtea.versions.get_by_name(product_id="sales-bot", version_name="v9")
    with pytest.raises(EntityNotFoundException, match="Product with ID ghost does not exist"):
        galtea.versions.get_by_name(product_id="ghost", version_name="v1")


def test_a_versions_other_fields_read_back_as_written(proxy_server: RunningProxy, upstream_url: str) -> None:
    # Kept as snake_case and read back as camelCase: capitals and digits come back where they were written, which
    # pydantic's `to_snake` would not give (`userID` → `user_id` → `userId`).
    written = {"userID": 1, "v2Endpoint": 2, "systemPrompt": 3, "getHTTPResponse": 4}
    assert to_camel(to_snake("userID")) != "userID" and to_camel(to_snake("v2Endpoint")) == "v2Endpoint"
    with httpx.Client(base_url=proxy_server.url) as api:
        conn = post(api, "/endpointConnections", chat_connection(upstream_url, productId="p"))
        fields = {"productId": "p", "conversationEndpointConnectionId": conn["id"], **written, "top_p": 5}
        version = post(api, "/versions", fields)
        read = api.get(f"/versions/{version['id']}").json()
    assert {k: read.get(k) for k in [*written, "topP"]} == {**written, "topP": 5}
