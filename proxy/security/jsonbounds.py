"""JSON parsing with bounds: nesting depth and number length.

Python's `json` raises RecursionError on input nested about a thousand deep (and needs a stack that
deep to get there), and ValueError on an integer over `sys.int_max_str_digits`, whose conversion is
quadratic. Both would surface as a 500. `loads` refuses such input with `JsonRefused`, a ValueError
(so a caller that treats any ValueError as "not JSON" stays correct), saying which bound it passed.

The checks are C-speed scans before the parse (no Python loop over bytes): a body with at most
`max_depth` brackets cannot nest deeper, so the common case costs two `count`s; otherwise the
bytes are cut down to quotes and brackets (`translate`), strings are dropped, and the depth is
summed with `itertools.accumulate`. A digit run over the limit is a substring search after mapping
digits to one byte; only when there is one does the parse check each number in Python.
"""

from __future__ import annotations

import json
from itertools import accumulate
from typing import Any

from proxy.config.settings import JSON_MAX_DEPTH, JSON_MAX_NUMBER_DIGITS


class JsonRefused(ValueError):
    """The text is (or may be) JSON, but over a bound; the message names the bound."""


_KEEP = b'"[]{}'
_NOT_KEPT = bytes(b for b in range(256) if b not in _KEEP)
_DELTA = [0] * 256
_DELTA[ord("[")] = _DELTA[ord("{")] = 1
_DELTA[ord("]")] = _DELTA[ord("}")] = -1
# Every digit becomes "0" and anything else a space: a long number is then a plain substring search
# (a regex for a digit run is fifteen times slower on a large body).
_DIGITS_ONLY = bytes(0x30 if 0x30 <= b <= 0x39 else 0x20 for b in range(256))
_LONG_RUN = b"0" * (JSON_MAX_NUMBER_DIGITS + 1)


def too_deep_message(max_depth: int = JSON_MAX_DEPTH) -> str:
    return f"JSON nested deeper than {max_depth} levels"


def long_number_message() -> str:
    return f"a JSON number with more than {JSON_MAX_NUMBER_DIGITS} digits"


def nesting_depth(raw: bytes) -> int:
    """The deepest bracket nesting outside strings (an upper bound for text that is not valid JSON)."""
    if b"\\\\" in raw:
        raw = raw.replace(b"\\\\", b"")  # escaped backslashes first, so `\\"` still ends a string
    if b'\\"' in raw:
        raw = raw.replace(b'\\"', b"")
    kept = raw.translate(None, _NOT_KEPT)  # quotes and brackets only
    # Dropping two adjacent quotes leaves every bracket inside or outside a string as it was; what is
    # left of the quotes (strings that hold brackets) is usually little.
    kept = kept.replace(b'""', b"")
    brackets = b"".join(kept.split(b'"')[::2]) if b'"' in kept else kept
    return max(accumulate(map(_DELTA.__getitem__, brackets)), default=0)


def _has_long_run(raw: bytes) -> bool:
    return _LONG_RUN in raw.translate(_DIGITS_ONLY)


def _bounded_int(literal: str) -> int:
    if len(literal.lstrip("-")) > JSON_MAX_NUMBER_DIGITS:
        raise JsonRefused(long_number_message())
    return int(literal)


def _bounded_float(literal: str) -> float:
    if len(literal) > JSON_MAX_NUMBER_DIGITS and _has_long_run(literal.encode()):
        raise JsonRefused(long_number_message())
    return float(literal)


def loads(text: str | bytes, max_depth: int = JSON_MAX_DEPTH) -> Any:
    """`json.loads` that raises JsonRefused for nesting over `max_depth` or a number over the digit
    limit; malformed JSON raises `json.JSONDecodeError` (or UnicodeDecodeError for bytes) as usual."""
    if isinstance(text, bytes | bytearray):
        text = text.decode(json.detect_encoding(text), "surrogatepass")  # what json.loads does with bytes
    raw = None
    if text.count("[") + text.count("{") > max_depth:
        raw = text.encode("utf-8", "surrogatepass")
        if nesting_depth(raw) > max_depth:
            raise JsonRefused(too_deep_message(max_depth))
    long_run = len(text) > JSON_MAX_NUMBER_DIGITS and _has_long_run(raw or text.encode("utf-8", "surrogatepass"))
    try:
        if long_run:  # maybe a long number, maybe a long string of digits: look at each number
            return json.loads(text, parse_int=_bounded_int, parse_float=_bounded_float)
        return json.loads(text)
    except RecursionError:  # within the depth bound, but the stack was already deep
        raise JsonRefused(too_deep_message(max_depth)) from None
