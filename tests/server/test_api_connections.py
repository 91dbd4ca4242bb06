"""The Galtea connection API in-process (httpx.ASGITransport): validation, masking, write-back rules."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from proxy.config.settings import MASK, Settings
from proxy.server.app import create_app
from proxy.server.runtime import Runtime
from tests.conftest import TEST_PASSWORD, TEST_TOKEN, chat_connection

UP = "https://upstream.test"


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    runtime = Runtime(Settings(data_dir=tmp_path / "data", cassettes_dir=tmp_path / "c"))
    await runtime.start()
    transport = httpx.ASGITransport(app=create_app(runtime))
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
        yield client
    await runtime.close()


async def create(api: httpx.AsyncClient, **overrides: Any) -> httpx.Response:
    return await api.post("/endpointConnections", json=chat_connection(UP, **overrides))


async def test_create_applies_spec_defaults_and_hides_secrets(api: httpx.AsyncClient) -> None:
    response = await create(api)
    assert response.status_code == 201
    body = response.json()
    assert body["authToken"] is None and body["hasAuthToken"] is True and body["hasPassword"] is False
    assert (body["httpMethod"], body["timeout"], body["retryEnabled"], body["retryMaxAttempts"]) == (
        "POST",
        15,
        False,
        3,
    )
    assert (body["retryInitialDelayMs"], body["retryBackoffStrategy"], body["retryMaxDelayMs"]) == (
        1000,
        "EXPONENTIAL",
        30000,
    )
    assert body["retryableStatusCodes"] == [429, 500, 502, 503, 504]
    assert body["createdAt"].endswith("Z") and body["id"]
    assert TEST_TOKEN not in response.text


async def test_snake_case_and_lowercase_enums_are_accepted(api: httpx.AsyncClient) -> None:
    data = {
        "name": "snake",
        "product_id": "p",
        "url": f"{UP}/x",
        "type": "conversation",
        "auth_type": "api_key",
        "auth_token": "k-snake-token",
        "http_method": "put",
        "input_template": '{"q": "{{ input.q }}"}',
        "output_mapping": {"output": "$.a"},
        "retry_backoff_strategy": "linear",
    }
    body = (await api.post("/endpointConnections", json=data)).json()
    assert (body["type"], body["authType"], body["httpMethod"], body["retryBackoffStrategy"]) == (
        "CONVERSATION",
        "API_KEY",
        "PUT",
        "LINEAR",
    )


@pytest.mark.parametrize(
    ("overrides", "field", "reason"),
    [
        ({"authToken": None}, "authToken", "is required when authType is BEARER"),
        ({"authType": "API_KEY", "authToken": ""}, "authToken", "is required when authType is API_KEY"),
        ({"authType": "BASIC", "username": "u"}, "password", "is required when authType is BASIC"),
        ({"inputTemplate": '{"q": "static"}'}, "inputTemplate", "{{ input… }} placeholder"),
        ({"outputMapping": {"reply": "$.a"}}, "outputMapping.output", "must map 'output'"),
        ({"outputMapping": {"output": "$.[["}}, "outputMapping.output", "does not parse"),
        ({"inputTemplate": '{"q": "{{ input.q }"}'}, "inputTemplate", "does not compile"),
        ({"inputTemplate": "{{ input.__class__.__mro__ }}"}, "inputTemplate", "not allowed"),
        ({"url": "http://plain.test/x", "acknowledgedInsecureHttp": False}, "url", "must be https"),
        ({"url": "not a url"}, "url", "not an absolute http(s) URL"),
        ({"timeout": 121}, "timeout", "less than or equal to 120"),
        ({"retryMaxAttempts": 11}, "retryMaxAttempts", "less than or equal to 10"),
        ({"retryMaxDelayMs": 60001}, "retryMaxDelayMs", "less than or equal to 60000"),
        ({"retryableStatusCodes": [429, 700]}, "retryableStatusCodes", "700 is not an HTTP status code"),
        ({"type": "SOMETHING"}, "type", "INITIALIZATION"),
        ({"authType": "OAUTH"}, "authType", "BEARER"),
        ({"conversationEndRules": [{"statusCode": 200}]}, "conversationEndRules[0].bodyMatch", "needs a bodyMatch"),
        ({"conversationEndRules": [{"statusCode": 409}] * 21}, "conversationEndRules", "at most 20"),
        ({"headers": {"Bad Header": "x"}}, "headers.Bad Header", "not a valid HTTP header name"),
        ({"name": ""}, "name", "at least 1 character"),
    ],
)
async def test_validation_answers_422_naming_the_field_and_reason(
    api: httpx.AsyncClient, overrides: dict[str, Any], field: str, reason: str
) -> None:
    response = await create(api, **overrides)
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["errors"][0]["field"] == field
    assert reason in body["message"] and body["message"].startswith(field)


@pytest.mark.parametrize(
    ("overrides", "field", "message"),
    [
        ({"headers": {"x-A": "a\nb"}}, "headers.x-A", "headers.x-A: a header value cannot contain a line break"),
        ({"headers": {"X-Tenant": 5}}, "headers.X-Tenant", "headers.X-Tenant: must be a string"),
        (
            {"outputMapping": {"output": "$.a", "session_id": 5}},
            "outputMapping.session_id",
            "outputMapping.session_id (output_mapping.session_id): must be a string",
        ),
        ({"retry_max_attempts": 11}, "retryMaxAttempts", "retryMaxAttempts (retry_max_attempts): Input should be"),
    ],
)
async def test_only_the_top_level_name_has_two_spellings_in_an_error(
    api: httpx.AsyncClient, overrides: dict[str, Any], field: str, message: str
) -> None:
    """A header name or a mapping key is the user's own text: shown as written, never snake- or camel-cased."""
    body = (await create(api, **overrides)).json()
    assert body["errors"][0]["field"] == field and body["message"].startswith(message)


