"""JSONPath evaluation under a step budget, so no path can hold the server for long.

jsonpath-ng's `find` cannot be interrupted, and its cost is not bounded by the document: each `..` walks
the whole subtree under every match of what precedes it, so `$..*..*..*` over a 3 KB reply nested 150
levels makes over a million matches (the cube of the depth) and took 17 s on the event loop. Here the
operators that combine sub-paths (`.`, `..`, `|`, `where`) are walked by `find`, which counts a step for
every value it visits or matches and stops once the budget is spent; each single step (a field, an index,
a slice, `*`, `parent`) is still jsonpath-ng's own, so both agree on what a path means. A step of that
kind costs at most the children of one value, which the reply's size bounds.

The budget grows with the reply (`steps_for`): a path that visits each value a few times, such as `$..a`,
fits in the budget of any reply, while one whose cost multiplies with the depth or the fan-out does not.
On the event loop a reading may take only its first `JSONPATH_LOOP_STEPS` steps (`LoopShareSpent`); the
caller then starts it again in a worker thread with the whole budget (`proxy.engine.replies.read_reply`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from jsonpath_ng import Child, DatumInContext, Descendants, Fields, Index, JSONPath, Where, WhereNot
from jsonpath_ng.jsonpath import AutoIdForDatum, _Union  # `_Union`: the `|` node, deprecated under its old name

from proxy.config.settings import JSONPATH_BASE_STEPS, JSONPATH_LOOP_STEPS, JSONPATH_STEPS_PER_CHAR


class JsonPathStopped(Exception):
    """A JSONPath spent its budget; the message says how big the budget was."""


class LoopShareSpent(Exception):
    """A reading on the event loop took the steps it may take there: it goes on in a worker thread."""


def steps_for(size: int) -> int:
    """The steps JSONPaths may take over a reply of `size` characters."""
    return JSONPATH_BASE_STEPS + JSONPATH_STEPS_PER_CHAR * max(size, 0)


@dataclass
class StepBudget:
    """What one reading of a reply (its output mapping, say) may spend, shared by every path it runs."""

    limit: int
    size: int = 0  # the reply's size in characters, for the message
    spent: int = 0
    loop_share: int | None = None  # on the event loop: the steps it may take there

    @classmethod
    def for_size(cls, size: int, on_loop: bool = False) -> StepBudget:
        return cls(steps_for(size), size, loop_share=JSONPATH_LOOP_STEPS if on_loop else None)

    def spend(self, steps: int) -> None:
        self.spent += steps
        if self.spent > self.limit:
            raise JsonPathStopped(f"passed the budget of {self.limit:,} steps for a reply of {self.size:,} characters")
        if self.loop_share is not None and self.spent > self.loop_share:
            raise LoopShareSpent


def find_values(path: JSONPath, document: Any, budget: StepBudget) -> list[Any]:
    """What `[m.value for m in path.find(document)]` finds, within `budget`."""
    return [match.value for match in find(path, document, budget)]


def find(path: JSONPath, datum: Any, budget: StepBudget) -> list[DatumInContext]:
    """`path.find(datum)`, the same matches in the same order, within `budget` (else `JsonPathStopped`)."""
    if isinstance(path, Child):
        found: list[DatumInContext] = []
        for sub in find(path.left, datum, budget):
            if not isinstance(sub, AutoIdForDatum):  # as jsonpath-ng: an auto id has no children
                found += find(path.right, sub, budget)
        return found
    if isinstance(path, Descendants):
        return _descendants(path, datum, budget)
    if isinstance(path, WhereNot):
        return [sub for sub in find(path.left, datum, budget) if not find(path.right, sub, budget)]
    if isinstance(path, Where):
        return [sub for sub in find(path.left, datum, budget) if find(path.right, sub, budget)]
    if isinstance(path, _Union):
        return find(path.left, datum, budget) + find(path.right, datum, budget)
    found = path.find(datum)  # one step: the children of one value at most
    budget.spend(len(found) + 1)
    return found


def _descendants(path: Descendants, datum: Any, budget: StepBudget) -> list[DatumInContext]:
    """`left..right`: `right` tried on every value under each match of `left`, depth first and in order, as
    jsonpath-ng walks it (an explicit stack, children pushed in reverse)."""
    matches: list[DatumInContext] = []
    stack = find(path.left, datum, budget)[::-1]
    while stack:
        current = stack.pop()
        matches += find(path.right, current, budget)
        value = current.value
        if isinstance(value, list):
            children = [DatumInContext(child, context=current, path=Index(i)) for i, child in enumerate(value)]
        elif isinstance(value, dict):
            named = Fields._compliant_constructor  # how jsonpath-ng names a member on the way down
            children = [DatumInContext(child, context=current, path=named(key)) for key, child in value.items()]
        else:
            continue
        budget.spend(len(children))
        children.reverse()
        stack += children
    return matches
