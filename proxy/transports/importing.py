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

import base64
import binascii
import re
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote_plus

import httpx
from vcr.serializers import yamlserializer

from proxy import jsonbounds
from proxy.auth import is_secret_header, secret_header_parts
from proxy.cassette_names import file_name
from proxy.origins import Origin, fixed_origin, url_origin
from proxy.redaction import Redactor
from proxy.settings import DEFAULT_IMPORT_MAX_FILE_BYTES, MASK, MAX_UPSTREAM_BODY_BYTES, MIN_SECRET_LEN
from proxy.transports.cassette import (
    Interaction,
    identities,
    identity,
    load_interactions,
    make_interaction,
    parse_interactions,
)
from proxy.transports.cassette_files import update_cassette
from proxy.transports.inventory import SECRET_SHAPES
from proxy.transports.record_replay import ALWAYS_MASKED
from proxy.url_secrets import is_credential_param
from proxy.words import counted

CASSETTE_SUFFIXES = (".yaml", ".yml", ".json")
GZIP_MAGIC = b"\x1f\x8b"
COOKIE_HEADERS = frozenset({"cookie", "set-cookie"})
_SCHEME_PREFIX = re.compile(r"(?:Bearer|Basic)\s+")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_UTF8_MASK_AS_LATIN1 = MASK.encode("utf-8").decode("latin-1")  # the mask in a body that is not UTF-8
_REDACTOR_OWNER = ("imported cassettes", "credentials they carry")


class Skipped(ValueError):
    """Why one interaction is not imported."""


# -- what to import, and where it goes ---------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    path: Path
    shown: str  # as the report names it
    scope: str | None  # the per-test folder it goes to (a folder's file); None: the cassettes folder itself

    def cassette_name(self, connection: str) -> str:
        name = f"connections/{file_name(connection)}"
        return f"{self.scope}/{name}" if self.scope else name


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
            files = _cassette_files(path)
            if not files:
                refused.append(FileResult(Source(path, str(path), None), error=_no_cassettes(path)))
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