async def test_initialization_needs_session_id_mapping(api: httpx.AsyncClient) -> None:
    response = await create(api, type="INITIALIZATION", inputTemplate=None, outputMapping={"other": "$.id"})
    assert response.status_code == 422
    assert "outputMapping.session_id" in response.json()["message"]


async def test_duplicate_name_in_product_is_refused(api: httpx.AsyncClient) -> None:
    assert (await create(api)).status_code == 201
    clash = await create(api)
    assert clash.status_code == 422 and "already exists" in clash.json()["message"]
    assert (await create(api, productId="other")).status_code == 201


async def test_secret_headers_read_back_masked_and_masked_value_keeps_the_stored_one(api: httpx.AsyncClient) -> None:
    headers = {"X-Api-Key": "hdr-Secret-777", "X-Tenant": "acme", "X-Auth": "Token {{ auth_token }}"}
    created = (await create(api, headers=headers)).json()
    assert created["headers"] == {"X-Api-Key": MASK, "X-Tenant": "acme", "X-Auth": "Token {{ auth_token }}"}
    patched = await api.patch(f"/endpointConnections/{created['id']}", json={"headers": created["headers"]})
    assert patched.status_code == 200
    runtime: Runtime = api._transport.app.state.runtime  # type: ignore[attr-defined]
    assert runtime.connections.get(created["id"]).spec.headers == headers


async def test_masked_header_value_without_a_stored_one_is_refused(api: httpx.AsyncClient) -> None:
    response = await create(api, headers={"X-Api-Key": MASK})
    assert response.status_code == 422 and "headers.X-Api-Key" in response.json()["message"]


async def test_patch_keeps_credentials_on_null_or_empty_and_drops_them_when_auth_type_changes(
    api: httpx.AsyncClient,
) -> None:
    conn_id = (await create(api)).json()["id"]
    runtime: Runtime = api._transport.app.state.runtime  # type: ignore[attr-defined]
    for value in (None, ""):
        body = (await api.patch(f"/endpointConnections/{conn_id}", json={"authToken": value})).json()
        assert body["hasAuthToken"] is True
    assert runtime.connections.get(conn_id).spec.auth_token == TEST_TOKEN
    basic = await api.patch(
        f"/endpointConnections/{conn_id}", json={"authType": "BASIC", "username": "ann", "password": TEST_PASSWORD}
    )
    assert basic.status_code == 200, basic.text
    assert basic.json()["hasAuthToken"] is False and basic.json()["hasPassword"] is True
    assert runtime.connections.get(conn_id).spec.auth_token is None
    none = (await api.patch(f"/endpointConnections/{conn_id}", json={"authType": "NONE"})).json()
    assert none["hasPassword"] is False and none["username"] is None


async def test_patch_revalidates_the_merged_connection(api: httpx.AsyncClient) -> None:
    conn_id = (await create(api)).json()["id"]
    response = await api.patch(f"/endpointConnections/{conn_id}", json={"outputMapping": {"x": "$.a"}})
    assert response.status_code == 422 and "outputMapping.output" in response.json()["message"]


