"""How a request finds its recording: method, URL and body, JSON bodies compared as parsed JSON.

The match key is computed once per request (cost grows with the body, never with the cassette);
per-run values (inference id, Galtea session id, traceparent) are headers and never take part.
Configurable ignores: query parameters, JSONPath body fields, and header names (headers only take
part when named in `match_headers`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from jsonpath_ng import JSONPath

from proxy.config.settings import MASK
from proxy.connections.mapping import compile_jsonpath
from proxy.security import jsonbounds
from proxy.security.url_secrets import is_credential_param

ABSENT = object()
URLS_KEPT = 4096
_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    uri: str
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class MatchRules:
    ignore_query: frozenset[str] = frozenset()
    ignore_body: tuple[str, ...] = ()
    match_headers: frozenset[str] = frozenset()
    _paths: list[JSONPath] = field(default_factory=list, repr=False)
    _urls: dict[str, str] = field(default_factory=dict, repr=False)  # each URL normalised once

    def __post_init__(self) -> None:
        self._paths = [compile_jsonpath(p) for p in self.ignore_body]

    @classmethod
    def from_settings(cls, settings: dict[str, Any]) -> MatchRules:
        ignore = settings.get("ignore") or {}
        return cls(
            ignore_query=frozenset(ignore.get("query") or ()),
            ignore_body=tuple(ignore.get("body") or ()),
            match_headers=frozenset(h.lower() for h in settings.get("match_headers") or ())
            - frozenset(h.lower() for h in ignore.get("headers") or ()),
        )

    def key(self, request: RecordedRequest, document: Any = ABSENT) -> tuple[str, str, str, str]:
        """The match key. `document` is the body already parsed as JSON by whoever built it, if it was."""
        headers = "\n".join(
            f"{k}:{v}" for k, v in sorted((k.lower(), v) for k, v in request.headers.items()) if k in self.match_headers
        )
        return request.method.upper(), self.url(request.uri), self.body(request.body, document), headers

    def url(self, uri: str) -> str:
        normal = self._urls.get(uri)
        if normal is None:
            if len(self._urls) >= URLS_KEPT:
                self._urls.clear()
            parts = urlsplit(uri)
            # A credential in the query string is matched as masked: recorded, it is masked (or, in a cassette made
            # before it was, or on another machine, it is another key); the request is the same.
            query = sorted(
                (k, MASK if v and is_credential_param(k) else v)
                for k, v in parse_qsl(parts.query, keep_blank_values=True)
                if k not in self.ignore_query
            )
            normal = urlunsplit((parts.scheme.lower(), parts.netloc.lower(), parts.path or "/", urlencode(query), ""))
            self._urls[uri] = normal
        return normal

    def parsed_body(self, body: bytes) -> Any:
        if not body:
            return ABSENT
        try:
            document = jsonbounds.loads(body)
        except ValueError:  # not JSON (or over a JSON bound): matched as text
            return ABSENT
        for path in self._paths:
            document = path.filter(lambda _: True, document)
        return document

    def body(self, body: bytes, document: Any = ABSENT) -> str:
        # A document parsed elsewhere serves only when no ignore path has to cut it (that edits it in place).
        if document is ABSENT or self._paths or not body:
            document = self.parsed_body(body)
        if document is ABSENT:
            return body.decode("utf-8", errors="replace")
        return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


@dataclass(frozen=True)
class Difference:
    """Where a request first differs from a recorded one: `part` is `method`, `url`, `body` or `header <name>`;
    `path` the JSONPath of the place inside a JSON body (None elsewhere); `recorded` and `now` show each side."""

    recorded: str
    now: str
    path: str | None = None
    part: str = "body"

    @property
    def message(self) -> str:
        """`body $.a[1].b: "x" recorded, "y" now`."""
        where = f"{self.part} {self.path}" if self.path else self.part
        return f"{where}: {self.recorded} recorded, {self.now} now"


def first_difference(recorded: Any, now: Any, path: str = "$") -> Difference | None:
    """The first place two JSON documents differ."""
    if type(recorded) is not type(now):
        return Difference(_show(recorded), _show(now), path)
    if isinstance(recorded, dict):
        for key in list(recorded) + [k for k in now if k not in recorded]:
            step = _member(path, key)
            if key not in now:
                return Difference(_show(recorded[key]), "absent", step)
            if key not in recorded:
                return Difference("absent", _show(now[key]), step)
            found = first_difference(recorded[key], now[key], step)
            if found:
                return found
        return None
    if isinstance(recorded, list):
        for index, (a, b) in enumerate(zip(recorded, now, strict=False)):
            found = first_difference(a, b, f"{path}[{index}]")
            if found:
                return found
        if len(recorded) != len(now):
            return Difference(f"{len(recorded)} items", str(len(now)), path)
        return None
    return None if recorded == now else Difference(_show(recorded), _show(now), path)


def _member(path: str, key: str) -> str:
    """`$.a`, or `$['a.b']` for a key that is no plain name, so the path reads back as the same JSONPath."""
    if _PLAIN_KEY.fullmatch(key):
        return f"{path}.{key}"
    quote = '"' if "'" in key else "'"
    return f"{path}[{quote}{key}{quote}]"


def _show(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 80 else text[:77] + "..."


def describe_difference(rules: MatchRules, recorded: RecordedRequest, now: RecordedRequest) -> Difference | None:
    """Where a request differs from the nearest recorded one (method, URL, body, then the matched headers);
    None when it does not."""
    if recorded.method.upper() != now.method.upper():
        return Difference(recorded.method, now.method, part="method")
    if rules.url(recorded.uri) != rules.url(now.uri):
        return Difference(recorded.uri, now.uri, part="url")
    a, b = rules.parsed_body(recorded.body), rules.parsed_body(now.body)
    if a is not ABSENT and b is not ABSENT:
        diff = first_difference(a, b)
        if diff:
            return diff
    if rules.body(recorded.body) != rules.body(now.body):
        before, after = recorded.body.decode(errors="replace"), now.body.decode(errors="replace")
        return Difference(_show(before), _show(after))
    for name in sorted(rules.match_headers):
        if recorded.headers.get(name) != now.headers.get(name):
            return Difference(repr(recorded.headers.get(name)), repr(now.headers.get(name)), part=f"header {name}")
    return None


def similarity(rules: MatchRules, recorded: RecordedRequest, now: RecordedRequest) -> tuple[int, int]:
    """Rank recorded requests by closeness: same method and URL first, then the longest common body prefix."""
    same_route = int(recorded.method.upper() == now.method.upper()) + 2 * int(
        rules.url(recorded.uri) == rules.url(now.uri)
    )
    a, b = rules.body(recorded.body), rules.body(now.body)
    common = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
    return same_route, common
