"""docs/ documents the code as it is: generated references are current, every route is described, the examples
run, and no link leads outside the repository."""

from __future__ import annotations

import difflib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from starlette.routing import Route

from proxy.server.app import all_routes
from tests import docgen
from tests.conftest import chat_connection
from tests.helpers import ROOT, post

DOCS = ROOT / "docs"
ANY_METHODS = {"GET", "POST", "PUT", "PATCH", "DELETE"}


@pytest.mark.parametrize("name", ["cli.md", "configuration.md"])
def test_generated_reference_is_current(name: str) -> None:
    path = DOCS / name
    committed = path.read_text(encoding="utf-8")
    fresh = docgen.rendered()[path]
    if fresh != committed:
        diff = "".join(
            list(difflib.unified_diff(committed.splitlines(True), fresh.splitlines(True), "committed", "fresh"))[:60]
        )
        pytest.fail(
            f"docs/{name} is stale: the code's --help or fields changed. Regenerate it with `{docgen.REGENERATE}` "
            f"(or `.venv/bin/python -m tests.docgen`) and commit the result.\n{diff}"
        )


def test_fill_replaces_stale_blocks_and_appends_missing_ones() -> None:
    text = "# T\n\nprose\n\n<!-- generated: a -->\nold\n<!-- end generated: a -->\n\nmore prose\n"
    filled = docgen.fill(text, {"a": ("A", "new\n"), "b": ("B title", "bee\n")}, "t.md")
    assert filled == (
        "# T\n\nprose\n\n<!-- generated: a -->\nnew\n<!-- end generated: a -->\n\nmore prose\n"
        "\n## B title\n\n<!-- generated: b -->\nbee\n<!-- end generated: b -->\n"
    )
    with pytest.raises(SystemExit, match="the block 'a' matches nothing"):
        docgen.fill(text, {}, "t.md")


def test_cli_reference_covers_every_command() -> None:
    text = (DOCS / "cli.md").read_text(encoding="utf-8")
    for path in docgen.commands():
        assert f"<!-- generated: {' '.join(path)} --help -->" in text
    assert "Usage: proxy serve [OPTIONS]" in text


def documented_help(text: str, command: str) -> str:
    match = re.search(rf"<!-- generated: {command} --help -->\n```text\n(.*?)```\n", text, re.DOTALL)
    assert match, f"docs/cli.md has no generated block for {command} --help"
    return match.group(1)


@pytest.mark.parametrize("command", ["proxy serve", "proxy cassettes prune"])
def test_cli_reference_is_what_the_installed_command_prints(command: str) -> None:
    """The reference shows exactly what `proxy … --help` prints on a terminal (wider than click's 80 columns),
    `[default: …]` parts included: a help built by hand from the command object skips the group's
    `show_default` and documents options as having no default."""
    env = {**os.environ, "COLUMNS": docgen.HELP_COLUMNS}
    proxy = Path(sys.executable).parent / "proxy"
    printed = subprocess.run(
        [str(proxy), *command.split()[1:], "--help"], capture_output=True, text=True, timeout=60, env=env, check=True
    ).stdout
    documented = documented_help((DOCS / "cli.md").read_text(encoding="utf-8"), command)
    assert documented == printed
    assert "[default: " in documented


def documented_routes() -> set[tuple[str, str]]:
    text = (DOCS / "http-api.md").read_text(encoding="utf-8")
    return set(re.findall(r"^### (GET|POST|PUT|PATCH|DELETE|ANY) (/\S*)$", text, re.MULTILINE))


def served_routes() -> set[tuple[str, str]]:
    served = set()
    for route in all_routes():
        assert isinstance(route, Route)
        path = re.sub(r"\{(\w+):\w+\}", r"{\1}", route.path)
        methods = (route.methods or set()) - {"HEAD"}
        if methods >= ANY_METHODS:
            served.add(("ANY", path))
        else:
            served |= {(method, path) for method in methods}
    return served


def test_every_route_is_in_the_http_reference_and_nothing_else() -> None:
    documented, served = documented_routes(), served_routes()
    missing = sorted(f"{m} {p}" for m, p in served - documented)
    gone = sorted(f"{m} {p}" for m, p in documented - served)
    assert not missing, f"docs/http-api.md has no '### METHOD /path' section for: {', '.join(missing)}"
    assert not gone, f"docs/http-api.md documents routes the server does not serve: {', '.join(gone)}"