async def test_list_filters_sort_and_paginate(api: httpx.AsyncClient) -> None:
    for i in range(3):
        await create(api, name=f"c{i}", productId="p1" if i < 2 else "p2")
    all_p1 = (await api.get("/endpointConnections?productIds[]=p1")).json()
    assert sorted(c["name"] for c in all_p1) == ["c0", "c1"]
    by_name = (await api.get("/endpointConnections?names[]=c2&types[]=conversation")).json()
    assert [c["name"] for c in by_name] == ["c2"]
    asc = (await api.get("/endpointConnections?sort[]=createdAt&sort[]=asc&offset=1&limit=1")).json()
    assert [c["name"] for c in asc] == ["c1"]
    assert (await api.get("/endpointConnections?limit=abc")).status_code == 422


async def test_unknown_id_is_404_with_message(api: httpx.AsyncClient) -> None:
    for method in ("GET", "PATCH", "DELETE"):
        response = await api.request(method, "/endpointConnections/nope", json={} if method == "PATCH" else None)
        assert response.status_code == 404 and response.json() == {"message": "Endpoint connection nope not found"}


async def test_delete_removes_the_connection(api: httpx.AsyncClient) -> None:
    conn_id = (await create(api)).json()["id"]
    assert (await api.delete(f"/endpointConnections/{conn_id}")).status_code == 200
    assert (await api.get(f"/endpointConnections/{conn_id}")).status_code == 404
    assert (await create(api)).status_code == 201  # the name is free again


async def test_malformed_json_is_400_and_non_object_is_400(api: httpx.AsyncClient) -> None:
    response = await api.post(
        "/endpointConnections", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert response.status_code == 400 and "not valid JSON" in response.json()["message"]
    assert (await api.post("/endpointConnections", json=[1, 2])).status_code == 400


async def test_bodies_over_10mb_are_413(api: httpx.AsyncClient) -> None:
    big = b'{"name": "' + b"x" * (10 * 1024 * 1024 + 10) + b'"}'
    json_type = {"content-type": "application/json"}
    response = await api.post("/endpointConnections", content=big, headers=json_type)
    assert response.status_code == 413 and "10 MB" in response.json()["message"]

    async def chunked():  # type: ignore[no-untyped-def]
        for _ in range(11):
            yield b"x" * (1024 * 1024)

    response = await api.post("/endpointConnections", content=chunked(), headers=json_type)
    assert response.status_code == 413


async def test_unknown_route_is_404_json(api: httpx.AsyncClient) -> None:
    response = await api.get("/nothing/here")
    assert response.status_code == 404 and "no such route" in response.json()["message"]


async def test_openapi_describes_every_route(api: httpx.AsyncClient) -> None:
    spec = (await api.get("/openapi.json")).json()
    app = api._transport.app  # type: ignore[attr-defined]
    described = {(path, method.upper()) for path, ops in spec["paths"].items() for method in ops}
    served = {(r.path.replace(":path}", "}"), m) for r in app.routes for m in r.methods if m != "HEAD"}
    assert described == served
    assert "authToken" in spec["components"]["schemas"]["EndpointConnection"]["properties"]


async def test_api_key_guards_every_route_but_healthz(tmp_path: Path) -> None:
    runtime = Runtime(Settings(data_dir=tmp_path / "d", api_key="k-123456"))
    await runtime.start()
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=create_app(runtime)), base_url="http://127.0.0.1"
    ) as c:
        assert (await c.get("/healthz")).status_code == 200
        assert (await c.get("/endpointConnections")).status_code == 401
        assert (await c.get("/endpointConnections", headers={"Authorization": "Bearer wrong"})).status_code == 401
        assert (await c.get("/endpointConnections", headers={"Authorization": "Bearer k-123456"})).status_code == 200
    await runtime.close()


@pytest.mark.parametrize(
    ("overrides", "field", "nearest"),
    [
        ({"timout": 5}, "timout", "timeout"),
        ({"inputTemplate": None, "inputTemplat": '{"m": "{{ input.m }}"}'}, "inputTemplat", "inputTemplate"),
        ({"retry_enabeld": True}, "retry_enabeld", "retry_enabled"),
        (
            {"conversationEndRules": [{"statusCode": 409, "bodyMatch": {"path": "$.code", "equal": "end"}}]},
            "conversationEndRules[0].bodyMatch.equal",
            "equals",
        ),
    ],
)
async def test_an_unknown_key_is_422_naming_it_and_the_nearest_known_key(
    api: httpx.AsyncClient, overrides: dict[str, Any], field: str, nearest: str
) -> None:
    response = await create(api, **overrides)
    assert response.status_code == 422, response.text
    assert response.json() == {
        "message": f"{field}: unknown field — did you mean {nearest}?",
        "errors": [{"field": field, "reason": f"unknown field — did you mean {nearest}?"}],
    }


