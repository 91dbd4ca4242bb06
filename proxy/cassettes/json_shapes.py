"""The shape of a JSON answer, and where a live one differs from its recording: a key added or missing, a value's
type changed, each named by its JSONPath (`$.usage.total_tokens: number → string`). Values that differ but keep
their type are not a difference: a live model never answers the same words twice."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from proxy.security import jsonbounds

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


@dataclass
class Difference:
    path: str  # a JSONPath, or "status", or (in a stream) "event", "events", "end"
    recorded: str | None  # a JSON type name or a status; None: the key was added
    live: str | None  # None: the key is missing
    event: int | None = None  # in a stream: the index of the event it is in

    def text(self) -> str:
        where = f"event #{self.event} " if self.event is not None else ""
        if self.recorded is None:
            return f"{where}{self.path}: added"
        if self.live is None:
            return f"{where}{self.path}: missing"
        return f"{where}{self.path}: {self.recorded} → {self.live}"

    def to_json(self) -> dict[str, Any]:
        change = "added" if self.recorded is None else "missing" if self.live is None else "changed"
        found = {"path": self.path, "change": change, "recorded": self.recorded, "live": self.live}
        return found if self.event is None else {**found, "event": self.event}


def json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def child_path(path: str, key: str) -> str:
    return f"{path}.{key}" if _IDENTIFIER.match(key) else f"{path}[{key!r}]"


def shape_differences(recorded: Any, live: Any, path: str = "$") -> list[Difference]:
    """Where `live` differs from `recorded` in shape. Arrays are compared item by item as far as both go:
    a list that grew or shrank is a value, not a shape."""
    recorded_type, live_type = json_type(recorded), json_type(live)
    if recorded_type != live_type:
        return [Difference(path, recorded_type, live_type)]
    found: list[Difference] = []
    if isinstance(recorded, dict):
        for key in recorded:
            if key not in live:
                found.append(Difference(child_path(path, key), json_type(recorded[key]), None))
            else:
                found += shape_differences(recorded[key], live[key], child_path(path, key))
        found += [Difference(child_path(path, key), None, json_type(live[key])) for key in live if key not in recorded]
    elif isinstance(recorded, list):
        for index, (old, new) in enumerate(zip(recorded, live, strict=False)):
            found += shape_differences(old, new, f"{path}[{index}]")
    return found


def json_or_none(body: bytes) -> tuple[bool, Any]:
    """(whether `body` is JSON, its value); an empty body is JSON's null."""
    try:
        return True, jsonbounds.loads(body) if body.strip() else None
    except (ValueError, UnicodeDecodeError):  # JsonRefused is a ValueError too
        return False, None


def body_differences(recorded: bytes, live: bytes) -> list[Difference]:
    was_json, old = json_or_none(recorded)
    is_json, new = json_or_none(live)
    if was_json and is_json:
        return shape_differences(old, new)
    if was_json != is_json:
        return [Difference("$", "JSON" if was_json else "not JSON", "JSON" if is_json else "not JSON")]
    return []
