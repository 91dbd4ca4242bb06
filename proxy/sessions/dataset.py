"""Datasets for `proxy run`: JSONL (one test case a line) or a JSON array.

`{"id": "tc-1", "input": {...} | "text", "context": {...}}` for one turn, or
`{"id": "tc-2", "turns": [{...}, {...}], "context": {...}}` for several. Every problem is reported with
its line (JSONL) or item number (array) before anything runs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class DatasetError(ValueError):
    """One line per problem (`dataset.jsonl: line 3: …`), every problem of the file at once."""


@dataclass(frozen=True)
class TestCase:
    id: str
    turns: list[Any]
    context: dict[str, Any] | None
    where: str  # "line 3" or "item 3", for messages


def load_dataset(path: Path) -> list[TestCase]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: cannot read the dataset: {exc}") from None
    problems: list[tuple[int, str]] = []  # (line or item number, text): reported in file order
    if text.lstrip().startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{path}: line {exc.lineno}: not valid JSON: {exc.msg}") from None
        entries = [(n, f"item {n}", item) for n, item in enumerate(items, 1)]
    else:
        entries = []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                entries.append((number, f"line {number}", json.loads(line)))
            except json.JSONDecodeError as exc:
                problems.append((number, f"{path}: line {number}: not valid JSON: {exc.msg} (column {exc.colno})"))
    cases: list[TestCase] = []
    seen: dict[str, str] = {}
    for number, where, item in entries:
        try:
            case = _test_case(path, where, item)
        except DatasetError as exc:
            problems.append((number, str(exc)))
            continue
        if case.id in seen:
            problems.append((number, f"{path}: {where}: id {case.id!r} is already used at {seen[case.id]}"))
            continue
        seen[case.id] = where
        cases.append(case)
    if problems:
        raise DatasetError("\n".join(message for _, message in sorted(problems)))
    if not cases:
        raise DatasetError(f"{path}: the dataset holds no test case")
    return cases


def _test_case(path: Path, where: str, item: Any) -> TestCase:
    def fail(reason: str) -> DatasetError:
        return DatasetError(f"{path}: {where}: {reason}")

    if not isinstance(item, dict):
        raise fail("a test case must be a JSON object")
    case_id = item.get("id")
    if not isinstance(case_id, str | int) or isinstance(case_id, bool) or str(case_id) == "":
        raise fail("'id' is required (a string)")
    if ("input" in item) == ("turns" in item):
        raise fail("give either 'input' (one turn) or 'turns' (a list), not both or neither")
    turns = item["turns"] if "turns" in item else [item["input"]]
    if not isinstance(turns, list) or not turns:
        raise fail("'turns' must be a non-empty list")
    for index, turn in enumerate(turns):
        if not isinstance(turn, dict | str):
            raise fail(f'turn {index} must be an object (e.g. {{"user_message": "Hi"}}) or a string')
    context = item.get("context")
    if context is not None and not isinstance(context, dict):
        raise fail("'context' must be an object")
    return TestCase(str(case_id), turns, context, where)