async def test_patch_and_test_connection_refuse_unknown_keys_too(api: httpx.AsyncClient) -> None:
    conn_id = (await create(api)).json()["id"]
    patched = await api.patch(f"/endpointConnections/{conn_id}", json={"timeout": 30, "retryEnabeld": True})
    assert patched.status_code == 422 and patched.json()["message"].startswith("retryEnabeld: unknown field")
    assert (await api.get(f"/endpointConnections/{conn_id}")).json()["timeout"] == 15  # nothing was applied
    tested = await api.post("/endpointConnections/testConnection", json={"id": conn_id, "timout": 5})
    assert tested.status_code == 422 and "did you mean timeout?" in tested.json()["message"]


async def test_a_connection_read_back_and_sent_again_is_accepted(api: httpx.AsyncClient) -> None:
    created = (await create(api)).json()
    read = (await api.get(f"/endpointConnections/{created['id']}")).json()
    patched = await api.patch(f"/endpointConnections/{created['id']}", json={**read, "timeout": 20})
    assert patched.status_code == 200, patched.text
    assert patched.json()["timeout"] == 20 and patched.json()["hasAuthToken"] is True


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"authToken": "abc"}, "authToken"),
        ({"authToken": '": "'}, "authToken"),  # would have masked every JSON key of every reply
        ({"authType": "BASIC", "username": "ann", "password": "pw-1"}, "password"),
        ({"headers": {"X-Api-Key": "k-12345"}}, "headers.X-Api-Key"),
        ({"headers": {"Authorization": "Bearer short"}}, "headers.Authorization"),
        ({"url": f"{UP}/chat?alt=sse&key=k-12345"}, "url"),  # named with its parameter: `url: query parameter key`
    ],
)
async def test_a_secret_too_short_to_mask_is_refused_naming_its_field(
    api: httpx.AsyncClient, fields: dict[str, Any], field: str
) -> None:
    def refused(response: httpx.Response) -> bool:
        body = response.json()
        named = field != "url" or body["message"].startswith("url: query parameter key is 7 characters long")
        return (
            response.status_code == 422
            and body["errors"][0]["field"] == field
            and "at least 8" in body["message"]
            and named
        )

    assert refused(await create(api, **fields))
    assert refused(await api.post("/endpointConnections/testConnection", json=chat_connection(UP, **fields)))
    conn_id = (await create(api, name=f"ok-{field}")).json()["id"]
    assert refused(await api.patch(f"/endpointConnections/{conn_id}", json=fields))
    assert refused(await api.post("/endpointConnections/testConnection", json={"id": conn_id, **fields}))


async def test_placeholders_and_scheme_words_are_not_secrets_but_what_stands_beside_them_is(
    api: httpx.AsyncClient,
) -> None:
    headers = {"X-Auth": "Token {{ auth_token }}", "X-Signature": "sig-{{ api_key }}-tail-secret-1"}
    conn_id = (await create(api, headers=headers)).json()["id"]
    runtime: Runtime = api._transport.app.state.runtime  # type: ignore[attr-defined]
    assert runtime.redactor.knows("-tail-secret-1") and not runtime.redactor.knows("sig-")
    assert runtime.connections.get(conn_id).spec.headers == headers


URL_KEY = "AIzaSyTESTSECRET0123456789"


async def test_a_url_key_reads_back_masked_and_the_masked_url_sent_back_keeps_it(api: httpx.AsyncClient) -> None:
    """A connection read back (its URL's `?key=` masked) and sent again, as an SDK's update does, keeps the
    stored key; the mask stands for nothing on a new connection."""
    runtime: Runtime = api._transport.app.state.runtime  # type: ignore[attr-defined]
    created = await create(api, url=f"{UP}/v1/models/x:generate?key={URL_KEY}&alt=sse", authType="NONE")
    assert created.status_code == 201, created.text
    read = (await api.get(f"/endpointConnections/{created.json()['id']}")).json()
    assert created.json()["url"] == read["url"] == f"{UP}/v1/models/x:generate?key={MASK}&alt=sse"
    moved = read["url"].replace("/x:generate", "/y:generate")
    patched = await api.patch(f"/endpointConnections/{read['id']}", json={**read, "url": moved})
    assert patched.status_code == 200, patched.text
    assert runtime.connections.get(read["id"]).spec.url == f"{UP}/v1/models/y:generate?key={URL_KEY}&alt=sse"
    assert patched.json()["url"] == moved
    fresh = await create(api, name="fresh", url=moved, authType="NONE")
    assert fresh.status_code == 422
    assert (
        fresh.json()["message"]
        == "url: query parameter key: the masked value '••••••••' can only stand for a stored value"
    )
    extra = await api.patch(f"/endpointConnections/{read['id']}", json={"url": f"{moved}&token={MASK}"})
    assert extra.status_code == 422 and "query parameter token" in extra.json()["message"]


