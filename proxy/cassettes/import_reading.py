"""Reading foreign cassettes for `proxy cassettes import`: which files a folder holds and where each goes, a vcrpy
YAML or JSON file read as any cassette from outside is, its URLs and headers, and answer bodies decoded (inflated
within a cap) as this tool stores them."""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vcr.serializers import yamlserializer

from proxy.cassettes.cassette import Interaction, load_interactions, parse_interactions
from proxy.cassettes.names import file_name
from proxy.config.settings import DEFAULT_IMPORT_MAX_FILE_BYTES, MAX_UPSTREAM_BODY_BYTES
from proxy.security import jsonbounds
from proxy.security.origins import Origin

CASSETTE_SUFFIXES = (".yaml", ".yml", ".json")
GZIP_MAGIC = b"\x1f\x8b"


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


def cassette_files(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.rglob("*")
        if p.suffix.lower() in CASSETTE_SUFFIXES
        and p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def no_cassettes(folder: Path) -> str:
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


# -- URLs and headers as vcrpy wrote them ------------------------------------------------------------


def header_items(headers: Any) -> Iterator[tuple[str, str]]:
    if not isinstance(headers, dict):
        return
    for name, values in headers.items():
        for value in values if isinstance(values, list) else [values]:
            yield str(name), str(value)


def user_info(uri: str) -> str:
    scheme_end = uri.find("://")
    authority = uri[scheme_end + 3 : authority_end(uri, scheme_end + 3)] if scheme_end >= 0 else ""
    return authority.rpartition("@")[0]


def authority_end(uri: str, start: int) -> int:
    return min((i for i in (uri.find(c, start) for c in "/?#") if i >= 0), default=len(uri))


def with_origin(uri: str, origin: Origin) -> tuple[str, list[str]]:
    """The URL as the forward route writes it for a connection on `origin`: its origin's base URL, then the path
    and query as recorded (user info and fragment dropped: neither ever reaches an upstream from the route)."""
    start = uri.find("://") + 3
    end = authority_end(uri, start)
    rest = uri[end:].partition("#")[0]
    if not rest.startswith("/"):
        rest = "/" + rest
    return origin.base_url() + rest, (["url user info"] if user_info(uri) else [])


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


def content_encodings(headers: Any) -> list[str]:
    return [
        coding.strip().lower()
        for name, value in header_items(headers)
        if name.lower() == "content-encoding"
        for coding in value.split(",")
    ]


def as_bytes(body: Any) -> bytes:
    if body is None:
        return b""
    if isinstance(body, str):
        return body.encode("utf-8", "surrogatepass")
    if isinstance(body, bytes):
        return body
    raise Skipped(f"it holds a body that is neither text nor bytes ({type(body).__name__})")
