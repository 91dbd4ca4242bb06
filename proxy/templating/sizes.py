"""How big a template's values are (`weight`: about the text they print as), and the operators and string
formatting that could grow one, checked against the render budget before they compute."""

from __future__ import annotations

import itertools
import math
import re
import string
from collections.abc import Callable, Iterable
from typing import Any

from proxy.config.settings import JSON_MAX_NUMBER_DIGITS, TEMPLATE_MAX_CHARS
from proxy.templating.budget import BudgetExceeded, built, tick, too_big

MAX_INT_BITS = int(JSON_MAX_NUMBER_DIGITS / math.log10(2))
CONTAINERS = (list, tuple, dict, set, frozenset)


def weight(value: Any, limit: int = TEMPLATE_MAX_CHARS, text_size: Callable[[Any], int] = len) -> int:
    """Roughly how many characters `value` prints as; stops counting once past `limit`. Containers
    seen twice (`[l, l, l]`) are counted from a memo, so the walk costs one visit per object. A text
    counts as `text_size` says (its length, or its length once escaped)."""
    if isinstance(value, str | bytes | bytearray):
        return text_size(value)
    if not isinstance(value, CONTAINERS):
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
        elif isinstance(item, CONTAINERS):
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
        if is_int(left) and is_int(right):
            bits = left.bit_length() + right.bit_length()
            if bits > MAX_INT_BITS:
                raise too_big("`*`", bits * math.log10(2), JSON_MAX_NUMBER_DIGITS, "digits")
            return bits // 3
        if is_int(left) or is_int(right):
            count, sequence = (left, right) if is_int(left) else (right, left)
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


def is_int(value: Any) -> bool:
    return isinstance(value, int)


def _check_power(base: Any, exponent: Any) -> int:
    if not (is_int(base) and is_int(exponent)) or exponent <= 1 or abs(base) <= 1:
        return 0  # floats overflow with an error of their own; a negative exponent makes a float
    if exponent.bit_length() > 64:
        raise BudgetExceeded(
            f"`**` would make a number of more than {JSON_MAX_NUMBER_DIGITS:,} digits (the exponent alone has "
            f"{exponent.bit_length():,} bits)"
        )
    digits = exponent * math.log10(abs(base))
    if digits > JSON_MAX_NUMBER_DIGITS:
        raise too_big("`**`", digits, JSON_MAX_NUMBER_DIGITS, "digits")
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
    if isinstance(value, CONTAINERS):
        size = weight(value)
        if size > TEMPLATE_MAX_CHARS:
            raise BudgetExceeded(f"a value of about {size:,} characters cannot be printed")


def text_of(value: Any) -> str:
    printable(value)
    return str(value)


def replace_size(text: Any, old: Any, new: Any, count: Any) -> int:
    text, old, new = text_of(text), text_of(old), text_of(new)
    found = len(text) + 1 if old == "" else text.count(old)
    if isinstance(count, int) and count >= 0:
        found = min(found, count)
    return len(text) + found * max(0, len(new) - len(old))


def bounded_concat(*parts: Any) -> str:
    """`a ~ b`: Jinja's concatenation, with the size checked before joining."""
    tick()
    built("`~`", sum(weight(p) for p in parts))
    return "".join(map(str, parts))
