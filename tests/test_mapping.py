from __future__ import annotations

import pytest

from proxy.mapping import CompiledMapping, JsonPathRefused, compile_jsonpath, normalise_traces

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
