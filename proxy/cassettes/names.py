"""Cassette file names: one per session key, unique even on a case-insensitive file system. Kept apart from the
cassette format so that the pytest plugin can name a test's folder without loading the server."""

from __future__ import annotations

import hashlib
import re

_UNSAFE = re.compile(r"[^a-z0-9._-]+")
_HASH_SUFFIX = re.compile(r"-[0-9a-f]{8}\Z")  # the shape of the suffix below
MAX_PLAIN_NAME = 100
HASHED_STEM = 80


def file_name(key: str) -> str:
    """The file name of a session key's cassette, unique per key even on a case-insensitive file system.

    A key that is lower-case and safe (`a-z 0-9 . _ -`, neither starting nor ending with `.` or `_`), at most
    100 characters long and not ending in `-` and 8 hex digits is its own name. Any other key is written in that
    alphabet, lower-cased, cut to 80 characters, and given `-` and the first 8 hex digits of the SHA-256 of
    the key as it was. So a plain name never has the shape of a hashed one, and two keys share a name only
    if they share the hash as well; every name is lower-case, so case never tells two files apart."""
    plain = 0 < len(key) <= MAX_PLAIN_NAME and key.strip("._") == key
    if plain and _UNSAFE.search(key) is None and _HASH_SUFFIX.search(key) is None:
        return key
    safe = _UNSAFE.sub("_", key.lower()).strip("._") or "cassette"
    digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()  # any str, one-to-one
    return f"{safe[:HASHED_STEM]}-{digest[:8]}"
