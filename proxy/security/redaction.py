"""Masking one server's secrets in every form an upstream may echo them in.

A secret is masked as it is, and in the forms an echo of it takes:
- JSON-escaped: any mix of `\\uXXXX` escapes (either hex case, surrogate pairs) and the short escapes, also
  inside a JSON document that is itself a JSON string value, each level escaping the escapes again (`\\\\u0041`),
  down to MASK_NESTED_JSON_DEPTH documents;
- percent-encoded: any mix of `%XX` for its UTF-8 bytes (either hex case), `+` for a space;
- base64, standard and URL-safe, at each of the three byte alignments, so a secret inside a larger
  encoded value (a Basic `base64(user:pass)`) is found too;
- UTF-16 and UTF-32, LE and BE, as those bytes read when decoded as UTF-8 (each character beside a NUL).

The plain, `+`, base64 and UTF-16 forms are literal strings, searched for as plain substrings (a text that
holds none costs a few `in` checks; a pattern is compiled only for the forms a text holds). Escaped forms are found by
decoding: where a text holds escapes that decode to a character some form contains, it is decoded into
a view that remembers where each character came from, the same pattern runs over the view, and what it
finds is masked in the text. A reply full of `\\n` is decoded only if some secret holds a newline.

A view is decoded again for the JSON documents nested in its strings, one level at a time. A level that is decoded
again is worth decoding also where a `\\\\` may begin an escape one level down (`\\\\u`), and then every escape in it
is decoded, so the view reads as the nested document does: what is found in it is widened to that document's whole
escapes (it still parses), and to the text's. A reply without such a pair, or a character of a secret, pays nothing.

A body that is not UTF-8 is masked byte for byte (read as Latin-1, so every byte is one character)
with the forms' UTF-8 and UTF-16 bytes, and the rest of it stays as it was.

Every secret belongs to an owner (a connection, a connector, one testConnection call): an owner's
secrets are replaced or forgotten together, and a secret stays known while any owner holds it.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import re
import threading
from collections.abc import Callable, Hashable, Iterable, Iterator

from proxy.config.settings import MASK, MIN_SECRET_LEN
from proxy.security.encoded_forms import (
    JSON_RAW,
    JSON_TEXT,
    JSON_VIEW_DEPTH,
    PERCENT_RAW,
    PERCENT_TEXT,
    Masks,
    echo_heads,
    find_forms,
    longest_echo,
    mask_spans,
    whole_escapes,
)

log = logging.getLogger("proxy")


class Redactor:
    """The secrets one server knows, masked wherever they turn up (see the module docstring)."""

    def __init__(self) -> None:
        self._owners: dict[Hashable, frozenset[str]] = {}
        self._known: frozenset[str] = frozenset()
        self._masks: Masks | None = None
        self._lock = threading.Lock()
        self.longest_echo = 0  # bytes: the longest any form of a known secret can be (see StreamMasker)
        self.echo_heads: tuple[bytes, ...] = ()  # the bytes an echo can begin with, before any escape in it
        self.longest_head = 0
        self.echo_starts = re.compile(b"[\\\\%]")  # the first bytes of those, and of an escape

    # -- the set of secrets ----------------------------------------------------------------------

    def register(self, owner: Hashable, values: Iterable[str | None]) -> None:
        """`owner`'s secrets are now `values` (what it held before is forgotten, unless another holds it)."""
        kept = set()
        for value in values:
            if not value:
                continue
            if len(value) < MIN_SECRET_LEN:
                log.warning(
                    "%s holds a secret of %d characters: it cannot be masked reliably (%d or more are needed); "
                    "change it",
                    _describe(owner),
                    len(value),
                    MIN_SECRET_LEN,
                )
                continue
            kept.add(value)
        with self._lock:
            if kept:
                self._owners[owner] = frozenset(kept)
            else:
                self._owners.pop(owner, None)
            self._rebuild()

    def forget(self, owner: Hashable) -> None:
        with self._lock:
            if self._owners.pop(owner, None) is not None:
                self._rebuild()

    @contextlib.contextmanager
    def scoped(self, values: Iterable[str | None]) -> Iterator[None]:
        """Secrets known for the duration of one call (throwaway credentials), forgotten after it."""
        owner = _CallScope()
        self.register(owner, values)
        try:
            yield
        finally:
            self.forget(owner)

    def knows(self, value: str) -> bool:
        return value in self._known

    @property
    def secrets(self) -> frozenset[str]:
        """Every secret known now (a new set each time it changes, so it can key what is worked out from it)."""
        return self._known

    def _rebuild(self) -> None:
        known = frozenset().union(*self._owners.values())
        if known != self._known:
            self._known = known
            self._masks = Masks(known) if known else None
            self.longest_echo = max(map(longest_echo, known), default=0)
            self.echo_heads = echo_heads(known, self._masks)
            self.longest_head = max(map(len, self.echo_heads), default=0)
            first = sorted({form[0] for form in self.echo_heads if form} | {ord("\\"), ord("%")})
            self.echo_starts = re.compile(b"[" + b"".join(re.escape(bytes([c])) for c in first) + b"]")

    # -- masking ---------------------------------------------------------------------------------

    def redact(self, text: str) -> str:
        return _redacted(self._masks, text)

    def frozen(self) -> Callable[[str], str]:
        """`redact` with the secrets known now, for a text masked later, in another thread (a call's throwaway
        secrets are forgotten when it ends)."""
        return functools.partial(_redacted, self._masks)

    def redact_bytes(self, body: bytes) -> bytes:
        """A body masked as text when it is UTF-8, else byte for byte; nothing else in it changes."""
        masks = self._masks
        if masks is None or len(body) < MIN_SECRET_LEN:
            return body
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            return self._redact_raw(masks, body.decode("latin-1")).encode("latin-1")
        masked = self.redact(text)
        return body if masked == text else masked.encode("utf-8")

    def _redact_raw(self, masks: Masks, raw: str) -> str:
        for forms, mask in masks.raw_wide:
            raw = mask_spans(raw, find_forms([f for f in forms if f in raw], raw), mask.decode("latin-1"))
        utf8_mask = MASK.encode("utf-8").decode("latin-1")
        raw = mask_spans(raw, masks.raw_spans(raw), utf8_mask)
        for decoding, depth in ((JSON_RAW, JSON_VIEW_DEPTH), (PERCENT_RAW, 1)):
            spans = masks.decoded_spans(raw, decoding, masks.raw_spans, depth)
            if spans:
                raw = mask_spans(raw, spans, utf8_mask)
        return raw

    def contains_secret(self, value: str | bytes) -> bool:
        """Whether any form of a known secret is in `value` (`proxy cassettes verify`)."""
        if isinstance(value, bytes):
            return self.redact_bytes(value) != value
        return self.redact(value) != value


def _redacted(masks: Masks | None, text: str) -> str:
    if masks is None or len(text) < MIN_SECRET_LEN:  # every form of a secret is at least as long as it
        return text
    # Every span is found in the text as it came, so one that cuts an escape of a nested document is widened
    # to it in that document's view before the text changes under it.
    spans = masks.spans(text)
    found = bool(spans)
    for decoding, depth in ((JSON_TEXT, JSON_VIEW_DEPTH), (PERCENT_TEXT, 1)):
        spans += masks.decoded_spans(text, decoding, masks.spans, depth, found)
    return mask_spans(text, whole_escapes(text, spans), MASK) if spans else text


class _CallScope:
    def __repr__(self) -> str:
        return "one call"


def _describe(owner: Hashable) -> str:
    return " ".join(map(str, owner)) if isinstance(owner, tuple) else str(owner)
