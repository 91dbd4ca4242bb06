"""Record modes, with vcrpy's names and meanings, plus `off`."""

from __future__ import annotations

from enum import StrEnum

# A request header that sets the record mode for that one call (forward, turn, testConnection); never forwarded.
RECORD_MODE_HEADER = "X-Proxy-Record-Mode"


class RecordMode(StrEnum):
    NONE = "none"  # replay only; a miss fails
    ONCE = "once"  # replay a cassette that existed when opened; record every call into a new one
    NEW_EPISODES = "new_episodes"  # replay hits, record misses
    ALL = "all"  # always call live and re-record
    OFF = "off"  # live; cassettes untouched

    @classmethod
    def parse(cls, value: object, field: str = "record_mode") -> RecordMode:
        from proxy.errors import InvalidField

        valid = ", ".join(m.value for m in cls)
        # YAML 1.1 reads a bare `off`, `no` or `false` as false, and `on`, `yes` or `true` as true.
        if value is False:
            return cls.OFF
        if value is True:
            raise InvalidField(
                field,
                f"true is not a record mode (YAML reads a bare on, yes or true as true); valid modes are: {valid}",
            )
        try:
            return cls(str(value).lower())
        except ValueError:
            raise InvalidField(field, f"{value!r} is not a valid record mode; valid modes are: {valid}") from None


def call_mode(value: str | None) -> RecordMode | None:
    """The per-call mode a request asks for with `X-Proxy-Record-Mode`, if any."""
    if value is None:
        return None
    return RecordMode.parse(value.strip(), f"header {RECORD_MODE_HEADER}")
