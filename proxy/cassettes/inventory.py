"""The cassette folder as a user sees it: list, show, verify (parses, loads in vcrpy, holds no secret; nor does
the parse cache in the data dir)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from vcr.serialize import deserialize
from vcr.serializers import yamlserializer

from proxy.cassettes.cassette import Interaction, load_interactions
from proxy.cassettes.parse_cache import ParseCache, interactions_from_cache
from proxy.cassettes.record_replay import ALWAYS_MASKED
from proxy.config.expiry import parse_time
from proxy.config.settings import MASK
from proxy.security.head_masking import header_renames
from proxy.security.redaction import Redactor
from proxy.security.url_secrets import unmasked_credentials

# Shapes of credentials worth flagging even when this server never saw them.
SECRET_SHAPES = re.compile(
    r"Bearer\s+(?!•)[A-Za-z0-9\-._~+/]{12,}=*|Basic\s+(?!•)[A-Za-z0-9+/]{12,}=*|\bsk-[A-Za-z0-9_-]{16,}"
    r"|\bghp_[A-Za-z0-9]{20,}|\bxox[abprs]-[A-Za-z0-9-]{10,}|\bAKIA[0-9A-Z]{16}\b"
)


@dataclass
class Entry:
    name: str
    path: Path
    interactions: int | None
    error: str | None = None


def cassette_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.yaml") if not p.name.startswith("."))


def name_of(root: Path, path: Path) -> str:
    return str(path.relative_to(root).with_suffix(""))


def inventory(root: Path) -> list[Entry]:
    entries = []
    for path in cassette_files(root):
        try:
            entries.append(Entry(name_of(root, path), path, len(load_interactions(path))))
        except ValueError as exc:
            entries.append(Entry(name_of(root, path), path, None, str(exc)))
    return entries


def find(root: Path, name: str) -> Path | None:
    for candidate in (root / f"{name}.yaml", root / name, Path(name)):
        if candidate.is_file():
            return candidate
    matches = [p for p in cassette_files(root) if p.stem == name]
    return matches[0] if len(matches) == 1 else None


def show(path: Path) -> list[str]:
    lines = []
    for number, item in enumerate(load_interactions(path)):
        request, response = item.request, item.response
        status = response["status"]
        latency = item.proxy.get("latency_ms")
        lines.append(
            f"#{number}  {request['method']} {request['uri']}  →  {status['code']} {status.get('message') or ''}"
            + (f"  ({latency} ms)" if latency is not None else "")
        )
        for label, body in (("request", request.get("body")), ("response", response["body"]["string"])):
            lines.append(f"  {label}:")
            lines += [f"    {line}" for line in _pretty(body)]
    return lines


def _pretty(body: object) -> list[str]:
    if not body:
        return ["(empty)"]
    text = body.decode("utf-8", errors="replace") if isinstance(body, bytes) else str(body)
    try:
        return json.dumps(json.loads(text), indent=2, ensure_ascii=False).splitlines()
    except ValueError:
        return text.splitlines()


def verify(root: Path, redactor: Redactor, cache: ParseCache | None = None) -> tuple[list[Entry], list[str]]:
    """Every cassette: parses, loads in vcrpy's own loader, holds no credential — none of `redactor`'s
    secrets in any encoding it knows, nothing shaped like a well-known token; and every entry of `cache` (the
    data dir's copies of cassettes, whichever folder they came from) holds none either. Returns (entries,
    problems)."""
    return verify_files(root, cassette_files(root), redactor, cache)


def verify_files(
    root: Path, paths: list[Path], redactor: Redactor, cache: ParseCache | None = None
) -> tuple[list[Entry], list[str]]:
    """`verify` of the cassettes at `paths` under `root` (what `proxy cassettes import` wrote)."""
    problems: list[str] = []
    entries = []
    for path in paths:
        name = name_of(root, path)
        try:
            interactions = load_interactions(path)
        except ValueError as exc:
            entries.append(Entry(name, path, None, str(exc)))
            problems.append(f"{name}: {exc}")
            continue
        entries.append(Entry(name, path, len(interactions)))
        try:
            deserialize(path.read_text(encoding="utf-8"), yamlserializer)
        except Exception as exc:  # vcrpy raises several kinds; any of them means plain vcrpy cannot load it
            problems.append(f"{name}: vcrpy cannot load it: {exc}")
        for number, interaction in enumerate(interactions):
            problems += [f"{name} #{number}: {p}" for p in _secrets_in(interaction, redactor)]
    if cache is not None:
        problems += _cache_problems(cache, redactor)
    return entries, problems


def _cache_problems(cache: ParseCache, redactor: Redactor) -> list[str]:
    """Each parse-cache entry is a cassette's content too, kept after the cassette changed or went."""
    problems = []
    for path in sorted(cache.folder.glob("*.json")) if cache.folder.is_dir() else []:
        name = f"parse cache {path.name}"
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            problems.append(f"{name}: cannot be read ({exc.strerror})")
            continue
        try:
            interactions = interactions_from_cache(text)
        except (ValueError, KeyError, TypeError, AttributeError):  # not an entry: its text is looked through whole
            if _holds_secret(text, redactor):
                problems.append(f"{name}: holds a credential (delete it: the cache is rebuilt)")
            continue
        for number, interaction in enumerate(interactions):
            problems += [f"{name} #{number}: {p}" for p in _secrets_in(interaction, redactor)]
    return problems


