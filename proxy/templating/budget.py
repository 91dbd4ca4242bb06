"""The budget a template render runs under: time, the size of every value it builds, call depth.

Renders run on the event loop, so a template must not be able to stall it or fill memory. Python
cannot interrupt a running render, so the budget is cooperative: the sandbox calls `tick()` on each
loop iteration, function or macro call, intercepted operator and guarded filter, and the operations
that can grow a value by orders of magnitude in one step (`**`, `*`, `+`, `%`, `~`, padding and
replacing, joining, format widths) estimate the size of their result *before* computing it. A value
of a container counts roughly as the text it prints as (`weight`), so a list of one big string
repeated a thousand times is as big as the string a thousand times.

The clock is only read between steps, so no single step may be long: every value a step builds
(repeated or joined strings, a filter's or a string method's copy of its text) is counted, before it
is built, against what the whole render may build (`built`), and the filters that work through a text
word by word or line by line in Python (`title`, `pprint`, `striptags`…) take at most
`TEMPLATE_MAX_ITEMS` characters. A 10 MB `title` was one call of several seconds that no clock saw.

The sizes values print as and the operations that grow them are estimated in `proxy.templating.sizes`; the
method calls and filters held to the budget are in `proxy.templating.calls`.

Everything here raises `BudgetExceeded`; `proxy.templating.environment` turns it into the call's error (or, for
constant expressions found while compiling, into a refusal of the template).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from proxy.config.settings import (
    TEMPLATE_MAX_BUILT_CHARS,
    TEMPLATE_MAX_CALL_DEPTH,
    TEMPLATE_MAX_CHARS,
    TEMPLATE_RENDER_TIME_S,
)


class BudgetExceeded(Exception):
    """A render (or a constant expression) passed one of its bounds; the message says which."""


@dataclass
class RenderBudget:
    deadline: float
    depth: int = 0
    built: int = 0  # characters of every value built so far, added up


# The budget of the render running in this context. Renders are synchronous, so one context holds
# at most one; a contextvar (rather than a global) keeps renders in worker threads apart too.
_CURRENT: ContextVar[RenderBudget | None] = ContextVar("proxy_render_budget", default=None)


def start(seconds: float = TEMPLATE_RENDER_TIME_S) -> Any:
    """Open a budget for one render; pass the result to `finish`."""
    return _CURRENT.set(RenderBudget(time.perf_counter() + seconds))


def finish(token: Any) -> None:
    _CURRENT.reset(token)


def tick() -> None:
    budget = _CURRENT.get()
    if budget is not None and time.perf_counter() > budget.deadline:
        raise BudgetExceeded(f"the template took longer than {TEMPLATE_RENDER_TIME_S:g}s to render")


def enter_call() -> RenderBudget | None:
    """Count a nested call (macros calling themselves); the caller decrements `depth` afterwards."""
    tick()
    budget = _CURRENT.get()
    if budget is not None:
        budget.depth += 1
        if budget.depth > TEMPLATE_MAX_CALL_DEPTH:
            budget.depth -= 1
            raise BudgetExceeded(
                f"calls nest deeper than {TEMPLATE_MAX_CALL_DEPTH} levels (a macro that calls itself without end?)"
            )
    return budget


def metered(iterable: Iterable[Any]) -> Iterator[Any]:
    """What every `{% for %}` iterates over: the loop stops when the budget's time is up."""
    for item in iterable:
        tick()
        yield item


def metered_output(pieces: Iterable[str], limit: int = TEMPLATE_MAX_CHARS) -> Iterator[str]:
    total = 0
    for piece in pieces:
        total += len(piece)
        if total > limit:
            raise BudgetExceeded(f"the template rendered more than {limit:,} characters")
        yield piece


def too_big(what: str, size: float, limit: int = TEMPLATE_MAX_CHARS, unit: str = "characters") -> BudgetExceeded:
    value = "a number" if unit == "digits" else "a value"
    return BudgetExceeded(f"{what} would make {value} of about {size:,.0f} {unit} (the limit is {limit:,})")


def built(what: str, size: float) -> None:
    """`what` is about to build a value of about `size` characters: refused, before it is built, when that
    value alone or everything the render has built with it would pass the budget."""
    if size > TEMPLATE_MAX_CHARS:
        raise too_big(what, size)
    budget = _CURRENT.get()
    if budget is None:  # a constant worked out while compiling: only the value's own size is bounded
        return
    budget.built += int(size)
    if budget.built > TEMPLATE_MAX_BUILT_CHARS:
        raise BudgetExceeded(
            f"{what} would bring the characters this render has built to about {budget.built:,} "
            f"(the limit is {TEMPLATE_MAX_BUILT_CHARS:,} for all of a render's values together)"
        )
