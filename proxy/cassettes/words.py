"""Counts in words, for what the CLI prints: `1 turn`, `2 turns`."""

from __future__ import annotations


def noun(count: int, singular: str, plural: str | None = None) -> str:
    return singular if count == 1 else plural or f"{singular}s"


def counted(count: int, singular: str, plural: str | None = None) -> str:
    return f"{count} {noun(count, singular, plural)}"
