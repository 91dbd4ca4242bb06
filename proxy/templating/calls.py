"""The string methods and filters a template calls, held to the render budget: what each would build is
estimated before it runs, and the filters that walk their value item by item are held to TEMPLATE_MAX_ITEMS."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from functools import wraps
from json.encoder import encode_basestring_ascii
from typing import Any

from jinja2.filters import make_attrgetter

from proxy.config.settings import TEMPLATE_MAX_CHARS, TEMPLATE_MAX_ITEMS
from proxy.templating.budget import BudgetExceeded, built, tick
from proxy.templating.sizes import CONTAINERS, check_format, check_printf, is_int, replace_size, text_of, weight

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
        size = width if is_int(width) else 0
    elif name == "expandtabs":
        tabsize = args[0] if args else kwargs.get("tabsize", 8)
        tabs = owner.count("\t") if isinstance(owner, str) else owner.count(b"\t")
        size = len(owner) + tabs * (tabsize if is_int(tabsize) else 0)
    elif name == "replace" and len(args) >= 2 and isinstance(owner, str):
        size = replace_size(owner, args[0], args[1], args[2] if len(args) > 2 else kwargs.get("count", -1))
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
            size = weight(value) if isinstance(value, CONTAINERS) or copies_text else 0
        if size:
            built(f"the `{name}` filter", size)
        return func(*args, **kwargs)

    return guarded


def _center(value: Any, width: Any = 80) -> int:
    return max(weight(value), width if is_int(width) else 0)


def _indent(value: Any, width: Any = 4, *args: Any, **kwargs: Any) -> int:
    text = text_of(value)
    step = len(width) if isinstance(width, str) else width if is_int(width) else 0
    return len(text) + step * (text.count("\n") + 2)


def _replace(value: Any, old: Any, new: Any, count: Any = None) -> int:
    return replace_size(value, old, new, count)


def _wordwrap(value: Any, width: Any = 79, *args: Any, **kwargs: Any) -> int:
    text = text_of(value)
    wrapstring = kwargs.get("wrapstring", args[1] if len(args) > 1 else None)
    lines = len(text) // max(width if is_int(width) else 1, 1) + text.count("\n") + 1
    return len(text) + lines * len(text_of(wrapstring or "\n"))


def _format(value: Any, *args: Any, **kwargs: Any) -> int:
    return check_printf(text_of(value), kwargs or args)


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
    if isinstance(value, CONTAINERS):
        return weight(value, text_size=lambda text: _html_escaped_size(repr(text)))
    return _html_escaped_size(value if isinstance(value, str) else str(value))


def _tojson(value: Any, indent: Any = None) -> int:
    size = weight(value, text_size=_json_text_size)
    return size * (1 + indent) if is_int(indent) and indent > 0 else size


_JSON_MAX_GROWTH = 14  # `🚀` → `"\ud83d\ude80"`: no text grows more in `tojson`'s output, quotes included


def _guard_tojson(func: Callable[..., Any]) -> Callable[..., Any]:
    """`tojson` of a small value is made, then counted as long as it came out (it cannot pass the value cap,
    however it escapes): cheaper than counting its escapes one text at a time, which a big value is, first."""

    @wraps(func)
    def guarded(eval_ctx: Any, value: Any, indent: Any = None) -> Any:
        tick()
        spread = 1 + indent if is_int(indent) and indent > 0 else 1
        if weight(value) * _JSON_MAX_GROWTH * spread > TEMPLATE_MAX_CHARS:
            built("the `tojson` filter", _tojson(value, indent))
            return func(eval_ctx, value, indent)
        made = func(eval_ctx, value, indent)
        built("the `tojson` filter", len(made))
        return made

    return guarded


def _rows(value: Any, count: Any, fill_with: Any = None) -> int:
    if is_int(count) and count > TEMPLATE_MAX_ITEMS:
        raise BudgetExceeded(f"the filter would make {count:,} rows (the limit is {TEMPLATE_MAX_ITEMS:,})")
    if fill_with is not None and is_int(count):
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
