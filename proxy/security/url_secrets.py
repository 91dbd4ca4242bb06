"""Credentials in a URL's query string (`…/models/x:generate?key=AIza…`, Gemini's style): which parameters hold
one, the URL as it may be shown (`…?key=••••••••`), and a masked URL sent back standing for the stored one.

A query parameter holds a credential when its name is one that APIs read credentials from (CREDENTIAL_PARAMS,
any case, `-` and `_` alike) and its value holds literal text. The name is matched whole, not by a word in
it as a header's is: query strings carry `max_tokens`, `keyword` and `sort_key`, which hold no credential.
A value that is all template (`{{ api_key }}`) holds none; beside template constructs, as in a header, only
literal pieces long enough to be a secret count. A URL is a template, so it is read around its constructs.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import unquote, unquote_plus

from proxy.config.settings import MASK, MIN_SECRET_LEN
from proxy.errors import InvalidField

# Names as they are compared: lower case, `-` read as `_`. The credentials of Google (`key`, `access_token`),
# Azure (`sig`, `subscription-key`), AWS and GCS presigned URLs, Slack and GitLab (`token`, `private_token`).
CREDENTIAL_PARAMS = frozenset(
    {
        "key",
        "api_key",
        "apikey",
        "x_api_key",
        "api_token",
        "token",
        "access_token",
        "id_token",
        "refresh_token",
        "private_token",
        "auth",
        "auth_token",
        "authorization",
        "sig",
        "signature",
        "x_amz_signature",
        "x_amz_security_token",
        "x_goog_signature",
        "secret",
        "client_secret",
        "password",
        "passwd",
        "subscription_key",
    }
)
FIELD_PREFIX = "url?"  # a query secret's field, as `secret_fields` names it: `url?key`
_CONSTRUCT = re.compile(r"\{\{.*?\}\}|\{%.*?%\}|\{#.*?#\}", re.DOTALL)
_HIDDEN = "\0"  # stands for each character of a template construct while the URL is read


@dataclass(frozen=True)
class QueryValue:
    """The value of one credential-named parameter: where it stands in the URL and its literal pieces."""

    param: str  # as written
    name: str  # as compared (CREDENTIAL_PARAMS)
    occurrence: int  # 0 for the first parameter of this name, 1 for the next…
    start: int
    end: int
    pieces: tuple[tuple[int, int], ...]  # the spans of its literal text, between template constructs
    templated: bool

    def secrets(self, url: str) -> list[tuple[int, int]]:
        """The spans of its pieces that are secrets (a masked piece is none: it stands for a stored one)."""
        if not self.templated:
            return [span for span in self.pieces if not is_masked(url[span[0] : span[1]])]
        return [(a, b) for a, b in self.pieces if b - a >= MIN_SECRET_LEN and not is_masked(url[a:b])]

    def masked(self, url: str) -> str:
        """Its text with each secret piece as the mask."""
        spans = [(a - self.start, b - self.start) for a, b in self.secrets(url)]
        return _replaced(url[self.start : self.end], spans, MASK)


@dataclass(frozen=True)
class QuerySecret:
    param: str
    value: str  # as written in the URL (percent-encoded, if it was)

    @property
    def field(self) -> str:
        return FIELD_PREFIX + self.param

    def forms(self) -> list[str]:
        """What a redactor must know: the value as written and, when it was percent-encoded, as it reads."""
        decoded = unquote_plus(self.value)
        return [self.value] if decoded == self.value or len(decoded) < MIN_SECRET_LEN else [self.value, decoded]


def is_credential_param(name: str) -> bool:
    """Whether a query parameter of this name (as written, percent-encoded or not) holds a credential."""
    return _compared(name) in CREDENTIAL_PARAMS


def _compared(name: str) -> str:
    return unquote_plus(name).strip().lower().replace("-", "_")


def is_masked(text: str) -> bool:
    return MASK in text or MASK in unquote(text)


def credential_values(url: str) -> Iterator[QueryValue]:
    """Every credential-named parameter's value in `url` (a template), in order."""
    shape = _CONSTRUCT.sub(lambda m: _HIDDEN * len(m.group()), url)
    query = shape.find("?")
    if query < 0:
        return
    fragment = shape.find("#", query)
    end = fragment if fragment >= 0 else len(shape)
    seen: dict[str, int] = defaultdict(int)
    start = query + 1
    while start <= end:
        stop = shape.find("&", start, end)
        stop = end if stop < 0 else stop
        equals = shape.find("=", start, stop)
        if equals >= 0 and _HIDDEN not in shape[start:equals]:
            param = url[start:equals]
            name = _compared(param)
            if name in CREDENTIAL_PARAMS:
                value = shape[equals + 1 : stop]
                pieces = tuple(
                    (equals + 1 + m.start(), equals + 1 + m.end()) for m in re.finditer(f"[^{_HIDDEN}]+", value)
                )
                yield QueryValue(param, name, seen[name], equals + 1, stop, pieces, _HIDDEN in value)
                seen[name] += 1
        start = stop + 1


