"""What the pytest plugin tells about a suite's cassettes: recordings a test no longer plays, and test folders no
collected test maps to (orphans), kept in `cassette-orphans.json` beside the usage record so that
`proxy cassettes prune --orphans` acts on what the last whole run found, never on a guess."""

from __future__ import annotations

from pathlib import Path

from proxy.cassettes.cassette import load_interactions
from proxy.cassettes.inventory import cassette_files, name_of
from proxy.cassettes.library import CassetteLibrary
from proxy.cassettes.usage import read_record, update_record

ORPHANS_FILE_NAME = "cassette-orphans.json"
KINDS = ("connections", "connectors", "sessions")  # the folders a test folder holds its cassettes in


def unplayed_recordings(library: CassetteLibrary, scope: str) -> list[tuple[str, int, int]]:
    """The cassettes of a test's folder with recordings it did not play this run: those it loaded, and those it
    never opened at all (every recording unplayed). (name, unplayed, interactions)."""
    found = library.unplayed(scope)
    folder = library.root / scope
    for path in cassette_files(folder) if folder.is_dir() else []:
        name = name_of(library.root, path)
        if library.loaded(name) or test_folder_of(name) != scope:
            continue
        try:
            count = len(load_interactions(path, library.cache))
        except ValueError:
            continue  # unreadable: its own error shows when a test opens it
        if count:
            found.append((name, count, count))
    return found


def test_folder_of(cassette: str) -> str | None:
    """`a/b/test_x/connections/chat` → `a/b/test_x`; None for a cassette directly in the folder's kinds."""
    parts = cassette.split("/")
    if len(parts) < 3 or parts[-2] not in KINDS:
        return None
    return "/".join(parts[:-2])


def orphans(root: Path, mapped: set[str], modules: set[str], rootdir: Path) -> list[str]:
    """The test folders under `root` that no collected test maps to: under a module that was collected (or whose
    file is gone), a folder no test of it names. Folders of modules this run did not collect are left alone."""
    found = set()
    for path in cassette_files(root) if root.is_dir() else []:
        folder = test_folder_of(name_of(root, path))
        if folder is None or folder in mapped or "/" not in folder:
            continue
        module = folder.rsplit("/", 1)[0]
        if module in modules or not _module_exists(rootdir, module):
            found.add(folder)
    return sorted(found)


def _module_exists(rootdir: Path, module: str) -> bool:
    return (rootdir / f"{module}.py").exists() or (rootdir / module).is_dir()


def orphans_file(folder: Path) -> Path:
    return folder / ORPHANS_FILE_NAME


def write_orphans(path: Path, root: Path, found: list[str]) -> None:
    """Record what a whole run found for the cassette folder `root` (replacing that folder's earlier record)."""
    update_record(path, lambda record: {**record, str(root.resolve()): found})


def read_orphans_file(path: Path) -> dict[str, list[str]]:
    data = read_record(path)
    return {str(k): [str(f) for f in v] for k, v in data.items() if isinstance(v, list)}


def orphans_of(data_dir: Path, root: Path) -> list[str] | None:
    """The orphans the last whole test run recorded for `root`; None when no run recorded any for it."""
    return read_orphans_file(orphans_file(data_dir)).get(str(root.resolve()))
