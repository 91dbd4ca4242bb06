from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from proxy.transports.matching import MatchRules, RecordedRequest, describe_difference, first_difference

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)


def request(body: object, uri: str = "https://up.test/chat", method: str = "POST", **headers: str) -> RecordedRequest:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return RecordedRequest(method, uri, raw, headers)


@given(st.dictionaries(st.text(max_size=8), json_values, max_size=6))
def test_key_order_never_changes_the_match_key(document: dict[str, object]) -> None:
    rules = MatchRules()
    reordered = dict(reversed(list(document.items())))
    assert rules.key(request(document)) == rules.key(request(reordered))


@given(st.dictionaries(st.text(max_size=8), json_values, max_size=4), st.text(), st.text())
def test_ignored_body_fields_never_change_the_key(document: dict[str, object], a: str, b: str) -> None:
    rules = MatchRules(ignore_body=("$.meta.request_id",))
    first = {**document, "meta": {"request_id": a, "keep": 1}}
    second = {**document, "meta": {"request_id": b, "keep": 1}}
    assert rules.key(request(first)) == rules.key(request(second))
    assert rules.key(request({**first, "meta": {"request_id": a, "keep": 2}})) != rules.key(request(first))


def test_ignored_query_params_and_query_order() -> None:
    rules = MatchRules(ignore_query=frozenset({"ts"}))
    assert rules.key(request({}, "https://up.test/x?b=2&a=1&ts=9")) == rules.key(
        request({}, "https://up.test/x?a=1&b=2")
    )
    assert rules.key(request({}, "https://up.test/x?a=2")) != rules.key(request({}, "https://up.test/x?a=1"))


def test_headers_take_part_only_when_named() -> None:
    plain = MatchRules()
    assert plain.key(request({}, traceparent="00-a", x_galtea_inference_id="1")) == plain.key(request({}))
    rules = MatchRules.from_settings({"match_headers": ["X-Tenant", "X-Noise"], "ignore": {"headers": ["x-noise"]}})
    assert rules.key(request({}, **{"x-tenant": "a", "x-noise": "1"})) == rules.key(request({}, **{"x-tenant": "a"}))
    assert rules.key(request({}, **{"x-tenant": "a"})) != rules.key(request({}, **{"x-tenant": "b"}))


def test_non_json_bodies_compare_as_text() -> None:
    rules = MatchRules()
    assert rules.key(request(b"a=1")) == rules.key(request(b"a=1"))
    assert rules.key(request(b"a=1")) != rules.key(request(b"a=2"))


def test_first_difference_names_the_json_path() -> None:
    recorded = {"messages": [{"role": "user", "content": "hello"}, {"role": "user", "content": "hello"}]}
    now = {"messages": [{"role": "user", "content": "hello"}, {"role": "user", "content": "hi"}]}
    assert first_difference(recorded, now) == '$.messages[1].content: "hello" recorded, "hi" now'
    assert first_difference({"a": 1}, {"a": 1, "b": 2}) == "$.b: absent recorded, 2 now"
    assert first_difference([1, 2], [1]) == "$: 2 items recorded, 1 now"


def test_describe_difference_orders_method_url_body() -> None:
    rules = MatchRules()
    assert describe_difference(rules, request({}, method="GET"), request({})) == "method: GET recorded, POST now"
    assert describe_difference(rules, request({}, "https://up.test/a"), request({}, "https://up.test/b")).startswith(
        "url: https://up.test/a recorded"
    )
    assert (
        describe_difference(rules, request({"m": "hello"}), request({"m": "hi"}))
        == 'body $.m: "hello" recorded, "hi" now'
    )