def _holds_secret(text: str, redactor: Redactor) -> bool:
    return redactor.contains_secret(text) or SECRET_SHAPES.search(text) is not None


def _secrets_in(interaction: Interaction, redactor: Redactor) -> list[str]:
    found = []
    reason = interaction.response["status"].get("message")
    if reason and _holds_secret(str(reason), redactor):
        found.append("response status line holds a credential")
    for side, headers in (("request", interaction.request["headers"]), ("response", interaction.response["headers"])):
        renames = header_renames(headers, redactor)  # a name that holds a secret is reported masked
        for name, values in headers.items():
            shown = SECRET_SHAPES.sub(lambda match: f"{match.group(0)[:12]}…", renames.get(name.lower(), name))
            if shown != name:
                found.append(f"{side} header name {shown} holds a credential")
            for value in values if isinstance(values, list) else [values]:
                if name.lower() in ALWAYS_MASKED and value != MASK:
                    found.append(f"{side} header {shown} is not masked")
                elif _holds_secret(str(value), redactor):
                    found.append(f"{side} header {shown} holds a credential")
    for side, body in (
        ("request", interaction.request.get("body")),
        ("response", interaction.response["body"]["string"]),
    ):
        body = body if isinstance(body, bytes) else str(body or "")
        if redactor.contains_secret(body):
            found.append(f"{side} body holds a credential this server knows")
        elif match := SECRET_SHAPES.search(body.decode("utf-8", "replace") if isinstance(body, bytes) else body):
            found.append(f"{side} body holds something shaped like a credential ({match.group(0)[:12]}…)")
    uri = str(interaction.request["uri"])
    if redactor.contains_secret(uri) or SECRET_SHAPES.search(uri):
        found.append("request URL holds a credential")
    found += [f"request URL query parameter {param} is not masked" for param in unmasked_credentials(uri)]
    return found


def written_by_proxy(path: Path) -> bool:
    """Whether a cassette is one this tool wrote (or imported): its interactions carry the `proxy` section. An
    unreadable one counts as ours, so it is listed, never silently kept."""
    try:
        interactions = load_interactions(path)
    except ValueError:
        return True
    return not interactions or any(interaction.proxy.get("id") for interaction in interactions)


@dataclass
class Unused:
    name: str
    path: Path
    last_use: str  # "never used", or "last used <time> by <session|connection|connector> <key>"


def unused(root: Path, usage: dict[str, tuple[str, str]], since: datetime) -> tuple[list[Unused], int]:
    """The cassettes under `root` not used since `since` (by `usage`, keyed by absolute file path), and how
    many cassettes there are."""
    files = cassette_files(root)
    found = []
    for path in files:
        used = usage.get(str(path.resolve()))
        when = parse_time(used[0]) if used else None
        if (used is None or when is None) and not written_by_proxy(path):
            continue  # another tool's (pytest-recording keeps its files in the same `cassettes/`): not ours to judge
        if used is None or when is None:
            found.append(Unused(name_of(root, path), path, "never used"))
        elif when < since:
            found.append(Unused(name_of(root, path), path, f"last used {used[0]} by {used[1]}"))
    return found, len(files)
