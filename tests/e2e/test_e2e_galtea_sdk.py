"""The galtea SDK 5.12 as its users call it: its public calls on what this server serves, with the SDK's own
default arguments, against a real proxy and a real upstream."""

from __future__ import annotations

import httpx
import pytest
from galtea import Galtea
from galtea.utils.deprecation import GalteaDeprecationWarning

from tests.conftest import TEST_TOKEN
from tests.helpers import conversation_version, post
from tests.upstream import Upstream

pytestmark = pytest.mark.e2e


def test_sdk_session_without_test_case_is_production_as_the_sdk_documents(
    galtea: Galtea, api: httpx.Client, upstream_url: str
) -> None:
    """The SDK sends `"isProduction": null` when the caller leaves it out and documents that the API derives
    it from the test case; a 422 there broke the SDK's plainest call, `sessions.create(version_id=...)`."""
    version = conversation_version(api, f"{upstream_url}/chat")
    production = galtea.sessions.create(version_id=version)
    assert (production.is_production, production.test_case_id) == (True, None)
    assert galtea.sessions.get(production.id).is_production is True
    development = galtea.sessions.create(version_id=version, test_case_id="tc-1")
    assert (development.is_production, development.test_case_id) == (False, "tc-1")

    # The same rule over HTTP: absent and null alike follow testCaseId; an explicit value is kept and checked.
    derived = [
        ({}, True),
        ({"isProduction": None}, True),
        ({"testCaseId": "tc-2"}, False),
        ({"testCaseId": "tc-3", "isProduction": None}, False),
        ({"isProduction": True}, True),
        ({"testCaseId": "tc-4", "isProduction": False}, False),
        ({"customId": "imported-1", "isProduction": False}, False),
    ]
    for body, is_production in derived:
        assert post(api, "/sessions", {"versionId": version, **body})["isProduction"] is is_production, body
    refused = api.post("/sessions", json={"versionId": version, "testCaseId": "tc-5", "isProduction": True})
    assert refused.status_code == 422 and refused.json()["errors"][0]["field"] == "testCaseId"
    run_on_production = api.post("/sessions", json={"versionId": version, "runId": "run-1"})
    assert run_on_production.status_code == 422 and run_on_production.json()["errors"][0]["field"] == "runId"


def test_sdk_public_calls_with_default_arguments(galtea: Galtea, upstream: Upstream, upstream_url: str) -> None:
    """Every public SDK call on connections, products, versions, sessions and inference results that this
    server serves, each with only the arguments it requires: what the SDK sends by default must be accepted
    and what it reads back must be there."""
    # Endpoint connections: the SDK's defaults are POST and BEARER.
    conn = galtea.endpoint_connections.create(
        name="chat",
        product_id="shop",
        url=f"{upstream_url}/chat",
        type="CONVERSATION",
        auth_token=TEST_TOKEN,
        input_template='{"message": "{{ input.user_message }}"}',
        output_mapping={"output": "$.reply"},
    )
    assert conn is not None, "create returned None (the SDK swallows the API error)"
    assert (conn.http_method.value, conn.auth_type.value, conn.has_auth_token) == ("POST", "BEARER", True)
    assert galtea.endpoint_connections.get(conn.id).name == "chat"
    assert galtea.endpoint_connections.get_by_name("chat", "shop").id == conn.id
    assert [c.id for c in galtea.endpoint_connections.list()] == [conn.id]
    assert galtea.endpoint_connections.update(conn.id).name == "chat"  # nothing given, nothing changed
    tested = galtea.endpoint_connections.test(conn.id)
    assert tested.success is True and tested.status_code == 200
    assert upstream.requests_to("/chat")[-1].headers["authorization"] == f"Bearer {TEST_TOKEN}"

    # Products are the ids connections and versions name.
    assert galtea.products.get("shop").name == "shop"
    assert galtea.products.get_by_name("shop").id == "shop"
    assert [p.id for p in galtea.products.list()] == ["shop"]

    # Versions: a version here runs its turns, so it names its connection.
    version = galtea.versions.create(product_id="shop", conversation_endpoint_connection_id=conn.id)
    assert version is not None, "create returned None (the SDK swallows the API error)"
    assert galtea.versions.get(version.id).product_id == "shop"
    assert galtea.versions.get_by_name("shop", version.name).id == version.id
    assert [v.id for v in galtea.versions.list(product_id="shop")] == [version.id]

    # Sessions: no test case given, so production (the SDK sends isProduction: null).
    session = galtea.sessions.create(version_id=version.id)
    assert (session.is_production, session.status.value) == (True, "PENDING")
    by_product = galtea.sessions.create(product_id="shop")
    assert (by_product.version_id, by_product.is_production) == (version.id, True)
    assert galtea.sessions.get(session.id).version_id == version.id
    assert galtea.sessions.update(session.id, metadata={"tier": "gold"}).metadata == {"tier": "gold"}
    # get_or_create sends isProduction: false by default, with a custom id and no test case.
    per_user = galtea.sessions.get_or_create(custom_id="user-1", version_id=version.id)
    assert (per_user.custom_id, per_user.is_production, per_user.test_case_id) == ("user-1", False, None)
    assert galtea.sessions.get_or_create(custom_id="user-1", version_id=version.id).id == per_user.id
    assert galtea.sessions.get_by_custom_id("user-1", version_id=version.id).id == per_user.id
    listed = {s.id for s in galtea.sessions.list(version_id=version.id)}
    assert listed == {session.id, by_product.id, per_user.id}

    # Inference results (the SDK's traces, and their deprecated old name).
    trace = galtea.traces.create(session_id=session.id, input="hi", output="hello")
    assert (trace.session_id, trace.input, trace.actual_output) == (session.id, "hi", "hello")
    assert galtea.traces.get(trace.id).actual_output == "hello"
    with pytest.warns(GalteaDeprecationWarning):
        old_name = galtea.inference_results
    second = old_name.create(session_id=session.id, input="again", output="still here")
    assert [t.id for t in galtea.traces.list(session_id=session.id)] == [trace.id, second.id]
    assert [t.actual_output for t in old_name.list(session_id=session.id)] == ["hello", "still here"]

    finished = galtea.sessions.finish(session.id)
    assert finished.status.value == "COMPLETED"
    galtea.sessions.delete(by_product.id)
    assert {s.id for s in galtea.sessions.list(version_id=version.id)} == {session.id, per_user.id}
    galtea.endpoint_connections.delete(conn.id)
    assert galtea.endpoint_connections.list() == []
