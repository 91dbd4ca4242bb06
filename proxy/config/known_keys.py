"""Unknown keys are refused, with their place and the nearest known key: a misspelt key (`timout`)
would otherwise be dropped without a word, and the field it meant would silently keep its default."""

from __future__ import annotations

import types
import typing
from collections.abc import Collection, Mapping
from typing import Any

from pydantic import BaseModel

from proxy.errors import UnknownField, camel_to_snake


def check_keys(
    data: Mapping[str, Any],
    known: Collection[str],
    where: str = "",
    camel_case: bool = False,
    what: str = "field",
) -> None:
    """Every key of `data` is one of `known` (snake_case names; with `camel_case`, their camelCase too)."""
    for key in map(str, data):  # YAML keys may be numbers or booleans (`on:`)
        if key not in known and not (camel_case and camel_to_snake(key) in known):
            raise UnknownField(place(where, key), key, known, what, camel_case)


def check_model_keys(
    data: Mapping[str, Any], model: type[BaseModel], where: str = "", allowed: Collection[str] = ()
) -> None:
    """Every key of `data`, and of the objects inside it that are models too, is a field of `model`.
    Free-form maps (headers, output mapping) are not looked into; `allowed` are top-level keys let through."""
    fields = model.model_fields
    camel_case = any(info.alias not in (None, name) for name, info in fields.items())
    check_keys({k: v for k, v in data.items() if k not in allowed}, fields, where, camel_case)
    for key, value in data.items():
        info = fields.get(key) or fields.get(camel_to_snake(key)) if isinstance(key, str) else None
        inner = _model_in(info.annotation) if info is not None else None
        if inner is None:
            continue
        if isinstance(value, Mapping):
            check_model_keys(value, inner, place(where, key))
        elif isinstance(value, list):
            for index, item in enumerate(value):
                if isinstance(item, Mapping):
                    check_model_keys(item, inner, f"{place(where, key)}[{index}]")


def place(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The model a field holds: `M`, `M | None` or `list[M]`; None for anything else (a dict is free-form)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    origin = typing.get_origin(annotation)
    if origin in (list, typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            found = _model_in(arg)
            if found is not None:
                return found
    return None
