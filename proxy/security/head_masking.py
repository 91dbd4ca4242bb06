"""An HTTP head masked as its header values are: the status line's reason phrase and the header names.

An upstream may answer `401 Bad token <token>`, or send a header *named* `X-Tok-<token>`. Both are masked with
the server's redactor, in every form it knows, wherever header values are masked. Header names are masked in any
case: HTTP names are case-insensitive, so clients and servers change their case (httpx and Starlette lower-case
them, Go capitalises each word), and an echo reads as well in another case. A masked name (`x-tok-••••••••`) is
kept in what is stored and shown; it is no HTTP token, so it is never sent on (the forward route drops it).

A reason phrase is untrusted input too: only its printable characters are kept (no terminal escape in an error
message, no NUL in a cassette, no bidi override) and it is cut to MAX_REASON_PHRASE_CHARS (aiohttp alone lets one
run to 8 KB).

Cheap when there is nothing to mask, as on nearly every answer: all the names of a head are lower-cased together
and searched for each literal form of a secret, lower-cased (~2 µs for a dozen headers and a few secrets); only a
head that holds one, or an escape (`%`, `\\`), is masked name by name.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import httpx

from proxy.config.settings import MAX_REASON_PHRASE_CHARS, MIN_SECRET_LEN
from proxy.security.encoded_forms import text_forms
from proxy.security.redaction import Redactor

Renames = dict[str, str]  # a lower-cased header name → that name masked


def masked_reason(response: httpx.Response, redactor: Redactor) -> str:
    """An answer's reason phrase as it may be shown and stored: no control character, no secret, not too long.
    Cut after masking, so the cut never leaves the start of a secret standing."""
    reason = reason_phrase(response)
    if not reason.isprintable():  # control and other invisible characters: NUL, ESC, tab, a bidi override
        reason = "".join(char for char in reason if char.isprintable())
    return redactor.redact(reason)[:MAX_REASON_PHRASE_CHARS]


def reason_phrase(response: httpx.Response) -> str:
    """The reason phrase as the transport gave it, read as UTF-8: httpx's own reading keeps ASCII only, which
    would turn a replayed mask into question marks."""
    raw = response.extensions.get("reason_phrase")
    return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else response.reason_phrase


def masked_head(response: httpx.Response, redactor: Redactor) -> tuple[str, dict[str, str]]:
    """An answer's reason phrase and its headers (lower-cased names), as a call result holds them: masked."""
    headers = {name: redactor.redact(value) for name, value in response.headers.items()}
    renames = renames_of(response.headers, redactor)
    if renames:
        headers = {renames.get(name, name): value for name, value in headers.items()}
    return masked_reason(response, redactor), headers


def renames_of(headers: httpx.Headers, redactor: Redactor) -> Renames:
    """`header_renames` of httpx headers, whose names are read as they came (httpx's own lower-cases them)."""
    if not redactor.secrets:
        return {}
    raw = headers.raw
    encoding = headers.encoding
    joined = b"\n".join(name for name, _ in raw).decode(encoding)
    return _renames(joined, lambda: [name.decode(encoding) for name, _ in raw], redactor)


def header_renames(names: Iterable[str], redactor: Redactor) -> Renames:
    """The names among `names` (in any case) that hold a secret: each, lower-cased, mapped to itself masked.
    Empty, the usual case, when none does."""
    if not redactor.secrets:
        return {}
    listed = list(names)
    return _renames("\n".join(listed), lambda: listed, redactor)


def with_masked_names(headers: dict[str, str], redactor: Redactor) -> dict[str, str]:
    """`headers` with every name that holds a secret masked (and lower-cased); the very dict when none does."""
    renames = header_renames(headers, redactor)
    if not renames:
        return headers
    return {renames.get(name.lower(), name): value for name, value in headers.items()}


def _renames(joined: str, names: Callable[[], list[str]], redactor: Redactor) -> Renames:
    masks = _name_masks(redactor.secrets)
    if "%" not in joined and "\\" not in joined:  # no escape: only a literal form can be there
        lowered = joined.lower()
        for form in masks.forms:
            if form in lowered:
                break
        else:
            return {}
    renames = {}
    for name in names():
        # As it came first (an escape decodes to the case it names, base64 keeps its case), then in any case.
        masked = masks.lowered().redact(redactor.redact(name).lower())
        if masked != name.lower():
            renames[name.lower()] = masked
    return renames


@dataclass
class _NameMasks:
    """What masking names in any case takes, for one set of secrets."""

    secrets: frozenset[str]
    forms: tuple[str, ...]  # each literal form of a secret (plain, base64…) that a name can hold, lower-cased
    _lowered: Redactor | None = field(default=None, init=False)

    def lowered(self) -> Redactor:
        """A redactor of those forms, for a lower-cased name; made only when a name holds one."""
        if self._lowered is None:
            lowered = Redactor()
            lowered.register("secrets' forms, lower-cased", [f for f in self.forms if len(f) >= MIN_SECRET_LEN])
            self._lowered = lowered
        return self._lowered


# By the identity of a redactor's set of secrets (a new set each time it changes); an entry holds its set, so
# that id is not reused while it is kept. A few servers in one process each have theirs.
_kept: dict[int, _NameMasks] = {}
NAME_MASKS_KEPT = 16


def _name_masks(secrets: frozenset[str]) -> _NameMasks:
    kept = _kept.get(id(secrets))
    if kept is not None and kept.secrets is secrets:
        return kept
    # A NUL (UTF-16 forms) is never in a header name.
    forms = tuple(sorted({f.lower() for s in secrets for f in text_forms(s) if "\0" not in f}))
    masks = _NameMasks(secrets, forms)
    if len(_kept) >= NAME_MASKS_KEPT:
        _kept.clear()
    _kept[id(secrets)] = masks  # a race with another thread only makes the same masks twice
    return masks