def query_secrets(url: str) -> list[QuerySecret]:
    """The credentials `url` holds in its query string, in order."""
    return [QuerySecret(v.param, url[a:b]) for v in credential_values(url) for a, b in v.secrets(url)]


def secret_values(url: str) -> list[str]:
    """What a redactor must know of `url`: each credential in its query string, in every form `forms` names."""
    return [form for secret in query_secrets(url) for form in secret.forms()]


def masked_url(url: str) -> str:
    """`url` as it may be shown: each credential in its query string as the mask."""
    return _replaced(url, [span for v in credential_values(url) for span in v.secrets(url)], MASK)


def unmasked_credentials(uri: str) -> list[str]:
    """The credential-named parameters of a recorded URL whose value is not masked: a cassette recorded elsewhere
    (or by hand) may hold a credential no server here knows."""
    return [v.param for v in credential_values(uri) if v.end > v.start and not is_masked(uri[v.start : v.end])]


def whole_credentials(url: str) -> tuple[tuple[str, str], ...]:
    """The credentials `url` holds as whole values (`key=AIza…`), each with the name it is compared by: what a
    recorded URL, where they are masked, takes back when it is sent again (`proxy cassettes drift`)."""
    return tuple((v.name, url[v.start : v.end]) for v in credential_values(url) if not v.templated and v.secrets(url))


def unmasked(uri: str, credentials: tuple[tuple[str, str], ...]) -> str:
    """A recorded URL with each credential that is masked whole put back from `credentials`, by name in order."""
    left: dict[str, list[str]] = defaultdict(list)
    for name, secret in credentials:
        left[name].append(secret)
    restored = []
    for value in credential_values(uri):
        if MASK in (uri[value.start : value.end], unquote(uri[value.start : value.end])) and left[value.name]:
            restored.append((value.start, value.end, left[value.name].pop(0)))
    for start, end, text in reversed(restored):
        uri = uri[:start] + text + uri[end:]
    return uri


def refuse_masked(url: str) -> None:
    """A new connection's URL cannot hold the mask in a credential: there is no stored value it stands for."""
    for value in credential_values(url):
        if is_masked(url[value.start : value.end]):
            raise InvalidField(
                "url", f"query parameter {value.param}: the masked value '{MASK}' can only stand for a stored value"
            )


def restore_masked(url: str, stored: str) -> str:
    """`url` with each masked credential (as the API shows it) put back to the stored URL's value of that
    parameter: a URL read back and sent again keeps its credentials, as a masked header does."""
    kept = {(v.name, v.occurrence): v for v in credential_values(stored)}
    restored: list[tuple[tuple[int, int], str]] = []
    for value in credential_values(url):
        text = url[value.start : value.end]
        if not is_masked(text):
            continue
        original = kept.get((value.name, value.occurrence))
        if original is None or original.masked(stored) not in (text, unquote(text)):
            raise InvalidField(
                "url", f"query parameter {value.param}: '{MASK}' stands for a stored value, and none is stored"
            )
        restored.append(((value.start, value.end), stored[original.start : original.end]))
    for (start, end), text in reversed(restored):
        url = url[:start] + text + url[end:]
    return url


def _replaced(text: str, spans: list[tuple[int, int]], by: str) -> str:
    for start, end in sorted(spans, reverse=True):
        text = text[:start] + by + text[end:]
    return text
