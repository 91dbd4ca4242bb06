from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.cassettes.matching import (
    Difference,
    MatchRules,
    RecordedRequest,
    describe_difference,
    first_difference,
)
from proxy.connections.mapping import compile_jsonpath

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
    assert first_difference(recorded, now) == Difference('"hello"', '"hi"', "$.messages[1].content")
    assert first_difference({"a": 1}, {"a": 1, "b": 2}) == Difference("absent", "2", "$.b")
    assert first_difference([1, 2], [1]) == Difference("2 items", "1", "$")
    assert first_difference({"a": [1]}, {"a": [1]}) is None


@pytest.mark.parametrize(
    ("key", "path"),
    [("a:b.c", "$.meta['a:b.c']"), ("x: y", "$.meta['x: y']"), ("it's.here", '$.meta["it\'s.here"]')],
)
def test_a_key_with_a_colon_or_a_dot_is_named_whole_as_a_jsonpath_that_reads_back(key: str, path: str) -> None:
    recorded, now = {"meta": {key: "hello"}}, {"meta": {key: "hi"}}
    found = first_difference(recorded, now)
    assert found is not None and found.path == path
    assert found.message == f'body {path}: "hello" recorded, "hi" now'
    assert [m.value for m in compile_jsonpath(path).find(now)] == ["hi"]


def test_describe_difference_orders_method_url_body() -> None:
    rules = MatchRules()
    assert describe_difference(rules, request({}, method="GET"), request({})) == Difference(
        "GET", "POST", part="method"
    )
    url = describe_difference(rules, request({}, "https://up.test/a"), request({}, "https://up.test/b"))
    assert url is not None and url.message.startswith("url: https://up.test/a recorded")
    body = describe_difference(rules, request({"m": "hello"}), request({"m": "hi"}))
    assert body is not None and body.message == 'body $.m: "hello" recorded, "hi" now' and body.path == "$.m"
    assert describe_difference(rules, request({"m": "hi"}), request({"m": "hi"})) is None