async def test_probing_the_url_filter_reveals_nothing_of_a_url_key(api: httpx.AsyncClient) -> None:
    """The attack: guessing a URL's key a few characters at a time through the list's `url` filter."""
    await create(api, url=f"{UP}/v1/models/x:generate?key={URL_KEY}", authType="NONE")
    for probe in (URL_KEY[:6], f"key={URL_KEY[:3]}", URL_KEY):
        assert (await api.get("/endpointConnections", params={"url": probe})).json() == [], probe
    assert len((await api.get("/endpointConnections", params={"url": "generate?key="})).json()) == 1


async def test_which_query_parameters_hold_a_credential(api: httpx.AsyncClient) -> None:
    """Names that APIs read credentials from, in any case and with `-` or `_`, whose value holds literal text; not a
    name that merely contains a credential word, and not a value that is all template."""
    runtime: Runtime = api._transport.app.state.runtime  # type: ignore[attr-defined]
    url = (
        f"{UP}/x?max_tokens=5&keyword=cats&sort_key=id&KEY=Key-Upper-001&X-Api-Key=Dash-Value-002"
        "&access_token={{ context.t }}&sig={{ context.s }}-Literal-Piece-003&token={{ 'abc' }}"
        "&signature=abc%2Fdef%2Bghi"
    )
    created = await create(api, url=url, authType="NONE")
    assert created.status_code == 201, created.text
    assert created.json()["url"] == (
        f"{UP}/x?max_tokens=5&keyword=cats&sort_key=id&KEY={MASK}&X-Api-Key={MASK}"
        f"&access_token={{{{ context.t }}}}&sig={{{{ context.s }}}}{MASK}&token={{{{ 'abc' }}}}&signature={MASK}"
    )
    for secret in ("Key-Upper-001", "Dash-Value-002", "-Literal-Piece-003", "abc%2Fdef%2Bghi", "abc/def+ghi"):
        assert runtime.redactor.knows(secret), secret  # a percent-encoded one also as it reads decoded
    assert not runtime.redactor.knows("cats") and not runtime.redactor.knows("id")


async def test_a_credential_placeholder_the_auth_type_cannot_fill_is_refused_naming_header_and_placeholder(
    api: httpx.AsyncClient,
) -> None:
    """Attack on the first hour: `{{ username }}` in a custom header of a BEARER connection was stored and sent
    upstream literally. Refused at create and at update (a new header, or a new auth type), naming both."""
    response = await create(api, headers={"X-User": "{{ username }}"})
    assert response.status_code == 422
    assert response.json()["message"] == (
        "headers.X-User: {{ username }} is a credential an authType BEARER connection cannot fill (it fills only "
        "auth_token, api_key, bearer_token): it would be sent as written; change authType or the header"
    )
    assert (await api.get("/endpointConnections")).json() == []
    conn_id = (await create(api, headers={"X-Auth": "Token {{ auth_token }}"})).json()["id"]
    added = await api.patch(f"/endpointConnections/{conn_id}", json={"headers": {"X-Pass": "{ Password }"}})
    assert added.status_code == 422 and added.json()["message"].startswith("headers.X-Pass: { Password } is a")
    switched = await api.patch(
        f"/endpointConnections/{conn_id}", json={"authType": "BASIC", "username": "ann", "password": TEST_PASSWORD}
    )
    assert switched.status_code == 422 and switched.json()["message"].startswith("headers.X-Auth: {{ auth_token }}")
    none = await create(api, name="open", authType="NONE", authToken=None, headers={"X-Key": "{{ api_key }}"})
    assert none.status_code == 422 and "(it fills no credential placeholder)" in none.json()["message"]
    basic = await create(
        api,
        name="basic",
        authType="BASIC",
        authToken=None,
        username="ann",
        password=TEST_PASSWORD,
        headers={"X-User": "{{ username }}"},
    )
    assert basic.status_code == 201, basic.text
