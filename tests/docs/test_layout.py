"""The tree, the README's "Layout" and docs/architecture.md agree, and the code keeps the layers the architecture
page ranks: no import runs from a package to a higher-ranked one, no two packages import each other, and no
module imports another that (directly or not) imports it back as it loads."""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

import proxy

PACKAGE = Path(proxy.__file__).parent
ROOT = PACKAGE.parent
ARCHITECTURE = ROOT / "docs" / "architecture.md"
README = ROOT / "README.md"


def actual_tree() -> dict[str, set[str]]:
    """Package path relative to proxy/ ("" for the root, "engine/transports") → its module file names."""
    tree: dict[str, set[str]] = {}
    for init in PACKAGE.rglob("__init__.py"):
        folder = init.parent
        tree[folder.relative_to(PACKAGE).as_posix().replace(".", "")] = {p.name for p in folder.glob("*.py")}
    return tree


def readme_tree() -> dict[str, set[str]]:
    """The packages and modules the README's Layout block names under `proxy/`."""
    section = README.read_text(encoding="utf-8").split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    block = section.split("```\n", 2)[1]
    named: dict[str, set[str]] = defaultdict(set)
    current = None
    for line in block.splitlines():
        if line == "proxy/":
            current = ""
            continue
        if current is None:
            continue
        if not line.startswith(" "):
            break  # tests/, docs/: past the package
        heading = re.match(r"  ([\w/]+)/(?:\s|$)", line)
        if heading:
            current = heading.group(1)
            named[current]
            line = line[heading.end() :]
        elif re.match(r"  \S", line):
            current = ""
        named[current].update(re.findall(r"(?<![\w/.])(\w+\.py)\b", line.split("#")[0]))
    return dict(named)


def architecture_ranks() -> dict[str, int]:
    """Each top-level package (`config`) or root module (`errors.py`) → its rank in the architecture table."""
    ranks = {}
    for rank, cell in re.findall(r"^\| (\d+) \| ([^|]+) \|", ARCHITECTURE.read_text(encoding="utf-8"), re.MULTILINE):
        for name in re.findall(r"`([\w.]+)/?`", cell):
            ranks[name] = int(rank)
    return ranks


def unit_of(module: str) -> str:
    """proxy.engine.transports.client → engine; proxy.errors → errors.py; proxy → __init__.py."""
    parts = module.split(".")
    if len(parts) == 1:
        return "__init__.py"
    return parts[1] if (PACKAGE / parts[1]).is_dir() else f"{parts[1]}.py"


def imports_of(path: Path, *, loading_only: bool = False) -> set[str]:
    """The proxy modules a file imports (`from proxy.x import name` counts proxy.x.name when that is a module).
    loading_only: only the imports that run as the module loads (not in functions, not for type checking)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes: list[ast.AST] = list(tree.body) if loading_only else list(ast.walk(tree))
    found = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "proxy":
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                is_module = (PACKAGE.parent / (full.replace(".", "/") + ".py")).exists()
                is_package = (PACKAGE.parent / full.replace(".", "/")).is_dir()
                found.add(full if is_module or is_package else node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "proxy")
    return found


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected parts of more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            part = []
            while True:
                top = stack.pop()
                part.append(top)
                if top == node:
                    break
            if len(part) > 1:
                found.append(sorted(part))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_readme_layout_names_every_package_and_module_and_nothing_that_is_not_there() -> None:
    actual, named = actual_tree(), readme_tree()
    assert sorted(set(actual) - set(named)) == [], "packages missing from the README's Layout"
    assert sorted(set(named) - set(actual)) == [], "the README's Layout names packages that do not exist"
    for package, modules in actual.items():
        shown = package or "proxy/ itself"
        assert sorted(modules - named[package] - {"__init__.py"}) == [], f"{shown}: modules the Layout does not name"
        assert sorted(named[package] - modules) == [], f"{shown}: the Layout names modules that do not exist"


def test_the_architecture_ranks_every_top_level_package_and_module_and_names_only_what_exists() -> None:
    ranks = architecture_ranks()
    top = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()} | {p.name for p in PACKAGE.glob("*.py")}
    assert sorted(top - set(ranks)) == [], "not in the architecture's table"
    assert sorted(set(ranks) - top) == [], "the architecture's table names what does not exist"
    text = ARCHITECTURE.read_text(encoding="utf-8")
    paths = {p for p in re.findall(r"`([\w/]+(?:\.py|/))`", text) if "/" in p or p.endswith(".py")}
    assert paths, "the page names no path: the check below would check nothing"
    missing = [p for p in paths if not (ROOT / p if p.startswith(("proxy/", "tests/")) else PACKAGE / p).exists()]
    assert sorted(missing) == [], "docs/architecture.md names paths that do not exist"


def test_no_module_imports_from_a_higher_ranked_package_and_no_two_packages_import_each_other() -> None:
    ranks = architecture_ranks()
    upward = []
    graph: dict[str, set[str]] = defaultdict(set)
    for path in sorted(PACKAGE.rglob("*.py")):
        source = module_name(path)
        for target in imports_of(path):
            here, there = unit_of(source), unit_of(target)
            if here == there:
                continue
            graph[here].add(there)
            if ranks[there] > ranks[here]:
                upward.append(f"{source} ({here}, rank {ranks[here]}) imports {target} ({there}, rank {ranks[there]})")
    assert upward == []
    assert cycles(graph) == []


def test_no_module_imports_itself_back_as_it_loads() -> None:
    graph = {module_name(p): imports_of(p, loading_only=True) for p in PACKAGE.rglob("*.py")}
    assert cycles({m: {t for t in targets if t in graph and t != m} for m, targets in graph.items()}) == []


def test_the_checks_above_see_a_violation() -> None:
    """The parsers are not vacuous: the README names the engine's call and the table ranks config below cli."""
    assert "call.py" in readme_tree()["engine"]
    ranks = architecture_ranks()
    assert ranks["config"] < ranks["server"] < ranks["cli"]
    assert cycles({"a": {"b"}, "b": {"a"}}) == [["a", "b"]]
