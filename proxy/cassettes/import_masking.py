"""Masking what imported cassettes carry: credential headers, credential-named query values, the credentials the
cassettes themselves hold wherever they appear again, and anything shaped like a well-known token; with the places
where secrets were, as the import report names them."""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import unquote_plus

from proxy.cassettes.cassette import Interaction
from proxy.cassettes.import_reading import header_items, user_info
from proxy.cassettes.inventory import SECRET_SHAPES
from proxy.cassettes.record_replay import ALWAYS_MASKED
from proxy.config.settings import MASK, MIN_SECRET_LEN
from proxy.connections.headers import is_secret_header, secret_header_parts
from proxy.security import jsonbounds
from proxy.security.redaction import Redactor
from proxy.security.url_secrets import is_credential_param

COOKIE_HEADERS = frozenset({"cookie", "set-cookie"})
_SCHEME_PREFIX = re.compile(r"(?:Bearer|Basic)\s+")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_UTF8_MASK_AS_LATIN1 = MASK.encode("utf-8").decode("latin-1")  # the mask in a body that is not UTF-8


# -- the secrets an imported cassette carries --------------------------------------------------------


def carried_credentials(interactions: Iterable[Interaction]) -> set[str]:
    """The credentials the interactions carry, long enough to mask wherever else they appear: the request's credential
    headers (a Basic header's password and each cookie's value too), the answer's cookies, credential-named query
    values. An answer's other secret-looking headers (`x-ratelimit-limit-tokens`) are masked where they stand but
    carry no credential worth looking for elsewhere."""
    found: set[str] = set()
    for item in interactions:
        for name, value in header_items(item.request.get("headers")):
            found.update(_header_credentials(name, value))
        for name, value in header_items(item.response.get("headers")):
            if name.lower() in ALWAYS_MASKED:
                found.update(_header_credentials(name, value))
        uri = str(item.request.get("uri", ""))
        for _, value in _query_credentials(uri):
            found.update((value, unquote_plus(value)))  # as written, and as an upstream would echo it
        password = user_info(uri).partition(":")[2]
        found.add(unquote_plus(password))
    return {value for value in found if len(value) >= MIN_SECRET_LEN and MASK not in value}


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


# -- masking -----------------------------------------------------------------------------------------


def _masked_shapes(text: str, mask: str = MASK) -> str:
    """Anything shaped like a well-known token, masked; a `Bearer`/`Basic` word before it is kept."""

    def masked(match: re.Match[str]) -> str:
        scheme = _SCHEME_PREFIX.match(match.group(0))
        return (scheme.group(0) if scheme else "") + mask

    return SECRET_SHAPES.sub(masked, text)


def masked_text(text: str, redactor: Redactor) -> str:
    return _masked_shapes(redactor.redact(text))


def masked_body(body: bytes, redactor: Redactor) -> bytes:
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
    masked = masked_text(joined, redactor)
    if masked != joined:
        places.append("url")
    return masked, places


def masked_headers(headers: Any, side: str, redactor: Redactor) -> tuple[list[tuple[str, str]], list[str]]:
    masked, places = [], []
    for name, value in header_items(headers):
        lower = name.lower()
        shown = MASK if _is_credential_header(name, value) else masked_text(value, redactor)
        if shown != value:
            places.append(f"{side} header {lower}")
        masked.append((lower, shown))
    return masked, places


def body_places(side: str, before: bytes, after: bytes) -> list[str]:
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
