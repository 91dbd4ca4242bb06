"""A request's body sent in the same step as its head, as aiohttp does from Python 3.12 on.

aiohttp writes a request's body (and, coalesced with it, the head) from a task of its own. From Python 3.12 that
task starts eagerly, so a small body leaves at once; before 3.12 it starts on the event loop's next turn, after
every callback already queued. Requests that arrive together (16 streams started at once) were then all sent
upstream only once every one of them had been handled, and each stream's first byte waited that long: most of
the forward route's added time to first byte. Here the body writer runs now up to its first real wait (for a
body that fits the socket's buffer, to its end), and aiohttp's task gets what is left.
"""

from __future__ import annotations

import sys
from collections.abc import Coroutine, Generator
from typing import Any

import aiohttp


class EagerBodyRequest(aiohttp.ClientRequest):
    def write_bytes(self, *args: Any, **kwargs: Any) -> Coroutine[Any, Any, None]:
        return started(super().write_bytes(*args, **kwargs))


def started(coro: Coroutine[Any, Any, None]) -> Coroutine[Any, Any, None]:
    """`coro` run now up to its first wait; what is left of it, as a coroutine for the task aiohttp makes."""
    try:
        waiting = coro.send(None)
    except StopIteration:
        return _done()
    except Exception as exc:  # as a task started eagerly would: the failure is the task's
        return _failed(exc)
    return _resumed(coro, waiting)


async def _done() -> None:
    return None


async def _failed(exc: Exception) -> None:
    raise exc


async def _resumed(coro: Coroutine[Any, Any, None], waiting: Any) -> None:
    await _Rest(coro, waiting)


class _Rest:
    """The rest of a coroutine already started: what it waits on is handed to the task running this, and what the
    task sends or throws back goes on to the coroutine (`yield from`, from a point past its start)."""

    def __init__(self, coro: Coroutine[Any, Any, None], waiting: Any) -> None:
        self.coro = coro
        self.waiting = waiting

    def __await__(self) -> Generator[Any, Any, None]:
        waiting = self.waiting
        while True:
            try:
                value = yield waiting
            except BaseException as exc:
                try:
                    waiting = self.coro.throw(exc)
                except StopIteration:
                    return
            else:
                try:
                    waiting = self.coro.send(value)
                except StopIteration:
                    return


# From 3.12 aiohttp starts the body's task eagerly itself.
REQUEST_CLASS: type[aiohttp.ClientRequest] = EagerBodyRequest if sys.version_info < (3, 12) else aiohttp.ClientRequest
