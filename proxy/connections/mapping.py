"""Output mapping: JSONPath expressions compiled once, applied to an upstream JSON reply.

Special keys: `output` (the turn's output; non-strings become JSON text), `session_id` (the
external session id), `retrieval_context`, `traces` (a list of span objects); any other key
becomes session metadata. When a path matches nothing, `explain_miss` says which step failed
and which keys exist there, because that is the question a user debugging a mapping asks.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from jsonpath_ng import Child, DatumInContext, Fields, Index, JSONPath, Root, Slice
from jsonpath_ng.exceptions import JsonPathLexerError, JsonPathParserError
from jsonpath_ng.jsonpath import Wildcard
from jsonpath_ng.parser import parse as parse_jsonpath

from proxy.connections.jsonpath_budget import JsonPathStopped, StepBudget, find, find_values

OUTPUT = "output"
SESSION_ID = "session_id"
RETRIEVAL_CONTEXT = "retrieval_context"
TRACES = "traces"
SPECIAL_KEYS = (OUTPUT, SESSION_ID, RETRIEVAL_CONTEXT, TRACES)

TRACE_FIELDS = (
    "name",
    "type",
    "description",
    "inputData",
    "outputData",
    "error",
    "latencyMs",
    "metadata",
    "startTime",
    "endTime",
)


class JsonPathRefused(ValueError):
    pass


def compile_jsonpath(expression: str) -> JSONPath:
    if not isinstance(expression, str) or not expression.strip().startswith("$"):
        raise JsonPathRefused(f"JSONPath must start with '$', got {expression!r}")
    try:
        return parse_jsonpath(expression)
    except (JsonPathLexerError, JsonPathParserError, Exception) as exc:  # the parser raises bare Exceptions too
        raise JsonPathRefused(f"JSONPath {expression!r} does not parse: {exc}") from exc


# A plain lookup: the values a simple path finds in a document, as `[m.value for m in path.find(document)]`.
Lookup = Callable[[Any], list[Any]]
_NOT_SET = object()


def fast_lookup(path: JSONPath) -> Lookup | None:
    """`$.a.b[0]`, `$['a']`, `$.a[-1]`: a chain of single fields and indices as plain dict and list steps
    (jsonpath-ng's `find` builds a context object per step); None for anything else, which jsonpath-ng runs.
    Read from the parsed path, so both agree on what the expression means."""
    steps = _steps(path)
    if not steps or not isinstance(steps[0], Root):
        return None
    plan: list[str | int] = []
    for step in steps[1:]:
        if type(step) is Fields and len(step.fields) == 1 and step.fields[0] != "*":
            plan.append(step.fields[0])
        elif type(step) is Index and len(step.indices) == 1:
            plan.append(step.indices[0])
        else:
            return None

    def lookup(document: Any) -> list[Any]:
        value = document
        for key in plan:
            if isinstance(key, str):  # jsonpath-ng reads a field with `.get`: objects only
                if not isinstance(value, dict):
                    return []
                value = value.get(key, _NOT_SET)
                if value is _NOT_SET:
                    return []
            else:  # an index applies to arrays only, from either end
                if not isinstance(value, list | tuple) or not -len(value) <= key < len(value):
                    return []
                value = value[key]
        return [value]

    return lookup


def _steps(path: JSONPath) -> list[JSONPath]:
    """Flatten Child(Child(Root, a), b) into [Root, a, b]."""
    if isinstance(path, Child):
        return [*_steps(path.left), *_steps(path.right)]
    return [path]


def _step_text(step: JSONPath) -> str:
    if isinstance(step, Root):
        return "$"
    if isinstance(step, Fields):
        return "." + ".".join(step.fields)
    if isinstance(step, Index):
        return "[" + ",".join(str(i) for i in step.indices) + "]"
    if isinstance(step, Wildcard | Slice):
        return "[*]"
    return str(step)


def _describe(value: Any) -> str:
    if isinstance(value, dict):
        keys = ", ".join(list(value)[:20]) or "none"
        return f"an object with keys: {keys}"
    if isinstance(value, list):
        return f"an array of length {len(value)}"
    return f"a {type(value).__name__} ({json.dumps(value, default=str)[:60]})"


def explain_miss(path: JSONPath, document: Any, budget: StepBudget) -> str:
    """Walk the path step by step and say where the first empty match happened (within `budget`: a step
    may hold a `..`)."""
    steps = _steps(path)
    current = [DatumInContext(document)]
    walked = ""
    for step in steps:
        if isinstance(step, Root):
            walked = "$"
            continue
        found = [match for datum in current for match in find(step, datum, budget)]
        if not found:
            where = walked or "$"
            return f"'{_step_text(step)}' matched nothing after '{where}', which is " + _describe(current[0].value)
        current = found
        walked += _step_text(step)
    return "matched nothing"


@dataclass
class MappingResult:
    values: dict[str, Any] = field(default_factory=dict)
    misses: dict[str, str] = field(default_factory=dict)  # key → why it extracted nothing


class CompiledMapping:
    def __init__(self, mapping: dict[str, str], paths: dict[str, JSONPath] | None = None) -> None:
        self.source = dict(mapping)
        self.paths = paths if paths is not None else {key: compile_jsonpath(expr) for key, expr in mapping.items()}
        self._plain = {key: fast_lookup(path) for key, path in self.paths.items()}
        self._multi = {key: _is_multi(path) for key, path in self.paths.items()}

    def apply(self, document: Any, budget: StepBudget | None = None) -> MappingResult:
        """The mapping over `document`; every path but the plain ones spends from `budget` (without one, from
        the budget of an empty reply). A path that spends it all raises `JsonPathStopped` naming its key."""
        if budget is None:
            budget = StepBudget.for_size(0)
        result = MappingResult()
        for key, path in self.paths.items():
            plain = self._plain[key]
            try:
                matches = plain(document) if plain is not None else find_values(path, document, budget)
                if not matches:
                    result.misses[key] = f"{self.source[key]}: " + explain_miss(path, document, budget)
                    continue
            except JsonPathStopped as exc:
                expression = self.source[key]
                raise JsonPathStopped(f"output mapping '{key}' stopped: the JSONPath {expression} {exc}") from None
            # A wildcard path yields a list; a plain path yields its one value.
            value: Any = matches if self._multi[key] else matches[0]
            result.values[key] = value
        return result


def _is_multi(path: JSONPath) -> bool:
    return any(isinstance(step, Wildcard | Slice) for step in _steps(path))


def output_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def normalise_traces(value: Any) -> tuple[list[dict[str, Any]], str | None]:
    """Traces must be a list of objects with a `name`; returns (traces, error)."""
    items = value if isinstance(value, list) else [value]
    traces = []
    for index, item in enumerate(items):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str) or not item["name"]:
            return [], f"traces[{index}] must be an object with a non-empty 'name'"
        traces.append({k: item[k] for k in TRACE_FIELDS if k in item})
    return traces, None


def first_scalar_text(path: JSONPath, document: Any, budget: StepBudget) -> str | None:
    """The text of the first value a path finds, if it is a string, number or boolean (end rules)."""
    matches = find_values(path, document, budget)
    if not matches:
        return None
    value = matches[0]
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return str(value)
    return None
