"""The forms an echo of a secret takes (plain, `+`, base64, UTF-16/32, JSON- and percent-escaped, nested JSON), and
finding them in a text through decoded views of its escapes;
how they are put together is told in `proxy.security.redaction`."""

from __future__ import annotations

import base64
import bisect
import contextlib
import functools
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from proxy.config.settings import MASK, MASK_NESTED_JSON_DEPTH

_URLSAFE = str.maketrans("+/", "-_")
_SHORT_ESCAPES = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}
_JSON_TOKENS = re.compile(
    r"\\u[dD][89abAB][0-9a-fA-F]{2}\\u[dD][c-fC-F][0-9a-fA-F]{2}"  # a surrogate pair
    r"|\\u[0-9a-fA-F]{4}|\\[\"\\/bfnrt]"
)
# A leading literal lets the regex engine skip to each `%`; the `+` branch (a space) costs a try at every
# position, so it is used only when some secret holds a space.
_PERCENT_TOKENS = re.compile(r"%[0-9a-fA-F]{2}(?:%[0-9a-fA-F]{2})*")
_PERCENT_OR_PLUS_TOKENS = re.compile(r"(?:%[0-9a-fA-F]{2})+|\+")
JSON_VIEW_DEPTH = 1 + MASK_NESTED_JSON_DEPTH  # a secret's own escapes, then once more for each document around it
Span = tuple[int, int]
# Encodings of a few bytes a character: an upstream answering in one of them echoes a secret as these bytes.
WIDE_CODECS = ("utf-16-le", "utf-16-be", "utf-32-le", "utf-32-be")
Pieces = list[tuple[str, int]]  # (what a token decodes to, how many source characters it spans)


def text_forms(secret: str) -> set[str]:
    """The literal strings an echo of `secret` may be found as in a text."""
    forms = {secret}
    if " " in secret:
        forms.add(secret.replace(" ", "+"))
    for core in _base64_cores(secret.encode("utf-8", "surrogatepass")):
        forms |= {core, core.translate(_URLSAFE)}
    for codec in WIDE_CODECS:
        # Where these bytes are not UTF-8, the body they are in is not either: it is masked as bytes.
        with contextlib.suppress(UnicodeDecodeError):
            forms.add(secret.encode(codec, "surrogatepass").decode("utf-8"))
    return forms


