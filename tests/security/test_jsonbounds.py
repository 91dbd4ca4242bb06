from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.config.settings import JSON_MAX_DEPTH, JSON_MAX_NUMBER_DIGITS
from proxy.security import jsonbounds
from proxy.security.jsonbounds import JsonRefused, nesting_depth


def deep(levels: int, opener: str = "[", closer: str = "]") -> str:
    return opener * levels + closer * levels if opener == "[" else '{"a":' * levels + "1" + "}" * levels


def true_depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((true_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((true_depth(v) for v in value), default=0)
    return 0


# Strings full of the characters the scan must see through: brackets, quotes, backslashes.
tricky_text = st.text(alphabet='[]{}"\\ab\n', max_size=12)
documents = st.recursive(
    st.none() | st.booleans() | st.integers() | tricky_text,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(tricky_text, children, max_size=4),
    max_leaves=40,
)


@given(documents)
def test_the_scan_finds_the_true_nesting_depth_whatever_the_strings_hold(value: Any) -> None:
    assert nesting_depth(json.dumps(value).encode()) == true_depth(value)
    assert nesting_depth(json.dumps(value, ensure_ascii=False).encode()) == true_depth(value)


@pytest.mark.parametrize("opener", ["[", "{"])
def test_nesting_up_to_the_limit_parses_and_one_more_is_refused(opener: str) -> None:
    assert jsonbounds.loads(deep(JSON_MAX_DEPTH, opener)) == json.loads(deep(JSON_MAX_DEPTH, opener))
    with pytest.raises(JsonRefused, match=f"nested deeper than {JSON_MAX_DEPTH} levels"):
        jsonbounds.loads(deep(JSON_MAX_DEPTH + 1, opener))


def test_a_hundred_thousand_levels_are_refused_not_a_recursion_error() -> None:
    with pytest.raises(JsonRefused, match="nested deeper"):
        jsonbounds.loads(deep(100_000).encode())


def test_brackets_inside_strings_do_not_count() -> None:
    text = json.dumps({"a": "[" * 5000, "b": ['\\"[[[[', "{" * 2000]})
    assert jsonbounds.loads(text) == json.loads(text)


@pytest.mark.parametrize("number", ["7" * JSON_MAX_NUMBER_DIGITS, "-" + "7" * JSON_MAX_NUMBER_DIGITS, "0.5"])
def test_numbers_up_to_the_digit_limit_parse(number: str) -> None:
    assert jsonbounds.loads(f'{{"n": {number}}}') == json.loads(f'{{"n": {number}}}')


@pytest.mark.parametrize(
    "number",
    ["7" * (JSON_MAX_NUMBER_DIGITS + 1), "-" + "7" * 5000, "1." + "7" * 5000, "7" * 5000 + "e3"],
)
def test_numbers_over_the_digit_limit_are_refused(number: str) -> None:
    with pytest.raises(JsonRefused, match=f"more than {JSON_MAX_NUMBER_DIGITS} digits"):
        jsonbounds.loads(f'{{"n": {number}}}'.encode())


def test_a_long_string_of_digits_is_not_a_number() -> None:
    text = json.dumps({"s": "7" * 10_000, "n": 12})
    assert jsonbounds.loads(text) == {"s": "7" * 10_000, "n": 12}


def test_bytes_in_any_json_encoding_parse_as_json_loads_does() -> None:
    text = json.dumps({"a": ["[" * 600, "é"]}, ensure_ascii=False)
    for encoding in ("utf-8", "utf-16", "utf-32"):
        assert jsonbounds.loads(text.encode(encoding)) == json.loads(text)


def test_malformed_json_still_raises_the_decode_error() -> None:
    with pytest.raises(json.JSONDecodeError):
        jsonbounds.loads('{"a": ')
    assert issubclass(JsonRefused, ValueError)  # callers that treat ValueError as "not JSON" stay right
