"""How a request finds its recording: method, URL and body, JSON bodies compared as parsed JSON.

The match key is computed once per request (cost grows with the body, never with the cassette);
per-run values (inference id, Galtea session id, traceparent) are headers and never take part.
Configurable ignores: query parameters, JSONPath body fields, and header names (headers only take
part when named in `match_headers`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from jsonpath_ng import JSONPath

from proxy import jsonbounds
from proxy.mapping import compile_jsonpath
from proxy.settings import MASK
from proxy.url_secrets import is_credential_param

ABSENT = object()
URLS_KEPT = 4096


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


def first_difference(recorded: Any, now: Any, path: str = "$") -> str | None:
    """The first place two JSON documents differ, as `$.a[1].b: "x" recorded, "y" now`."""
    if type(recorded) is not type(now):
        return f"{path}: {_show(recorded)} recorded, {_show(now)} now"
    if isinstance(recorded, dict):
        for key in list(recorded) + [k for k in now if k not in recorded]:
            if key not in now:
                return f"{path}.{key}: {_show(recorded[key])} recorded, absent now"
            if key not in recorded:
                return f"{path}.{key}: absent recorded, {_show(now[key])} now"
            found = first_difference(recorded[key], now[key], f"{path}.{key}")
            if found:
                return found
        return None
    if isinstance(recorded, list):
        for index, (a, b) in enumerate(zip(recorded, now, strict=False)):
            found = first_difference(a, b, f"{path}[{index}]")
            if found:
                return found
        if len(recorded) != len(now):
            return f"{path}: {len(recorded)} items recorded, {len(now)} now"
        return None
    return None if recorded == now else f"{path}: {_show(recorded)} recorded, {_show(now)} now"


def _show(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 80 else text[:77] + "..."


def describe_difference(rules: MatchRules, recorded: RecordedRequest, now: RecordedRequest) -> str:
    """Where a request differs from the nearest recorded one (method, URL, then body)."""
    if recorded.method.upper() != now.method.upper():
        return f"method: {recorded.method} recorded, {now.method} now"
    if rules.url(recorded.uri) != rules.url(now.uri):
        return f"url: {recorded.uri} recorded, {now.uri} now"
    a, b = rules.parsed_body(recorded.body), rules.parsed_body(now.body)
    if a is not ABSENT and b is not ABSENT:
        diff = first_difference(a, b)
        if diff:
            return f"body {diff}"
    if rules.body(recorded.body) != rules.body(now.body):
        before, after = recorded.body.decode(errors="replace"), now.body.decode(errors="replace")
        return f"body: {_show(before)} recorded, {_show(after)} now"
    for name in sorted(rules.match_headers):
        if recorded.headers.get(name) != now.headers.get(name):
            return f"header {name}: {recorded.headers.get(name)!r} recorded, {now.headers.get(name)!r} now"
    return "identical, but every recording of it was already played"


def similarity(rules: MatchRules, recorded: RecordedRequest, now: RecordedRequest) -> tuple[int, int]:
    """Rank recorded requests by closeness: same method and URL first, then the longest common body prefix."""
    same_route = int(recorded.method.upper() == now.method.upper()) + 2 * int(
        rules.url(recorded.uri) == rules.url(now.uri)
    )
    a, b = rules.body(recorded.body), rules.body(now.body)
    common = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
    return same_route, common
