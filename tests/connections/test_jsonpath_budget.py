"""JSONPath under a step budget: the same matches as jsonpath-ng, a path that multiplies its cost stopped, and a
reading on the event loop handed to a worker thread once it has taken its share there."""

from __future__ import annotations

import json
import threading
import warnings
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.config.settings import JSONPATH_BASE_STEPS, JSONPATH_LOOP_STEPS, JSONPATH_STEPS_PER_CHAR
from proxy.connections.jsonpath_budget import JsonPathStopped, StepBudget, find, find_values
from proxy.connections.mapping import CompiledMapping, compile_jsonpath
from proxy.engine.replies import read_reply

with warnings.catch_warnings():  # `|` is deprecated in jsonpath-ng, still parsed, so still walked here
    warnings.simplefilter("ignore", DeprecationWarning)
    PATHS = [
        compile_jsonpath(expression)
        for expression in (
            "$..a",
            "$..*",
            "$.a..b",
            "$..*..a",
            "$..a..*",
            "$..[0]",
            "$..*[1:]",
            "$[*]..b.`parent`",
            "$.a where b",
            "$.* wherenot a",
            "$..a | $..b",
            "$.*.`this`",
            "$..a.`parent`.b",
            "$['a', 'b']..*",
        )
    ]
KEYS = st.sampled_from(["a", "b", "c"])
DOCUMENTS = st.recursive(
    st.none() | st.integers(-3, 3) | st.text(max_size=2),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=3),
    max_leaves=25,
)


@given(document=DOCUMENTS, path=st.sampled_from(PATHS))
@settings(max_examples=300, deadline=None)
def test_the_bounded_walk_finds_what_jsonpath_ng_finds_in_the_same_order(document: Any, path: Any) -> None:
    budget = StepBudget(10**9)
    expected = path.find(document)
    found = find(path, document, budget)
    assert [m.value for m in found] == [m.value for m in expected]
    assert [str(m.full_path) for m in found] == [str(m.full_path) for m in expected]
    assert budget.spent > 0


def nested(depth: int) -> Any:
    document: Any = "leaf"
    for level in range(depth):
        document = {"k": level, "n": document}
    return document


def test_a_path_whose_cost_is_the_cube_of_the_depth_stops_at_the_budget() -> None:
    """The attack: `$..*..*..*` over a 2.4 KB reply nested 150 levels makes 1.1 million matches (12-17 s); it stops
    once it has spent the budget of a reply that size, having taken no more steps than that."""
    text = json.dumps(nested(150))
    budget = StepBudget.for_size(len(text))
    assert budget.limit == JSONPATH_BASE_STEPS + JSONPATH_STEPS_PER_CHAR * len(text)
    with pytest.raises(JsonPathStopped) as stopped:
        find_values(compile_jsonpath("$..*..*..*"), nested(150), budget)
    assert str(stopped.value) == f"passed the budget of {budget.limit:,} steps for a reply of {len(text):,} characters"
    assert budget.limit < budget.spent <= budget.limit + 151  # one step of jsonpath-ng's past it at most


@pytest.mark.parametrize("expression", ["$..a", "$..*", "$[*]", "$.*..a"])
def test_a_path_that_visits_each_value_a_few_times_fits_the_budget_of_the_densest_reply(expression: str) -> None:
    """`[0,0,...]` holds a value every two characters, the most a reply can: a path that visits each value a
    few times fits in the reply's steps per character alone."""
    document = [0] * 10_000
    text = json.dumps(document, separators=(",", ":"))
    path = compile_jsonpath(expression)
    found = find_values(path, document, StepBudget(JSONPATH_STEPS_PER_CHAR * len(text)))
    assert len(found) == len(path.find(document))


def test_a_stopped_mapping_names_its_key_and_path() -> None:
    mapping = CompiledMapping({"fine": "$.k", "output": "$..*..*..*"})
    with pytest.raises(JsonPathStopped, match=r"^output mapping 'output' stopped: the JSONPath \$\.\.\*\.\.\*\.\.\* "):
        mapping.apply(nested(150), StepBudget.for_size(2446))


def test_a_miss_is_explained_within_the_same_budget() -> None:
    """A path that matches nothing is walked again step by step to say where it failed: that walk spends too."""
    path = compile_jsonpath("$..*..*..nothing")
    find_alone = StepBudget(10**9)
    assert find_values(path, nested(40), find_alone) == []
    mapping = CompiledMapping({"output": "$..*..*..nothing"})
    with pytest.raises(JsonPathStopped):
        mapping.apply(nested(40), StepBudget(find_alone.spent))
    explained = mapping.apply(nested(40), StepBudget(2 * find_alone.spent))
    assert explained.misses["output"].startswith("$..*..*..nothing: '")


async def test_a_reading_that_outgrows_its_share_of_the_loop_finishes_in_a_worker_thread() -> None:
    """A costly (but allowed) path over a small reply: the loop runs only its first steps, a worker thread the
    rest, so the loop is never held for the whole reading."""
    document = nested(40)  # `$..*..*` walks ~2,500 values; `$..*..*..*` ~43,000: past the loop's share
    path = compile_jsonpath("$..*..*..*")
    seen: list[tuple[str, int | None]] = []

    def read(budget: StepBudget) -> int:
        seen.append((threading.current_thread().name, budget.loop_share))
        return len(find_values(path, document, budget))

    loop_thread = threading.current_thread().name
    found = await read_reply(len(json.dumps(document)), read)
    assert found == len(find_values(path, document, StepBudget(10**9)))
    assert seen[0] == (loop_thread, JSONPATH_LOOP_STEPS)
    assert len(seen) == 2 and seen[1][0] != loop_thread and seen[1][1] is None


async def test_a_cheap_reading_stays_on_the_loop() -> None:
    seen: list[str] = []

    def read(budget: StepBudget) -> int:
        seen.append(threading.current_thread().name)
        return len(find_values(compile_jsonpath("$..k"), nested(40), budget))

    assert await read_reply(1000, read) == 40
    assert seen == [threading.current_thread().name]
