"""Cassette age: `cassette_max_age` (`30d`, `12h`, `90m`) and what `on_expired` does with an older cassette.

A cassette's age is that of its newest recorded interaction (`recorded_at`, which every recording carries),
or the file's modification time when none carries one (a cassette written by plain vcrpy). The recorded
time, not the file's, because a git checkout gives every file a fresh modification time.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from proxy.errors import InvalidField

_AGE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([dhm])\s*")
_UNIT_S = {"d": 86400.0, "h": 3600.0, "m": 60.0}


class OnExpired(StrEnum):
    WARN = "warn"  # log a line and replay
    FAIL = "fail"  # calls that would replay from it fail, naming the cassette and its age
    RERECORD = "rerecord"  # treated as mode `all` for this server run

    @classmethod
    def parse(cls, value: object, field: str = "on_expired") -> OnExpired:
        try:
            return cls(str(value).lower())
        except ValueError:
            valid = ", ".join(m.value for m in cls)
            raise InvalidField(field, f"{value!r} is not one of {valid}") from None


def parse_max_age(value: object, field: str = "cassette_max_age") -> float:
    """Seconds, from `30d`, `12h` or `90m`."""
    found = _AGE.fullmatch(str(value))
    if not found or float(found.group(1)) <= 0:
        raise InvalidField(field, f"{value!r} is not an age such as 30d, 12h or 90m (days, hours, minutes)")
    return float(found.group(1)) * _UNIT_S[found.group(2)]


def describe_age(seconds: float) -> str:
    if seconds >= 86400:
        return f"{seconds / 86400:.1f}d"
    if seconds >= 3600:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 60:.0f}m"


def parse_time(value: object) -> datetime | None:
    """A recorded time (ISO 8601, `Z` allowed), or None when it is not one."""
    try:
        parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def newest_recording(recorded_at: Iterable[Any], path: Path) -> datetime | None:
    """When the newest interaction was recorded, else when the file was last written (None: no file)."""
    times = [t for t in (parse_time(v) for v in recorded_at if v) if t is not None]
    if times:
        return max(times)
    try:
        return datetime.fromtimestamp(path.stat().st_mtime, UTC)
    except OSError:
        return None