def _base64_cores(data: bytes) -> Iterator[str]:
    """The base64 characters that depend on `data` alone, for each position of it in a 3-byte group."""
    for shift in range(3):
        encoded = base64.b64encode(bytes(shift) + data).decode()
        yield encoded[-(-8 * shift // 6) : 8 * (shift + len(data)) // 6]


def _merged(spans: list[Span]) -> list[Span]:
    merged: list[Span] = []
    for start, end in sorted(spans):
        if merged and start < merged[-1][1]:
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
        else:
            merged.append((start, end))
    return merged


def whole_escapes(text: str, spans: list[Span]) -> list[Span]:
    """A span that cuts a JSON escape (a plain `e9abcdef` found in `caf\\u00e9abcdef`) takes the escape whole:
    half an escape would leave the document unparseable."""
    if "\\" not in text or not spans:
        return spans
    # The escapes are read from the start of the text: only there is it sure which backslash begins one, in the runs
    # of them that nested documents make (`\\\u0041` is `\\`, then `\u0041`). One pass, up to the last span.
    edges = sorted({index for start, end in spans for index in (start, end - 1)})
    holding: dict[int, Span] = {}
    escapes = _JSON_TOKENS.finditer(text, 0, edges[-1] + 12)  # an escape is at most 12 characters long
    escape = next(escapes, None)
    for index in edges:
        while escape is not None and escape.end() <= index:
            escape = next(escapes, None)
        if escape is None:
            break
        if escape.start() <= index:
            holding[index] = escape.span()
    return [
        (holding[start][0] if start in holding else start, holding[end - 1][1] if end - 1 in holding else end)
        for start, end in spans
    ]


def mask_spans(text: str, spans: list[Span], mask: str) -> str:
    out, pos = [], 0
    for start, end in _merged(spans):
        out += [text[pos:start], mask]
        pos = end
    out.append(text[pos:])
    return "".join(out)


# -- decoded views ------------------------------------------------------------------------------


def _json_text(token: str) -> Pieces:
    if len(token) == 12:
        high, low = int(token[2:6], 16), int(token[8:12], 16)
        return [(chr(0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00)), 12)]
    if len(token) == 6:
        return [(chr(int(token[2:], 16)), 6)]
    return [(_SHORT_ESCAPES[token[1]], 2)]


def _json_raw(token: str) -> Pieces:
    """In a body read as Latin-1, an escape stands for its character's UTF-8 bytes."""
    ((char, size),) = _json_text(token)
    return [(char.encode("utf-8", "surrogatepass").decode("latin-1"), size)]


def _percent_text(token: str) -> Pieces:
    if token == "+":
        return [(" ", 1)]
    data = bytes.fromhex(token.replace("%", ""))
    pieces: Pieces = []
    i = 0
    while i < len(data):
        lead = data[i]
        size = 1 if lead < 0x80 else 2 if lead >> 5 == 0b110 else 3 if lead >> 4 == 0b1110 else 4
        try:
            pieces.append((data[i : i + size].decode("utf-8"), 3 * size))
            i += size
        except UnicodeDecodeError:  # not UTF-8: the escape stays as it is
            pieces.append((token[3 * i : 3 * i + 3], 3))
            i += 1
    return pieces


def _percent_raw(token: str) -> Pieces:
    if token == "+":
        return [(" ", 1)]
    return [(chr(int(token[i + 1 : i + 3], 16)), 3) for i in range(0, len(token), 3)]


@dataclass(frozen=True)
class _Decoding:
    tokens: re.Pattern[str]
    space_tokens: re.Pattern[str]  # the tokens when some form holds a space
    decode: Callable[[str], Pieces]
    json: bool
    raw: bool  # works on a body read as Latin-1

    def worth_it(self, text: str, masks: Masks) -> bool:
        if self.json:
            return any(escape in text for escape in masks.json_escapes)
        return "%" in text


JSON_TEXT = _Decoding(_JSON_TOKENS, _JSON_TOKENS, _json_text, json=True, raw=False)
PERCENT_TEXT = _Decoding(_PERCENT_TOKENS, _PERCENT_OR_PLUS_TOKENS, _percent_text, json=False, raw=False)
JSON_RAW = _Decoding(_JSON_TOKENS, _JSON_TOKENS, _json_raw, json=True, raw=True)
PERCENT_RAW = _Decoding(_PERCENT_TOKENS, _PERCENT_OR_PLUS_TOKENS, _percent_raw, json=False, raw=True)
DECODED_KEPT = 4096  # decoded escapes remembered per decoding (`\\u00e9` recurs in every French reply)


class _View:
    """A text with some of its escapes decoded, and where each decoded character came from."""

    def __init__(self, source: str, tokens: list[tuple[int, Pieces]]) -> None:
        parts: list[str] = []
        self._starts: list[int] = []  # where each piece starts in the view
        self._sources: list[Span | None] = []  # a decoded piece's source span; None for a literal run
        self._offsets: list[int] = []  # where each piece starts in the source
        length, pos = 0, 0
        for at, pieces in tokens:
            if at > pos:
                self._piece(pos, None, length)
                parts.append(source[pos:at])
                length += at - pos
            for decoded, size in pieces:
                self._piece(at, (at, at + size), length)
                parts.append(decoded)
                length += len(decoded)
                at += size
            pos = at
        parts.append(source[pos:])
        self._piece(pos, None, length)
        self.text = "".join(parts)

    def _piece(self, offset: int, source: Span | None, at: int) -> None:
        self._starts.append(at)
        self._sources.append(source)
        self._offsets.append(offset)

    def whole_escapes(self, spans: list[Span]) -> list[Span]:
        """The view may be a JSON document inside a string: a span that cuts one of its escapes takes it whole, or
        that document would no longer parse. But a quote the text held as it is ends that string (`\\\\"` is a
        backslash and the end): a span is never widened over one."""
        widened = []
        for (start, end), (wide_start, wide_end) in zip(spans, whole_escapes(self.text, spans), strict=True):
            start = start if self._ends_a_string(wide_start, start) else wide_start
            widened.append((start, end if self._ends_a_string(end, wide_end) else wide_end))
        return widened

    def _ends_a_string(self, start: int, end: int) -> bool:
        return any(
            self.text[at] == '"' and self._sources[bisect.bisect_right(self._starts, at) - 1] is None
            for at in range(start, end)
        )

    def source_span(self, start: int, end: int) -> Span:
        return self._source_at(start)[0], self._source_at(end - 1)[1]

    def _source_at(self, index: int) -> Span:
        piece = bisect.bisect_right(self._starts, index) - 1
        source = self._sources[piece]
        if source is not None:
            return source
        at = self._offsets[piece] + index - self._starts[piece]
        return at, at + 1


# -- the masks for one set of secrets -----------------------------------------------------------


class Masks:
    """Everything worked out for one set of secrets; made anew when the set changes. Nothing is compiled
    up front (that costs milliseconds for a few dozen secrets, and a throwaway credential changes the set
    twice a call): a text is first searched for each form as a plain substring, and a pattern is compiled
    for the forms found, which the `re` module's cache keeps for the next text that holds the same."""

    def __init__(self, secrets: frozenset[str]) -> None:
        forms = set().union(*(text_forms(s) for s in secrets))
        self.needles = tuple(sorted(f for f in forms if "\0" not in f))
        self.nul_needles = tuple(sorted(f for f in forms if "\0" in f))
        self.chars = frozenset("".join(forms))
        self.json_escapes = ("\\u", *(f"\\{e}" for e, c in _SHORT_ESCAPES.items() if c in self.chars))
        # A body that is not UTF-8, read as Latin-1: the forms' UTF-8 bytes, and the secrets' UTF-16 bytes
        # (masked with the mask's UTF-16 bytes, so a UTF-16 reader still sees text there).
        self.raw_needles = tuple(sorted({f.encode("utf-8", "surrogatepass").decode("latin-1") for f in forms}))
        self.raw_chars = frozenset("".join(self.raw_needles))
        self.raw_wide = [
            (tuple(s.encode(codec, "surrogatepass").decode("latin-1") for s in secrets), MASK.encode(codec))
            for codec in WIDE_CODECS
        ]
        self._decoded: dict[_Decoding, dict[str, tuple[Pieces, bool]]] = {}  # token: (pieces, wanted)

    @functools.cached_property
    def nested_escapes(self) -> re.Pattern[str]:
        """An escape of a character some form holds, in a document inside a JSON string (one or more levels
        down): its backslash escaped again, so a run of two or more (`\\\\u0041`, `\\\\n`; `\\\\\\"` and
        `\\\\\\\\` for a quote and a backslash). Compiled once it is needed: most texts hold no `\\\\` and never
        ask."""
        units = sorted({f"{ord(c):04x}" if ord(c) <= 0xFFFF else "d[89ab][0-9a-f]{2}" for c in self.chars})
        heads = [f"u(?i:{'|'.join(units)})"]
        letters = "".join(e[1] for e in self.json_escapes if e[1] not in 'u"\\')
        if letters:
            heads.append(f"[{re.escape(letters)}]")
        escapes = [r"\\*(?:" + "|".join(heads) + ")"]
        if '"' in self.chars:
            escapes.append(r'\\+"')
        if "\\" in self.chars:
            escapes.append(r"\\\\")
        return re.compile(r"\\\\(?:" + "|".join(escapes) + ")")

    def spans(self, text: str) -> list[Span]:
        hits = [n for n in self.needles if n in text]
        if "\0" in text:
            hits += [n for n in self.nul_needles if n in text]
        return find_forms(hits, text)

    def raw_spans(self, raw: str) -> list[Span]:
        return find_forms([n for n in self.raw_needles if n in raw], raw)

    def decoded_spans(
        self,
        text: str,
        decoding: _Decoding,
        find: Callable[[str], list[Span]],
        depth: int,
        found_in_text: bool = False,
    ) -> list[Span]:
        """Where in `text` an echo is: in `text` decoded, and, where it holds an escape of a document inside a JSON
        string, in that decoded again, `depth` decodings in all. Where an echo was `found_in_text` as it is, the
        documents inside its strings are decoded too, for what it cuts of their escapes."""
        worth_it = decoding.worth_it(text, self)  # a text without it holds no nested escape either
        nested = (
            depth > 1
            and decoding.json
            and ((worth_it and self.nested_escapes.search(text) is not None) or (found_in_text and "\\\\" in text))
        )
        if not (worth_it or nested):
            return []
        tokens = self._tokens(text, decoding, every=nested)
        if not tokens:
            return []
        view = _View(text, tokens)
        found = find(view.text)
        if nested:
            found += self.decoded_spans(view.text, decoding, find, depth - 1, found_in_text=bool(found))
            if found:
                # The view may be a document inside a string (or just its text: then a span takes a little more).
                found = view.whole_escapes(found)
        return [view.source_span(start, end) for start, end in found]

    def _tokens(self, text: str, decoding: _Decoding, every: bool) -> list[tuple[int, Pieces]]:
        """The escapes in `text` worth decoding, each with where it starts and what it decodes to: those that decode
        to characters some form holds (only they can be part of an echo), or `every` escape, so that a view that is
        decoded again reads as the document inside the string does."""
        chars = self.raw_chars if decoding.raw else self.chars
        known = self._decoded.setdefault(decoding, {})
        tokens = []
        for match in (decoding.space_tokens if " " in chars else decoding.tokens).finditer(text):
            token = match.group()
            decoded = known.get(token)
            if decoded is None:
                pieces = decoding.decode(token)
                decoded = pieces, any(chars.issuperset(piece) for piece, _ in pieces)
                if len(known) >= DECODED_KEPT:
                    known.clear()
                known[token] = decoded
            if every or decoded[1]:
                tokens.append((match.start(), decoded[0]))
        return tokens


def find_forms(forms: list[str], text: str) -> list[Span]:
    if not forms:
        return []
    # Longest first, so a form that contains another is masked whole.
    pattern = re.compile("|".join(re.escape(f) for f in sorted(forms, key=lambda f: (-len(f), f))))
    return [match.span() for match in pattern.finditer(text)]


def longest_echo(secret: str) -> int:
    """The most bytes an echo of `secret` can take: each character JSON-escaped inside the deepest nested document
    (`\\\\u0041` one document deep, a surrogate pair for one outside the BMP; a quote or a backslash doubles its
    backslashes at each level) or percent-encoded, whichever is longer."""
    nested_backslashes = 2 ** (JSON_VIEW_DEPTH - 1)
    return sum(
        max(
            (nested_backslashes + 5) * (2 if ord(c) > 0xFFFF else 1),
            2 * nested_backslashes if c in '"\\' else 0,
            3 * len(c.encode("utf-8", "surrogatepass")),
        )
        for c in secret
    )


def echo_heads(secrets: frozenset[str], masks: Masks | None) -> tuple[bytes, ...]:
    forms = [f.encode("utf-8", "surrogatepass") for f in (*masks.needles, *masks.nul_needles)] if masks else []
    forms += [s.encode(codec, "surrogatepass") for s in secrets for codec in ("utf-16-le", "utf-16-be")]
    return tuple(sorted(set(forms)))