def http_api_section(title: str) -> str:
    text = (DOCS / "http-api.md").read_text(encoding="utf-8")
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.MULTILINE | re.DOTALL)
    assert match, f"docs/http-api.md has no section '## {title}'"
    return match.group(1)


def id_shape(value: str) -> str:
    """An id with its random part as `h`s: `ec_2c16…` and `ec_9f01…` have one shape, `conn_3f…` another."""
    return re.sub(r"[0-9a-f]", "h", value)


def test_the_documented_connection_object_has_exactly_the_fields_the_server_answers(api: httpx.Client) -> None:
    """A client written from the reference would not know the fields the server sends and it leaves out
    (`traceparent`, `faults`, `responseMode`, `streamTextPath`…), nor recognise the ids it makes: the documented
    object's keys are a real answer's, and its id has the real id's shape."""
    created = post(api, "/endpointConnections", chat_connection("http://127.0.0.1:9"))
    answer = api.get(f"/endpointConnections/{created['id']}").json()
    (example, *_) = re.findall(r"```json\n(.*?)```", http_api_section("Endpoint connections"), re.DOTALL)
    documented = json.loads(example)
    assert sorted(documented) == sorted(answer), (
        f"documented but not answered: {sorted(set(documented) - set(answer))}; "
        f"answered but not documented: {sorted(set(answer) - set(documented))}"
    )
    assert id_shape(documented["id"]) == id_shape(answer["id"])


def test_connection_ids_in_the_http_reference_are_the_ids_the_server_makes(api: httpx.Client) -> None:
    """An example id the server never makes (`conn_3f…` where it answers `ec_…`) sends a reader looking for the
    wrong thing: every connection id the reference shows starts as the real answers' do."""
    created = post(api, "/endpointConnections", chat_connection("http://127.0.0.1:9"))
    faults = api.put("/_proxy/faults/chat", json={"faults": [{"status": 429, "times": 1}]})
    assert faults.status_code == 200 and faults.json()["connection"] == created["id"]
    prefix = created["id"].split("_")[0] + "_"
    text = (DOCS / "http-api.md").read_text(encoding="utf-8")
    shown = re.findall(r'"connection": "([^"]*)"', text) + re.findall(
        r'"id": "([a-z]+_[^"]*)"', http_api_section("Endpoint connections")
    )
    assert shown, "the reference shows no connection id: this test checks nothing"
    assert [value for value in shown if not value.startswith(prefix)] == []


def anchors(path: Path) -> set[str]:
    """GitHub's heading anchors: lower-case, punctuation dropped, spaces made hyphens."""
    headings = re.findall(r"^#+ (.+)$", path.read_text(encoding="utf-8"), re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


@pytest.mark.parametrize("doc", ["README.md", *sorted(f"docs/{p.name}" for p in DOCS.glob("*.md"))])
def test_links_stay_inside_the_repository(doc: str) -> None:
    path = ROOT / doc
    text = re.sub(r"```.*?```", "", path.read_text(encoding="utf-8"), flags=re.DOTALL)
    links = re.findall(r"\]\(([^)\s]+)\)", text) + re.findall(r"<([a-z][a-z0-9+.-]*:[^>\s]+)>", text)
    for link in links:
        assert not re.match(r"[a-z][a-z0-9+.-]*:", link), f"{doc} links outside the repository: {link}"
        target, _, anchor = link.partition("#")
        resolved = (path.parent / target).resolve() if target else path
        assert resolved.is_relative_to(ROOT) and resolved.exists(), f"{doc}: {link} is not a file of the repository"
        if anchor:
            assert anchor in anchors(resolved), f"{doc}: {link}: no heading '{anchor}' in {resolved.name}"


def test_the_plain_vcrpy_example_replays_a_shipped_cassette() -> None:
    text = (DOCS / "cassettes.md").read_text(encoding="utf-8")
    (example,) = [block for block in re.findall(r"```python\n(.*?)```", text, re.DOTALL) if "use_cassette" in block]
    result = subprocess.run(
        [sys.executable, "-c", example], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "You said: Hello! What can you do?"
