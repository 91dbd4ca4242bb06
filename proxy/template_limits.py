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

Everything here raises `BudgetExceeded`; `proxy.templating` turns it into the call's error (or, for
constant expressions found while compiling, into a refusal of the template).
"""

from __future__ import annotations

import itertools
import math
import re
import string
import time
from collections.abc import Callable, Iterable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from functools import wraps
from json.encoder import encode_basestring_ascii
from typing import Any

from jinja2.filters import make_attrgetter

from proxy.settings import (
    JSON_MAX_NUMBER_DIGITS,
    TEMPLATE_MAX_BUILT_CHARS,
    TEMPLATE_MAX_CALL_DEPTH,
    TEMPLATE_MAX_CHARS,
    TEMPLATE_MAX_ITEMS,
    TEMPLATE_RENDER_TIME_S,
)

MAX_INT_BITS = int(JSON_MAX_NUMBER_DIGITS / math.log10(2))
_CONTAINERS = (list, tuple, dict, set, frozenset)


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


# -- sizes -----------------------------------------------------------------------------------


def _too_big(what: str, size: float, limit: int = TEMPLATE_MAX_CHARS, unit: str = "characters") -> BudgetExceeded:
    value = "a number" if unit == "digits" else "a value"
    return BudgetExceeded(f"{what} would make {value} of about {size:,.0f} {unit} (the limit is {limit:,})")


def built(what: str, size: float) -> None:
    """`what` is about to build a value of about `size` characters: refused, before it is built, when that
    value alone or everything the render has built with it would pass the budget."""
    if size > TEMPLATE_MAX_CHARS:
        raise _too_big(what, size)
    budget = _CURRENT.get()
    if budget is None:  # a constant worked out while compiling: only the value's own size is bounded
        return
    budget.built += int(size)
    if budget.built > TEMPLATE_MAX_BUILT_CHARS:
        raise BudgetExceeded(
            f"{what} would bring the characters this render has built to about {budget.built:,} "
            f"(the limit is {TEMPLATE_MAX_BUILT_CHARS:,} for all of a render's values together)"
        )


def weight(value: Any, limit: int = TEMPLATE_MAX_CHARS, text_size: Callable[[Any], int] = len) -> int:
    """Roughly how many characters `value` prints as; stops counting once past `limit`. Containers
    seen twice (`[l, l, l]`) are counted from a memo, so the walk costs one visit per object. A text
    counts as `text_size` says (its length, or its length once escaped)."""
    if isinstance(value, str | bytes | bytearray):
        return text_size(value)
    if not isinstance(value, _CONTAINERS):
        return _scalar_weight(value)
    memo: dict[int, int] = {}
    try:
        return _container_weight(value, memo, limit, text_size)
    except RecursionError:
        raise BudgetExceeded("a value nests too deeply to print") from None


def _scalar_weight(value: Any) -> int:
    if isinstance(value, bool) or value is None:
        return 5
    if isinstance(value, int):
        return value.bit_length() // 3 + 1 + (value < 0)
    return 24  # floats, undefined names, other objects: their text is short


def _container_weight(value: Any, memo: dict[int, int], limit: int, text_size: Callable[[Any], int]) -> int:
    known = memo.get(id(value))
    if known is not None:
        return known
    # A dict's keys and values are read apart: a pair from `items()` is a new tuple each time, whose id
    # the memo could mistake for one seen before.
    items: Iterable[Any] = itertools.chain.from_iterable(value.items()) if isinstance(value, dict) else value
    total = 2
    for item in items:
        if isinstance(item, str | bytes | bytearray):
            total += text_size(item) + 2
        elif isinstance(item, _CONTAINERS):
            total += _container_weight(item, memo, limit, text_size) + 2
        else:
            total += _scalar_weight(item) + 2
        if total > limit:
            return total  # far enough: the caller refuses
    memo[id(value)] = total
    return total


def check_binop(operator: str, left: Any, right: Any) -> int:
    """Refuse `left <operator> right` when its result would pass the budget, before computing it.
    Returns about how many characters the result prints as (0 when it cannot grow)."""
    if operator == "**":
        return _check_power(left, right)
    if operator == "*":
        if _is_int(left) and _is_int(right):
            bits = left.bit_length() + right.bit_length()
            if bits > MAX_INT_BITS:
                raise _too_big("`*`", bits * math.log10(2), JSON_MAX_NUMBER_DIGITS, "digits")
            return bits // 3
        if _is_int(left) or _is_int(right):
            count, sequence = (left, right) if _is_int(left) else (right, left)
            if isinstance(sequence, str | bytes | list | tuple) and count > 1:
                size = weight(sequence) * count
                built("`*`", size)
                return size
    elif operator == "+":
        if isinstance(left, str | bytes | list | tuple) and isinstance(right, str | bytes | list | tuple):
            size = weight(left) + weight(right)
            built("`+`", size)
            return size
    elif operator == "%" and isinstance(left, str):
        size = check_printf(left, right)
        built("`%` formatting", size)
        return size
    return 0


def _is_int(value: Any) -> bool:
    return isinstance(value, int)


def _check_power(base: Any, exponent: Any) -> int:
    if not (_is_int(base) and _is_int(exponent)) or exponent <= 1 or abs(base) <= 1:
        return 0  # floats overflow with an error of their own; a negative exponent makes a float
    if exponent.bit_length() > 64:
        raise BudgetExceeded(
            f"`**` would make a number of more than {JSON_MAX_NUMBER_DIGITS:,} digits (the exponent alone has "
            f"{exponent.bit_length():,} bits)"
        )
    digits = exponent * math.log10(abs(base))
    if digits > JSON_MAX_NUMBER_DIGITS:
        raise _too_big("`**`", digits, JSON_MAX_NUMBER_DIGITS, "digits")
    return int(digits)


_PRINTF_FIELD = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\*|\d+)?(?:\.(\*|\d+))?")
_NUMBER = re.compile(r"\d+")


def _field_width(digits: str | None) -> int:
    if not digits:
        return 0
    if digits == "*":
        raise BudgetExceeded("a `*` width or precision in a % format is not allowed in templates")
    if len(digits) > 9:
        raise BudgetExceeded(f"a format width of {len(digits)} digits is wider than the {TEMPLATE_MAX_CHARS:,} limit")
    return int(digits)


def _arguments_weight(args: Any) -> int:
    if isinstance(args, tuple | list):
        return max((weight(a) for a in args), default=0)
    if isinstance(args, dict):
        return max((weight(v) for v in args.values()), default=0)
    return weight(args)


def check_printf(fmt: str, args: Any) -> int:
    """About how long `fmt % args` is: every field counts its width and precision, and at most the heaviest
    argument."""
    fields = 0
    size = len(fmt)
    for match in _PRINTF_FIELD.finditer(fmt):
        fields += 1
        size += _field_width(match.group(1)) + _field_width(match.group(2))
    if fields:
        size += fields * _arguments_weight(args)
    return size


def check_format(fmt: str, args: Any, kwargs: Any) -> int:
    """About how long `fmt.format(...)` is: the same sum as for `%`, for the fields of a format string."""
    size = len(fmt)
    fields = 0
    try:
        parsed = list(string.Formatter().parse(fmt))
    except ValueError:
        return 0  # malformed: format() itself raises the error
    for _literal, name, spec, _conversion in parsed:
        if name is None:
            continue
        fields += 1
        if spec and "{" in spec:
            raise BudgetExceeded("nested fields in a format spec are not allowed in templates")
        size += sum(_field_width(n) for n in _NUMBER.findall(spec or ""))
    if fields:
        size += fields * max(_arguments_weight(args), _arguments_weight(kwargs))
    return size


def printable(value: Any) -> None:
    """Refuse to print a container whose text would pass the budget (`[l, l, l]` of big lists)."""
    if isinstance(value, _CONTAINERS):
        size = weight(value)
        if size > TEMPLATE_MAX_CHARS:
            raise BudgetExceeded(f"a value of about {size:,} characters cannot be printed")


def _text(value: Any) -> str:
    printable(value)
    return str(value)


def _replace_size(text: Any, old: Any, new: Any, count: Any) -> int:
    text, old, new = _text(text), _text(old), _text(new)
    found = len(text) + 1 if old == "" else text.count(old)
    if isinstance(count, int) and count >= 0:
        found = min(found, count)
    return len(text) + found * max(0, len(new) - len(old))


def bounded_concat(*parts: Any) -> str:
    """`a ~ b`: Jinja's concatenation, with the size checked before joining."""
    tick()
    built("`~`", sum(weight(p) for p in parts))
    return "".join(map(str, parts))