def _cassette_files(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.rglob("*")
        if p.suffix.lower() in CASSETTE_SUFFIXES
        and p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def _no_cassettes(folder: Path) -> str:
    return f"the folder holds no {', '.join(CASSETTE_SUFFIXES)} file"


def read_cassette(path: Path) -> list[Interaction]:
    """A vcrpy cassette's interactions (YAML, or JSON from vcrpy's JSON serializer), read as any cassette from
    outside is. Raises ValueError saying why the file cannot be imported."""
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise ValueError(f"cassette {path} cannot be read: {exc}") from None
    if size > DEFAULT_IMPORT_MAX_FILE_BYTES:
        raise ValueError(
            f"cassette {path} is refused: it is larger than the {DEFAULT_IMPORT_MAX_FILE_BYTES} byte cap for an "
            "imported file (DEFAULT_IMPORT_MAX_FILE_BYTES)"
        )
    if path.suffix.lower() != ".json":
        return load_interactions(path)
    try:
        data = jsonbounds.loads(path.read_bytes())
    except OSError as exc:
        raise ValueError(f"cassette {path} cannot be read: {exc}") from None
    except ValueError as exc:
        raise ValueError(f"cassette {path} is not valid JSON: {exc}") from None
    # Through the YAML reader, so a JSON cassette is validated and bounded as a YAML one is.
    return parse_interactions(str(yamlserializer.serialize(data)), f"cassette {path}")


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


# -- the secrets an imported cassette carries --------------------------------------------------------


def carried_credentials(interactions: Iterable[Interaction]) -> set[str]:
    """The credentials the interactions carry, long enough to mask wherever else they appear: the request's credential
    headers (a Basic header's password and each cookie's value too), the answer's cookies, credential-named query
    values. An answer's other secret-looking headers (`x-ratelimit-limit-tokens`) are masked where they stand but
    carry no credential worth looking for elsewhere."""
    found: set[str] = set()
    for item in interactions:
        for name, value in _header_items(item.request.get("headers")):
            found.update(_header_credentials(name, value))
        for name, value in _header_items(item.response.get("headers")):
            if name.lower() in ALWAYS_MASKED:
                found.update(_header_credentials(name, value))
        uri = str(item.request.get("uri", ""))
        for _, value in _query_credentials(uri):
            found.update((value, unquote_plus(value)))  # as written, and as an upstream would echo it
        password = _user_info(uri).partition(":")[2]
        found.add(unquote_plus(password))
    return {value for value in found if len(value) >= MIN_SECRET_LEN and MASK not in value}


def _header_items(headers: Any) -> Iterator[tuple[str, str]]:
    if not isinstance(headers, dict):
        return
    for name, values in headers.items():
        for value in values if isinstance(values, list) else [values]:
            yield str(name), str(value)


def _is_credential_header(name: str, value: str) -> bool:
    return name.lower() in ALWAYS_MASKED or is_secret_header(name, value)


def _header_credentials(name: str, value: str) -> list[str]:
    if not _is_credential_header(name, value):
        return []
    found = [*secret_header_parts(name, value), value.strip()]
    if name.lower() in COOKIE_HEADERS:
        found += [part.partition("=")[2].strip() for part in value.split(";") if "=" in part]
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() == "basic":
        try:
            found.append(base64.b64decode(token.strip(), validate=True).decode("utf-8").partition(":")[2])
        except (binascii.Error, UnicodeDecodeError):
            pass
    return found


def _query_credentials(uri: str) -> list[tuple[str, str]]:
    """(parameter as written, value as written) of each credential-named query parameter with a value."""
    query = uri.partition("#")[0].partition("?")[2]
    pairs = [piece.partition("=") for piece in query.split("&")] if query else []
    return [(name, value) for name, equals, value in pairs if equals and value and is_credential_param(name)]


def _user_info(uri: str) -> str:
    scheme_end = uri.find("://")
    authority = uri[scheme_end + 3 : _authority_end(uri, scheme_end + 3)] if scheme_end >= 0 else ""
    return authority.rpartition("@")[0]


def _authority_end(uri: str, start: int) -> int:
    return min((i for i in (uri.find(c, start) for c in "/?#") if i >= 0), default=len(uri))


# -- masking -----------------------------------------------------------------------------------------


def _masked_shapes(text: str, mask: str = MASK) -> str:
    """Anything shaped like a well-known token, masked; a `Bearer`/`Basic` word before it is kept."""

    def masked(match: re.Match[str]) -> str:
        scheme = _SCHEME_PREFIX.match(match.group(0))
        return (scheme.group(0) if scheme else "") + mask

    return SECRET_SHAPES.sub(masked, text)


def _masked_text(text: str, redactor: Redactor) -> str:
    return _masked_shapes(redactor.redact(text))


def _masked_body(body: bytes, redactor: Redactor) -> bytes:
    masked = redactor.redact_bytes(body)
    try:
        return _masked_shapes(masked.decode("utf-8")).encode("utf-8")
    except UnicodeDecodeError:  # kept byte for byte, as the redactor keeps it, but for what is masked
        return _masked_shapes(masked.decode("latin-1"), _UTF8_MASK_AS_LATIN1).encode("latin-1")


def masked_url(uri: str, redactor: Redactor) -> tuple[str, list[str]]:
    """The URL with its secrets masked, and where they were (`url ?key`, `url`)."""
    head, question, rest = uri.partition("?")
    query, hash_sign, fragment = rest.partition("#")
    places = []
    if question:
        pieces = []
        for piece in query.split("&"):
            name, equals, value = piece.partition("=")
            if equals and value and is_credential_param(name) and MASK not in unquote_plus(value):
                pieces.append(f"{name}{equals}{MASK}")
                places.append(f"url ?{name}")
            else:
                pieces.append(piece)
        query = "&".join(pieces)
    joined = f"{head}{question}{query}{hash_sign}{fragment}"
    masked = _masked_text(joined, redactor)
    if masked != joined:
        places.append("url")
    return masked, places


def _with_origin(uri: str, origin: Origin) -> tuple[str, list[str]]:
    """The URL as the forward route writes it for a connection on `origin`: its origin's base URL, then the path
    and query as recorded (user info and fragment dropped: neither ever reaches an upstream from the route)."""
    start = uri.find("://") + 3
    end = _authority_end(uri, start)
    rest = uri[end:].partition("#")[0]
    if not rest.startswith("/"):
        rest = "/" + rest
    return origin.base_url() + rest, (["url user info"] if _user_info(uri) else [])


def _masked_headers(headers: Any, side: str, redactor: Redactor) -> tuple[list[tuple[str, str]], list[str]]:
    masked, places = [], []
    for name, value in _header_items(headers):
        lower = name.lower()
        shown = MASK if _is_credential_header(name, value) else _masked_text(value, redactor)
        if shown != value:
            places.append(f"{side} header {lower}")
        masked.append((lower, shown))
    return masked, places


def _body_places(side: str, before: bytes, after: bytes) -> list[str]:
    """Where a body changed: JSONPaths when it is JSON, else the body."""
    if before == after:
        return []
    try:
        paths = _changed_paths(jsonbounds.loads(before), jsonbounds.loads(after))
    except ValueError:
        paths = []
    return [f"{side} body {path}" for path in paths] or [f"{side} body"]


def _changed_paths(before: Any, after: Any, path: str = "$") -> list[str]:
    if isinstance(before, dict) and isinstance(after, dict) and list(before) == list(after):
        return [found for key in before for found in _changed_paths(before[key], after[key], _child(path, key))]
    if isinstance(before, list) and isinstance(after, list) and len(before) == len(after):
        return [
            found
            for i, pair in enumerate(zip(before, after, strict=True))
            for found in _changed_paths(*pair, f"{path}[{i}]")
        ]
    return [] if before == after else [path]


def _child(path: str, key: str) -> str:
    return f"{path}.{key}" if _IDENTIFIER.match(key) else f"{path}[{key!r}]"


# -- bodies as this tool stores them ------------------------------------------------------------------


def decoded_body(body: bytes, encodings: list[str], cap: int = MAX_UPSTREAM_BODY_BYTES) -> bytes:
    """An answer's body with its content encodings undone (the last applied first), never more than `cap` bytes
    decoded: a compression bomb stops at the cap. Raises Skipped saying why it cannot be stored."""
    for coding in reversed(encodings):
        if coding in ("", "identity"):
            continue
        if coding in ("gzip", "x-gzip"):
            if body.startswith(GZIP_MAGIC):  # else vcrpy stored it decoded (its requests stub keeps the header)
                body = _inflate(body, zlib.MAX_WBITS | 16, coding, cap)
        elif coding == "deflate":
            if _is_zlib(body):  # as the RFC says
                body = _inflate(body, zlib.MAX_WBITS, coding, cap)
            elif not _is_text(body):  # raw, as some servers send it; text was stored decoded
                body = _inflate(body, -zlib.MAX_WBITS, coding, cap)
        else:
            raise Skipped(
                f"its answer is {coding}-encoded, which import cannot decode (record it with vcrpy's "
                "decode_compressed_response=True)"
            )
    if len(body) > cap:
        raise Skipped(f"its answer's body is larger than the {cap} byte cap a recorded answer may have")
    return body


def _inflate(data: bytes, wbits: int, coding: str, cap: int) -> bytes:
    """`data` inflated, at most `cap` bytes of it ever held; gzip members one after another, as gzip allows."""
    out = bytearray()
    while True:
        decoder = zlib.decompressobj(wbits)
        try:
            out += decoder.decompress(data, cap + 1 - len(out))
        except zlib.error as exc:
            raise Skipped(f"its {coding}-encoded answer does not decode ({exc})") from None
        if len(out) > cap:
            raise Skipped(
                f"its {coding}-encoded answer decodes to more than the {cap} byte cap a recorded answer may have"
            )
        if not decoder.eof:
            raise Skipped(f"its {coding}-encoded answer is cut short")
        data = decoder.unused_data
        if not data or wbits != zlib.MAX_WBITS | 16:
            return bytes(out)


def _is_zlib(body: bytes) -> bool:
    return len(body) >= 2 and body[0] & 0x0F == zlib.DEFLATED and (body[0] << 8 | body[1]) % 31 == 0


def _is_text(body: bytes) -> bool:
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _content_encodings(headers: Any) -> list[str]:
    return [
        coding.strip().lower()
        for name, value in _header_items(headers)
        if name.lower() == "content-encoding"
        for coding in value.split(",")
    ]


def _as_bytes(body: Any) -> bytes:
    if body is None:
        return b""
    if isinstance(body, str):
        return body.encode("utf-8", "surrogatepass")
    if isinstance(body, bytes):
        return body
    raise Skipped(f"it holds a body that is neither text nor bytes ({type(body).__name__})")


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
    uri, places = _with_origin(uri, connections.origin(connection))
    uri, url_places = masked_url(uri, redactor)
    request_headers, request_places = _masked_headers(item.request.get("headers"), "request", redactor)
    request_body = _as_bytes(item.request.get("body"))
    masked_request_body = _masked_body(request_body, redactor)
    response = item.response
    content = decoded_body(_as_bytes(response["body"].get("string")), _content_encodings(response.get("headers")))
    response_headers, response_places = _masked_headers(response.get("headers"), "response", redactor)
    masked_content = _masked_body(content, redactor)
    places += [
        *url_places,
        *request_places,
        *_body_places("request", request_body, masked_request_body),
        *response_places,
        *_body_places("response", content, masked_content),
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
    return f"#{number} {item.request.get('method', '?')} {shown}: {_masked_text(why, redactor)}"


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
