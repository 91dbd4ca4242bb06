"""The sessions held in memory: a bounded LRU of recent ones, each with what its next turn needs.

Everything else is read from the database when asked for. A session in use (a turn, a finish in flight:
its lock is held or waited for) is never evicted, so the cache may run over its size for as long as more
sessions than that are busy at once. An evicted session that may still take turns leaves its cassette opening
behind (whether it records or replays, and where its replay stands): the database cannot give that back, and a
fresh opening would replay what the session itself recorded, or replay its cassette from the start again.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from proxy.cassettes.handles import CassetteHandle
from proxy.config.settings import DEFAULT_SESSION_CACHE_SIZE
from proxy.sessions.entities import PENDING, Session


@dataclass
class Active:
    """A session in memory: the session, its lock (turns of one session run in order), its cassette opening
    (play-back positions), how many turns it has, and the past turns templates see."""

    session: Session
    turn_count: int
    past: list[dict[str, Any]]  # {"input", "output"} of each GENERATED turn, in order
    handle: CassetteHandle | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0  # callers holding or waiting for the lock
    saved: str | None = None  # the session's document as last queued for its row: unchanged, not written again

    @property
    def busy(self) -> bool:
        return self.users > 0 or self.lock.locked()

    @contextlib.asynccontextmanager
    async def hold(self) -> AsyncIterator[None]:
        """The session's lock, its caller counted as a user from before it waits for the lock until done, so the
        session is never evicted in between."""
        self.users += 1
        try:
            async with self.lock:
                yield
        finally:
            self.users -= 1


class SessionCache:
    def __init__(self, size: int = DEFAULT_SESSION_CACHE_SIZE) -> None:
        self.size = size
        self._entries: OrderedDict[str, Active] = OrderedDict()
        self._handles: dict[str, CassetteHandle] = {}  # of evicted sessions still PENDING

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, session_id: str) -> bool:  # a look that does not count as a use
        return session_id in self._entries

    def get(self, session_id: str) -> Active | None:
        entry = self._entries.get(session_id)
        if entry is not None:
            self._entries.move_to_end(session_id)
        return entry

    def take_handle(self, session_id: str) -> CassetteHandle | None:
        """The cassette opening an evicted session left behind, if any (it goes back with the session)."""
        return self._handles.pop(session_id, None)

    def put(self, entry: Active) -> Active:
        """Hold `entry` (or the one already held for its session, which wins: it may be in use)."""
        held = self._entries.get(entry.session.id)
        if held is not None:
            self._entries.move_to_end(entry.session.id)
            return held
        self._entries[entry.session.id] = entry
        self._evict()
        return entry

    def _evict(self) -> None:
        over = len(self._entries) - self.size
        if over <= 0:
            return
        idle = []
        for session_id, entry in self._entries.items():  # oldest first
            if not entry.busy:
                idle.append(session_id)
                if len(idle) == over:
                    break
        for session_id in idle:
            gone = self._entries.pop(session_id)
            if gone.handle is not None and gone.session.status == PENDING and not gone.session.deleted:
                self._handles[session_id] = gone.handle
