"""One opening of a cassette: its record mode, its play-back positions, and why a miss was not recorded;
`CassetteExpired` is the miss an expired cassette's replay raises under `on_expired: fail`."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from proxy.cassettes.cassette import Cassette, Interaction
from proxy.config.record_mode import RecordMode
from proxy.engine.transports import CassetteMiss


class CassetteExpired(CassetteMiss):
    """A recording answers, but its cassette is older than `cassette_max_age` and `on_expired` is `fail`."""


@dataclass
class CassetteHandle:
    """One opening of a cassette: its mode, whether the cassette existed then, and its own play-back
    positions, so every new session of a test case replays its cassette from the start."""

    name: str
    mode: RecordMode
    existed: bool
    session_key: str
    repeat_last: bool = False  # forward route: once a request's answers are used up, the last one repeats
    expired: str | None = None  # on_expired fail: why a replay from this cassette is refused
    positions: dict[tuple[str, str, str, str], int] = field(default_factory=dict)

    @property
    def replays(self) -> bool:
        return self.mode in (RecordMode.NONE, RecordMode.NEW_EPISODES) or (
            self.mode is RecordMode.ONCE and self.existed
        )

    @property
    def records(self) -> bool:
        return self.mode in (RecordMode.NEW_EPISODES, RecordMode.ALL) or (
            self.mode is RecordMode.ONCE and not self.existed
        )

    def from_the_start(self) -> CassetteHandle:
        """This opening with play-back positions of its own, from the start (an MCP session's)."""
        return replace(self, positions={})

    def for_call(self, mode: RecordMode | None) -> CassetteHandle:
        """This opening under another mode for one call (`X-Proxy-Record-Mode`): the same cassette, play-back
        positions and `once` decision. A per-call `all` records without clearing a cassette other calls share."""
        return self if mode is None or mode is self.mode else replace(self, mode=mode)

    def next_hit(self, cassette: Cassette, key: tuple[str, str, str, str]) -> Interaction | None:
        recorded = cassette.index.get(key)
        if not recorded:
            return None
        position = self.positions.get(key, 0)
        if position >= len(recorded) and not self.repeat_last:
            return None
        if self.expired:
            raise CassetteExpired(self.expired)
        if position < len(recorded):
            self.positions[key] = position + 1
            cassette.played.add(recorded[position])
            return cassette.interactions[recorded[position]]
        return cassette.interactions[recorded[-1]]

    def skip_own_recording(self, cassette: Cassette, key: tuple[str, str, str, str]) -> None:
        """What this handle just recorded is not for it to replay (a retry must reach the server)."""
        self.positions[key] = len(cassette.index.get(key, ()))


def why_not_recorded(handle: CassetteHandle) -> str:
    """The record mode's part in a miss, and the mode that would record the call."""
    if handle.mode is RecordMode.ONCE:
        return (
            "record mode once only replays a cassette that already existed when this server first opened it; "
            "record mode new_episodes adds new calls to it, all records it afresh"
        )
    return f"record mode {handle.mode.value} only replays; record mode once or new_episodes records missing calls"
