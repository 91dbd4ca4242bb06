from __future__ import annotations

from pathlib import Path

import pytest

from proxy.sessions.dataset import DatasetError, load_dataset


def write(tmp_path: Path, text: str, name: str = "d.jsonl") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_jsonl_and_json_array_forms(tmp_path: Path) -> None:
    jsonl = write(
        tmp_path,
        '{"id": "a", "input": "hi"}\n\n{"id": 2, "turns": [{"user_message": "x"}, "y"], "context": {"k": 1}}\n',
    )
    cases = load_dataset(jsonl)
    assert [(c.id, c.turns, c.context) for c in cases] == [
        ("a", ["hi"], None),
        ("2", [{"user_message": "x"}, "y"], {"k": 1}),
    ]
    array = write(tmp_path, '[{"id": "a", "input": {"user_message": "hi"}}]', "d.json")
    assert load_dataset(array)[0].turns == [{"user_message": "hi"}]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"id": "a", "input": "x"}\n{"id": "b", "input": ', "line 2: not valid JSON"),
        ('{"id": "a", "input": "x"}\n{"input": "x"}', "line 2: 'id' is required"),
        ('{"id": "a"}', "line 1: give either 'input' (one turn) or 'turns'"),
        ('{"id": "a", "input": "x", "turns": ["y"]}', "line 1: give either"),
        ('{"id": "a", "turns": []}', "line 1: 'turns' must be a non-empty list"),
        ('{"id": "a", "turns": [5]}', "line 1: turn 0 must be an object"),
        ('{"id": "a", "input": "x", "context": "c"}', "line 1: 'context' must be an object"),
        ('{"id": "a", "input": "x"}\n{"id": "a", "input": "y"}', "line 2: id 'a' is already used at line 1"),
        ("[1]", "item 1: a test case must be a JSON object"),
        ("", "holds no test case"),
    ],
)
def test_problems_name_their_line(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(DatasetError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_dataset(write(tmp_path, text))


def test_every_bad_line_is_reported_at_once(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '{"id": "a", "input": "x"}\n{"id": "b", "input": \n{"input": "x"}\n{"id": "c", "input": "y"}\n'
        '{"id": "a", "input": "z"}\n[1]\n',
    )
    with pytest.raises(DatasetError) as raised:
        load_dataset(path)
    assert str(raised.value).splitlines() == [
        f"{path}: line 2: not valid JSON: Expecting value (column 22)",
        f"{path}: line 3: 'id' is required (a string)",
        f"{path}: line 5: id 'a' is already used at line 1",
        f"{path}: line 6: a test case must be a JSON object",
    ]