# -- calls ------------------------------------------------------------------------------------

_PADDING = frozenset({"center", "ljust", "rjust", "zfill"})
# Methods that copy their whole text (changing its case, or cutting it into a list of pieces).
_COPYING = frozenset({"upper", "lower", "title", "capitalize", "swapcase", "casefold", "split", "rsplit", "splitlines"})


def check_method_call(obj: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:
    """A method of a string that can grow it (`"a".center(10**9)`): refuse before it runs. Returns the
    arguments to call with (an iterable given to `join` is read once, here)."""
    method = getattr(obj, "__wrapped__", obj)  # the sandbox wraps `str.format` in a function of its own
    owner = getattr(method, "__self__", None)
    if not isinstance(owner, str | bytes | bytearray):
        return args
    name = getattr(method, "__name__", "")
    size = 0
    if name in ("format", "format_map") and isinstance(owner, str):
        size = check_format(
            owner, args if name == "format" else (), kwargs if name == "format" else args[0] if args else {}
        )
    elif name in _COPYING:
        size = len(owner)
    elif name in _PADDING:
        width = args[0] if args else kwargs.get("width", 0)
        size = width if _is_int(width) else 0
    elif name == "expandtabs":
        tabsize = args[0] if args else kwargs.get("tabsize", 8)
        tabs = owner.count("\t") if isinstance(owner, str) else owner.count(b"\t")
        size = len(owner) + tabs * (tabsize if _is_int(tabsize) else 0)
    elif name == "replace" and len(args) >= 2 and isinstance(owner, str):
        size = _replace_size(owner, args[0], args[1], args[2] if len(args) > 2 else kwargs.get("count", -1))
    elif name == "join" and args:
        items = list(args[0])
        size = sum(weight(i) for i in items) + len(owner) * len(items)
        args = (items, *args[1:])
    elif name == "translate" and args and isinstance(args[0], dict):
        longest = max((len(v) for v in args[0].values() if isinstance(v, str)), default=1)
        size = len(owner) * longest
    if size:
        built(f"{name}()", size)
    return args


def _value_arg(func: Callable[..., Any]) -> int:
    """Where the filtered value sits in a filter's arguments (after an injected context, if any)."""
    return 0 if getattr(func, "jinja_pass_arg", None) is None else 1  # set by pass_context & co.


def _guard(name: str, func: Callable[..., Any], estimate: Callable[..., int] | None) -> Callable[..., Any]:
    skip = _value_arg(func)

    copies_text = name not in _KEEPING_TEXT

    @wraps(func)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        tick()
        if estimate is not None:
            size = estimate(*args[skip:], **kwargs)
        else:  # a filter that prints its value: a container counts as its text, a text as its copy
            value = args[skip] if len(args) > skip else None
            size = weight(value) if isinstance(value, _CONTAINERS) or copies_text else 0
        if size:
            built(f"the `{name}` filter", size)
        return func(*args, **kwargs)

    return guarded


def _center(value: Any, width: Any = 80) -> int:
    return max(weight(value), width if _is_int(width) else 0)


def _indent(value: Any, width: Any = 4, *args: Any, **kwargs: Any) -> int:
    text = _text(value)
    step = len(width) if isinstance(width, str) else width if _is_int(width) else 0
    return len(text) + step * (text.count("\n") + 2)


def _replace(value: Any, old: Any, new: Any, count: Any = None) -> int:
    return _replace_size(value, old, new, count)


def _wordwrap(value: Any, width: Any = 79, *args: Any, **kwargs: Any) -> int:
    text = _text(value)
    wrapstring = kwargs.get("wrapstring", args[1] if len(args) > 1 else None)
    lines = len(text) // max(width if _is_int(width) else 1, 1) + text.count("\n") + 1
    return len(text) + lines * len(_text(wrapstring or "\n"))


def _format(value: Any, *args: Any, **kwargs: Any) -> int:
    return check_printf(_text(value), kwargs or args)


# What escaping adds to a text: HTML's entities (`&` → `&amp;`), JSON's escapes (`<` → `\u003c`, as `tojson`
# writes them, `"` → `\"`, a control character or one outside ASCII → `\uXXXX`, one outside the BMP → two).
_HTML_GROWTH = {"&": 4, '"': 4, "'": 4, "<": 3, ">": 3}
_ENCODED_MAX_CHARS = 4096  # a larger text is counted in passes over it, not encoded (12 times its size at worst)
_NOT_CONTROL_BYTES = bytes(range(32, 256))
_NOT_LEAD_BYTES = bytes(range(0xC0))  # a UTF-8 lead byte starts a character outside ASCII
_NOT_ASTRAL_LEAD_BYTES = bytes(range(0xF0))  # and one from 0xF0 a character outside the BMP


def _grown(text: str, growth: dict[str, int]) -> int:
    return len(text) + sum(extra * text.count(char) for char, extra in growth.items())


def _html_escaped_size(text: Any) -> int:
    """How long `text` is once HTML-escaped (`escape`, `forceescape`), counted in C passes over it."""
    return _grown(text, _HTML_GROWTH) if isinstance(text, str) else len(text)


def _json_text_size(text: Any) -> int:
    """How long `text` is as a JSON string in `tojson`'s output, quotes included."""
    if not isinstance(text, str):
        return len(text) * 6 + 2  # bytes print as their repr
    html = 5 * (text.count("<") + text.count(">") + text.count("&") + text.count("'"))
    if len(text) <= _ENCODED_MAX_CHARS:  # small: json's own C encoder says it exactly, and quickly
        return len(encode_basestring_ascii(text)) + html
    raw = text.encode("utf-8", "surrogatepass")
    quoted = text.count('"') + text.count("\\")  # `\"`, `\\`: one more character each
    short = sum(map(text.count, "\n\r\t\b\f"))  # `\n` and the like: one more each
    controls = len(raw.translate(None, _NOT_CONTROL_BYTES)) - short + text.count("\x7f")  # `\u00XX`: five more
    size = len(text) + 2 + html + quoted + short + 5 * controls
    if not text.isascii():
        size += 5 * len(raw.translate(None, _NOT_LEAD_BYTES)) + 6 * len(raw.translate(None, _NOT_ASTRAL_LEAD_BYTES))
    return size


def _escape(value: Any) -> int:
    """A text grows by its entities; a container is escaped as its printed text, where each text is its repr."""
    if isinstance(value, _CONTAINERS):
        return weight(value, text_size=lambda text: _html_escaped_size(repr(text)))
    return _html_escaped_size(value if isinstance(value, str) else str(value))


def _tojson(value: Any, indent: Any = None) -> int:
    size = weight(value, text_size=_json_text_size)
    return size * (1 + indent) if _is_int(indent) and indent > 0 else size


_JSON_MAX_GROWTH = 14  # `🚀` → `"\ud83d\ude80"`: no text grows more in `tojson`'s output, quotes included


def _guard_tojson(func: Callable[..., Any]) -> Callable[..., Any]:
    """`tojson` of a small value is made, then counted as long as it came out (it cannot pass the value cap,
    however it escapes): cheaper than counting its escapes one text at a time, which a big value is, first."""

    @wraps(func)
    def guarded(eval_ctx: Any, value: Any, indent: Any = None) -> Any:
        tick()
        spread = 1 + indent if _is_int(indent) and indent > 0 else 1
        if weight(value) * _JSON_MAX_GROWTH * spread > TEMPLATE_MAX_CHARS:
            built("the `tojson` filter", _tojson(value, indent))
            return func(eval_ctx, value, indent)
        made = func(eval_ctx, value, indent)
        built("the `tojson` filter", len(made))
        return made

    return guarded


def _rows(value: Any, count: Any, fill_with: Any = None) -> int:
    if _is_int(count) and count > TEMPLATE_MAX_ITEMS:
        raise BudgetExceeded(f"the filter would make {count:,} rows (the limit is {TEMPLATE_MAX_ITEMS:,})")
    if fill_with is not None and _is_int(count):
        return weight(fill_with) * count
    return 0


def _guard_join(func: Callable[..., Any]) -> Callable[..., Any]:
    @wraps(func)
    def guarded(eval_ctx: Any, value: Iterable[Any], d: str = "", attribute: Any = None) -> Any:
        tick()
        items = list(value)
        if attribute is not None:
            items = list(map(make_attrgetter(eval_ctx.environment, attribute), items))
        built("the `join` filter", sum(weight(i) for i in items) + len(str(d)) * len(items))
        return func(eval_ctx, items, d)

    return guarded


_ESTIMATES: dict[str, Callable[..., int]] = {
    "e": _escape,
    "escape": _escape,
    "forceescape": _escape,
    "center": _center,
    "indent": _indent,
    "replace": _replace,
    "wordwrap": _wordwrap,
    "format": _format,
    "batch": _rows,
    "slice": _rows,
}
# Filters that print their value (a container as its text): checked for the container's weight.
_PRINTING = ("capitalize", "lower", "pprint", "string", "striptags", "title", "trim", "truncate", "upper",
             "urlencode", "wordcount", "xmlattr")  # fmt: skip
# Printing filters that, given a text, build no copy of it: the text itself, a cut of 255 characters, a count.
_KEEPING_TEXT = ("string", "truncate", "wordcount")
# HTML helpers with no use in a request body and an output no estimate bounds well.
DROPPED_FILTERS = ("urlize",)
# Filters that walk their value item by item, often calling back into Python for each one (`map`, `select`,
# `sort` with a key, `title` for each word of a text): held to TEMPLATE_MAX_ITEMS items (a text's characters)
# and ticked per item, so a 10 MB string turned into a list of 10 million characters, or 5 million words to
# capitalise, cannot run for seconds between two checks of the clock.
_ITEM_WALKING = ("list", "map", "select", "reject", "selectattr", "rejectattr", "sort", "unique", "dictsort",
                 "groupby", "reverse", "sum", "min", "max", "join", "batch", "slice", "wordwrap", "title", "pprint",
                 "striptags", "indent", "urlencode", "wordcount", "xmlattr")  # fmt: skip
_SIZED = (str, bytes, list, tuple, dict, set, frozenset)


def _items_over(name: str, count: int) -> BudgetExceeded:
    return BudgetExceeded(f"the `{name}` filter would walk over {count:,} items (the limit is {TEMPLATE_MAX_ITEMS:,})")


def counted(name: str, value: Any) -> Any:
    """`value` as a filter may walk it: a sized one refused when too long, any other iterable metered."""
    if isinstance(value, _SIZED):
        if len(value) > TEMPLATE_MAX_ITEMS:
            raise _items_over(name, len(value))
        return value
    if isinstance(value, Iterable):
        return _metered_items(name, value)
    return value


def _metered_items(name: str, iterable: Iterable[Any]) -> Iterator[Any]:
    for count, item in enumerate(iterable, 1):
        if count > TEMPLATE_MAX_ITEMS:
            raise _items_over(name, count)
        if not count & 63:  # the clock every 64 items: cheap, and still well inside the time budget
            tick()
        yield item


def _guard_items(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    skip = _value_arg(func)

    @wraps(func)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        tick()
        if len(args) > skip:
            args = (*args[:skip], counted(name, args[skip]), *args[skip + 1 :])
        return func(*args, **kwargs)

    return guarded


def guarded_filters(filters: dict[str, Callable[..., Any]]) -> dict[str, Callable[..., Any]]:
    """The environment's filters with the growing ones held to the budget."""
    guarded = {name: f for name, f in filters.items() if name not in DROPPED_FILTERS}
    for name, estimate in _ESTIMATES.items():
        guarded[name] = _guard(name, filters[name], estimate)
    for name in _PRINTING:
        guarded[name] = _guard(name, filters[name], None)
    guarded["join"] = _guard_join(filters["join"])
    guarded["tojson"] = _guard_tojson(filters["tojson"])
    for name in _ITEM_WALKING:
        guarded[name] = _guard_items(name, guarded[name])
    return guarded
