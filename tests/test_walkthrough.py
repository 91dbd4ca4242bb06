"""The README's walkthrough, run exactly as a newcomer would: record, replay offline, debug a JSONPath."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.e2e


def proxy(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "proxy", *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_readme_walkthrough(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    readme = (ROOT / "README.md").read_text()
    common = [
        "examples/dataset.jsonl",
        "--version",
        "demo-v1",
        "--config",
        "examples/demo.yaml",
        "--cassettes",
        "my-cassettes",
    ]
    for line in (
        "--cassettes my-cassettes --record-mode once --out recorded.jsonl",
        "--cassettes my-cassettes --record-mode none --out replayed.jsonl",
        'proxy check demo-broken --config examples/broken.yaml --input \'{"user_message": "hi"}\'',
    ):
        assert line in readme  # the README shows these very commands

    recorded = proxy(tmp_path, "run", *common, "--record-mode", "once", "--out", "recorded.jsonl")
    assert recorded.returncode == 0, recorded.stdout + recorded.stderr
    assert "4 recorded" in recorded.stdout
    replayed = proxy(tmp_path, "run", *common, "--record-mode", "none", "--out", "replayed.jsonl")
    assert replayed.returncode == 0 and "4 hits, 0 recorded, 0 misses" in replayed.stdout
    before = (tmp_path / "recorded.jsonl").read_text().replace('"cassette": "recorded"', '"cassette": "hit"')
    assert before == (tmp_path / "replayed.jsonl").read_text()
    assert json.loads((tmp_path / "replayed.jsonl").read_text().splitlines()[0])["turns"][0]["output"] == (
        "You said: Hello! What can you do?"
    )

    checked = proxy(
        tmp_path, "check", "demo-broken", "--config", "examples/broken.yaml", "--input", '{"user_message": "hi"}'
    )
    assert checked.returncode == 1
    assert "✗ output" in checked.stdout
    assert (
        "'.reply' matched nothing after '$', which is an object with keys: response, sources, trace" in checked.stdout
    )
