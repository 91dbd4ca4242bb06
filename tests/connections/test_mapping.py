from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.connections.mapping import CompiledMapping, JsonPathRefused, compile_jsonpath, fast_lookup, normalise_traces

REPLY = {
    "choices": [{"message": {"content": "first"}}, {"message": {"content": "last"}}],
    "session": {"id": 42},
    "docs": [{"text": "a"}, {"text": "b"}],
}


def test_supported_path_forms() -> None:
    mapping = CompiledMapping(
        {
            "output": "$.choices[-1].message.content",
            "first": "$.choices[0].message.content",
            "texts": "$.docs[*].text",
            "whole": "$.session",
            "bracket": "$['session']['id']",
        }
    )
    result = mapping.apply(REPLY)
    assert result.values == {
        "output": "last",
        "first": "first",
        "texts": ["a", "b"],
        "whole": {"id": 42},
        "bracket": 42,
    }
    assert result.misses == {}


def test_miss_names_the_failing_step_and_the_keys_that_exist() -> None:
    result = CompiledMapping({"output": "$.choices[0].message.text"}).apply(REPLY)
    assert "output" not in result.values
    assert result.misses["output"] == (
        "$.choices[0].message.text: '.text' matched nothing after '$.choices[0].message', "
        "which is an object with keys: content"
    )


def test_miss_on_index_past_the_end_says_the_array_length() -> None:
    result = CompiledMapping({"output": "$.choices[5].message"}).apply(REPLY)
    assert "'[5]' matched nothing after '$.choices', which is an array of length 2" in result.misses["output"]


def test_miss_at_the_root_lists_top_level_keys() -> None:
    result = CompiledMapping({"output": "$.answer"}).apply(REPLY)
    assert "after '$', which is an object with keys: choices, session, docs" in result.misses["output"]


@pytest.mark.parametrize("bad", ["choices[0]", "$.[", "$..[?(@.x", ""])
def test_unparseable_paths_are_refused(bad: str) -> None:
    with pytest.raises(JsonPathRefused):
        compile_jsonpath(bad)


def test_traces_need_a_name_and_keep_known_fields() -> None:
    traces, error = normalise_traces([{"name": "t", "type": "TOOL", "latencyMs": 3, "junk": 1}])
    assert error is None and traces == [{"name": "t", "type": "TOOL", "latencyMs": 3}]
    assert normalise_traces([{"type": "TOOL"}])[1] == "traces[0] must be an object with a non-empty 'name'"


# -- the plain lookup simple paths compile to ------------------------------------------------------

KEYS = st.sampled_from(["a", "b", "0", "x y", "é"])
DOCUMENTS = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.text(max_size=3),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=4),
    max_leaves=20,
)
STEPS = st.lists(
    st.one_of(
        KEYS.filter(lambda k: k.isascii() and k.isidentifier()).map(lambda k: f".{k}"),
        KEYS.map(lambda k: f"['{k}']"),
        st.integers(-4, 4).map(lambda i: f"[{i}]"),
    ),
    max_size=5,
)


@given(document=DOCUMENTS, steps=STEPS)
@settings(max_examples=400, deadline=None)
def test_fast_lookup_finds_what_jsonpath_ng_finds(document: object, steps: list[str]) -> None:
    path = compile_jsonpath("$" + "".join(steps))
    lookup = fast_lookup(path)
    assert lookup is not None, f"{path} should compile to a plain lookup"
    assert lookup(document) == [m.value for m in path.find(document)]


@pytest.mark.parametrize("expression", ["$.a[*]", "$..a", "$.a[0:2]", "$.a[0,1]", "$.*", "$.a.b[?(@.c)]"])
def test_other_paths_stay_with_jsonpath_ng(expression: str) -> None:
    try:
        path = compile_jsonpath(expression)
    except JsonPathRefused:
        return
    assert fast_lookup(path) is None


def test_mapping_uses_the_plain_lookup(monkeypatch: pytest.MonkeyPatch) -> None:
    mapping = CompiledMapping({"output": "$.choices[-1].message.content", "texts": "$.docs[*].text"})
    simple = mapping.paths["output"]
    monkeypatch.setattr(simple, "find", lambda *a: pytest.fail("jsonpath-ng ran a simple path"))
    assert mapping.apply(REPLY).values["output"] == "last"
