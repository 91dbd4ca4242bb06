"""`proxy cassettes import`: cassettes written by vcrpy or pytest-recording, brought into this tool's layout.

Each interaction is imported for one connection, so that `/forward/<connection>/…` replays it: the one named with
`--connection`, else the only known connection whose URL has the recorded request's origin. An interaction on any
other origin is skipped, never written: a cassette must not send or match anywhere its connection does not go.
Its URL is rewritten with the connection's origin exactly as the forward route writes it (default port left out,
no user info, no fragment), so a replay matches.

Secrets are masked (`••••••••`) before anything is written: credential headers (the ones a recording always masks,
and any secret-looking one) in the request and the answer, credential-named query values, every secret the config
file and data dir hold, the credentials the imported cassettes themselves carry wherever they appear again (an
answer that echoes a token, in any encoding the redactor knows), and anything shaped like a well-known token.

Answers are stored as this tool stores them: a body vcrpy kept compressed (`content-encoding: gzip`, deflate) is
decoded, within the cap a live answer has, and wire headers are dropped. Files are read as any cassette from
outside is (`load_interactions`: bounded and validated); vcrpy's JSON serializer's `.json` files are read too.
An imported interaction's id is made from its content, so importing the same file again adds nothing.

Layout: a file goes to `connections/<connection>.yaml`; a folder's files `<module>/<test>.yaml` (pytest-recording's
layout) go to `<module>/<test>/connections/<connection>.yaml`, the per-test folder the pytest plugin replays from.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx

from proxy.cassettes.cassette import (
    Interaction,
    identities,
    identity,
    load_interactions,
    make_interaction,
)
from proxy.cassettes.files import update_cassette
from proxy.cassettes.import_masking import (
    body_places,
    carried_credentials,
    masked_body,
    masked_headers,
    masked_text,
    masked_url,
)
from proxy.cassettes.import_reading import (
    Skipped,
    Source,
    as_bytes,
    cassette_files,
    content_encodings,
    decoded_body,
    no_cassettes,
    read_cassette,
    with_origin,
)
from proxy.cassettes.names import file_name
from proxy.cassettes.words import counted
from proxy.security.origins import Origin, fixed_origin, url_origin
from proxy.security.redaction import Redactor

_REDACTOR_OWNER = ("imported cassettes", "credentials they carry")


# -- what was imported, and where --------------------------------------------------------------------


@dataclass
class Written:
    name: str  # the cassette, as `proxy cassettes list` names it
    path: Path
    interactions: list[Interaction] = field(default_factory=list)
    masked: list[str] = field(default_factory=list)  # where secrets were, in order, each once
    added: int = 0


@dataclass
class FileResult:
    source: Source
    written: list[Written] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    error: str | None = None
    empty: bool = False

    @property
    def complete(self) -> bool:
        """Every interaction of the file was imported."""
        return self.error is None and not self.skipped

    def lines(self) -> list[str]:
        if self.error is not None:
            return [f"FAILED   {self.source.shown}: {self.error}"]
        lines = [f"imported {self.source.shown}: it holds no interactions"] if self.empty else []
        for written in self.written:
            count = counted(len(written.interactions), "interaction")
            masked = f"secrets masked: {', '.join(written.masked)}" if written.masked else "no secret found"
            lines.append(f"imported {self.source.shown} → {written.name} ({count}, {written.added} added; {masked})")
        lines += [f"SKIPPED  {self.source.shown} {why}" for why in self.skipped]
        return lines


def sources(paths: Iterable[Path], root: Path) -> tuple[list[Source], list[FileResult]]:
    """The files to import (a folder's, with the per-test folder each goes to), and the paths that cannot be
    imported at all. Nothing inside the cassettes folder is imported into it again."""
    found: list[Source] = []
    refused: list[FileResult] = []
    inside_root = root.resolve()
    for path in paths:
        if path.is_dir():
            files = cassette_files(path)
            if not files:
                refused.append(FileResult(Source(path, str(path), None), error=no_cassettes(path)))
            for file in files:
                relative = file.relative_to(path)
                scope = "/".join(file_name(part) for part in relative.with_suffix("").parts)
                found.append(Source(file, str(file), scope))
        elif path.is_file():
            found.append(Source(path, str(path), None))
        else:
            refused.append(FileResult(Source(path, str(path), None), error="no such file or folder"))
    kept = []
    for source in found:
        if source.path.resolve().is_relative_to(inside_root):
            why = f"it is inside the cassettes folder it would be imported into ({root})"
            refused.append(FileResult(source, error=why))
        else:
            kept.append(source)
    return kept, refused


# -- which connection an interaction is for ----------------------------------------------------------


class Connections:
    """The connections interactions may be imported for: `chosen` (`--connection`), else the one on their origin."""

    def __init__(self, urls: dict[str, str], chosen: str | None) -> None:
        self.origins = {name: fixed_origin(url) for name, url in urls.items()}
        self.chosen = chosen

    def origin(self, name: str) -> Origin:
        origin = self.origins[name]
        assert origin is not None  # only a connection with a fixed origin is ever chosen
        return origin

    def owner(self, origin: Origin) -> str:
        """The connection an interaction on `origin` is imported for; raises Skipped saying why there is none."""
        if self.chosen is not None:
            own = self.origin(self.chosen)
            if origin != own:
                raise Skipped(
                    f"its origin {origin.base_url()} is not connection {self.chosen}'s ({own.base_url()}); "
                    "not imported, so it is never sent or matched there"
                )
            return self.chosen
        names = sorted(name for name, known in self.origins.items() if known == origin)
        if not names:
            raise Skipped(f"no connection sends its calls to {origin.base_url()}; add one, or give --connection NAME")
        if len(names) > 1:
            raise Skipped(
                f"connections {', '.join(names)} all send their calls to {origin.base_url()}; give --connection NAME"
            )
        return names[0]


# -- one interaction ---------------------------------------------------------------------------------


def imported_interaction(
    item: Interaction, connections: Connections, redactor: Redactor
) -> tuple[str, Interaction, list[str]]:
    """(connection, the interaction as this tool stores it, where secrets were masked). Raises Skipped."""
    uri = str(item.request["uri"])
    try:
        origin = url_origin(httpx.URL(uri))
    except (httpx.InvalidURL, ValueError):
        origin = None
    if origin is None:
        raise Skipped("its URL names no host the forward route could call")
    connection = connections.owner(origin)
    uri, places = with_origin(uri, connections.origin(connection))
    uri, url_places = masked_url(uri, redactor)
    request_headers, request_places = masked_headers(item.request.get("headers"), "request", redactor)
    request_body = as_bytes(item.request.get("body"))
    masked_request_body = masked_body(request_body, redactor)
    response = item.response
    content = decoded_body(as_bytes(response["body"].get("string")), content_encodings(response.get("headers")))
    response_headers, response_places = masked_headers(response.get("headers"), "response", redactor)
    masked_content = masked_body(content, redactor)
    places += [
        *url_places,
        *request_places,
        *body_places("request", request_body, masked_request_body),
        *response_places,
        *body_places("response", content, masked_content),
    ]
    joined: dict[str, list[str]] = {}
    for name, value in request_headers:
        joined.setdefault(name, []).append(value)
    interaction = make_interaction(
        str(item.request["method"]).upper(),
        uri,
        masked_request_body,
        {name: ", ".join(values) for name, values in joined.items()},
        int(response["status"]["code"]),
        str(response["status"].get("message") or ""),
        response_headers,
        masked_content,
        {},
    )
    return connection, interaction, places


# -- a whole file ------------------------------------------------------------------------------------


def import_file(
    source: Source, interactions: list[Interaction], connections: Connections, redactor: Redactor, root: Path
) -> FileResult:
    """The file's interactions written, masked, into their connections' cassettes under `root`, each once."""
    result = FileResult(source, empty=not interactions)
    recorded_at = _recorded_at(source.path)
    by_name: dict[str, Written] = {}
    repeats: Counter[str] = Counter()  # an exchange recorded twice in one file stays two
    for number, item in enumerate(interactions):
        try:
            connection, interaction, places = imported_interaction(item, connections, redactor)
        except Skipped as exc:
            result.skipped.append(_skipped(number, item, str(exc), redactor))
            continue
        except (KeyError, TypeError, ValueError, AttributeError) as exc:  # a field of the wrong shape
            result.skipped.append(_skipped(number, item, f"it is malformed ({type(exc).__name__}: {exc})", redactor))
            continue
        content = identity(interaction).removeprefix("sha256:")  # no id yet: its content
        repeats[content] += 1
        interaction.proxy.update(
            id=f"imported-{content[:32]}-{repeats[content]}",
            recorded_at=recorded_at,
            session_key=connection,
            imported_from=source.shown,
        )
        name = source.cassette_name(connection)
        written = by_name.setdefault(name, Written(name, root / f"{name}.yaml"))
        written.interactions.append(interaction)
        written.masked += [place for place in places if place not in written.masked]
    for written in by_name.values():
        try:
            written.added = _write(written.path, written.interactions)
        except (ValueError, OSError) as exc:
            result.error = f"cannot write {written.name}: {exc}"
            return result
        result.written.append(written)
    return result


def _skipped(number: int, item: Interaction, why: str, redactor: Redactor) -> str:
    shown, _ = masked_url(str(item.request.get("uri", "")), redactor)
    return f"#{number} {item.request.get('method', '?')} {shown}: {masked_text(why, redactor)}"


def _recorded_at(path: Path) -> str | None:
    """When the file was last written, the best guess at when vcrpy recorded it (vcrpy keeps no time)."""
    try:
        when = datetime.fromtimestamp(path.stat().st_mtime, UTC)
    except OSError:
        return None
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _write(path: Path, interactions: list[Interaction]) -> int:
    """Append what the cassette does not hold yet, under its lock and merged with what is on disk: how many."""
    if path.exists():
        held = identities(load_interactions(path))
        if all(identity(item) in held for item in interactions):
            return 0  # nothing new: the file is left as it is
    added = 0

    def change(on_disk: list[Interaction]) -> list[Interaction]:
        nonlocal added
        held = identities(on_disk)
        fresh = [item for item in interactions if identity(item) not in held]
        added = len(fresh)
        return on_disk + fresh

    update_cassette(path, change)
    return added


def import_cassettes(
    paths: Iterable[Path], root: Path, connections: Connections, redactor: Redactor
) -> list[FileResult]:
    """Import every cassette under `paths` into `root`. First every readable file's carried credentials are made
    known to `redactor`, so a token one test sent is masked wherever any imported answer echoes it."""
    found, results = sources(paths, root)
    readable: list[Source] = []
    carried: set[str] = set()
    for source in found:
        try:
            carried |= carried_credentials(read_cassette(source.path))
            readable.append(source)
        except ValueError as exc:
            results.append(FileResult(source, error=str(exc)))
    redactor.register(_REDACTOR_OWNER, sorted(carried))
    for source in readable:
        try:
            interactions = read_cassette(source.path)  # read again: one file's interactions in memory at a time
        except ValueError as exc:
            results.append(FileResult(source, error=str(exc)))
            continue
        results.append(import_file(source, interactions, connections, redactor, root))
    return sorted(results, key=lambda result: result.source.shown)
