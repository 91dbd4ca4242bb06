"""The layering: record/replay stays below the transport seam, and a Runtime leaves its host process alone."""

from __future__ import annotations

import ast
import gc
from pathlib import Path

import proxy
from proxy.config.settings import Settings
from proxy.server.runtime import Runtime

PACKAGE = Path(proxy.__file__).parent
CASSETTE_MODULES = {
    "proxy.cassettes.cassette",
    "proxy.cassettes.handles",
    "proxy.cassettes.files",
    "proxy.cassettes.parse_cache",
    "proxy.cassettes.library",
    "proxy.cassettes.record_replay",
}


def imported(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def test_the_engine_and_the_api_import_no_cassette_code() -> None:
    for path in [PACKAGE / "engine" / "call.py", *sorted((PACKAGE / "server" / "api").glob("*.py"))]:
        assert not imported(path) & CASSETTE_MODULES, f"{path.name} imports cassette code"


def test_the_api_package_holds_no_upstream() -> None:
    """The demo upstream is a transport: runtime wires it in without importing the API."""
    assert "proxy.server.api" not in {name.rsplit(".", 1)[0] for name in imported(PACKAGE / "server" / "runtime.py")}
    assert not (PACKAGE / "server" / "api" / "demo.py").exists()


async def test_a_runtime_leaves_the_collector_of_its_process_alone(tmp_path: Path) -> None:
    before, frozen = gc.get_threshold(), gc.get_freeze_count()
    gc.set_threshold(700, 10, 10)
    try:
        runtime = Runtime(Settings(data_dir=tmp_path / "data", cassettes_dir=tmp_path / "cassettes"))
        await runtime.start()
        await runtime.close()
        assert gc.get_threshold() == (700, 10, 10) and gc.get_freeze_count() == frozen
    finally:
        gc.set_threshold(*before)
