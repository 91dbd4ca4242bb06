"""Sandboxed Jinja2 rendering of request bodies and URLs.

Values are escaped as they are rendered, so the template supplies the JSON quotes and an input
with quotes, newlines or backslashes still yields valid JSON: a string renders as its JSON-escaped
text (no surrounding quotes), a dict or list as JSON. In URLs strings are percent-escaped instead.
Templates compile once, when a connection is stored or loaded.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import quote

from jinja2 import ChainableUndefined, TemplateSyntaxError, Undefined, nodes
from jinja2.exceptions import SecurityError, TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment
from markupsafe import Markup


class TemplateRefused(ValueError):
    """The template does not compile or reaches outside the sandbox."""


class MessageInput(dict[str, Any]):
    """A structured input with a `user_message`. Rendered bare (`{{ input }}`, `{{ turn.input }}`, as the
    Galtea docs' chat examples do inside a JSON string) it is that message; its fields and `| tojson`
    work as for any object."""

    @property
    def message(self) -> str:
        return str(self["user_message"])


def as_template_input(value: Any) -> Any:
    if isinstance(value, dict) and isinstance(value.get("user_message"), str):
        return MessageInput(value)
    return value


class _Undefined(ChainableUndefined):
    """Undefined names render empty, but a name the sandbox hid is refused, not silently dropped."""

    def __str__(self) -> str:
        if issubclass(self._undefined_exception, SecurityError):
            self._fail_with_undefined_error()
        return ""


def _scalar_text(value: Any) -> str | None:
    if isinstance(value, Undefined):
        return str(value)
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return json.dumps(value)
    return None


def _finalize_json(value: Any) -> Any:
    if isinstance(value, Markup):  # `| tojson` output is already JSON
        return value
    if isinstance(value, MessageInput):
        value = value.message
    text = _scalar_text(value)
    if text is not None:
        return text
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)[1:-1]
    return json.dumps(value, ensure_ascii=False, default=str)


def _finalize_url(value: Any) -> Any:
    if isinstance(value, MessageInput):
        value = value.message
    text = _scalar_text(value)
    if text is not None:
        return text
    if not isinstance(value, str):
        value = json.dumps(value, ensure_ascii=False, default=str)
    return quote(value, safe="")


def _environment(finalize: Callable[[Any], Any]) -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(undefined=_Undefined, finalize=finalize, autoescape=False)
    return env


_JSON_ENV = _environment(_finalize_json)
_URL_ENV = _environment(_finalize_url)


def _refuse_private_access(tree: nodes.Template) -> None:
    """Refuse `__class__`-style access at compile time instead of failing at render time."""
    for node in tree.find_all((nodes.Getattr, nodes.Getitem, nodes.Filter)):
        name: object = None
        if isinstance(node, nodes.Getattr):
            name = node.attr
        elif isinstance(node, nodes.Getitem):
            name = getattr(node.arg, "value", None)
        elif isinstance(node, nodes.Filter) and node.name == "attr" and node.args:  # `x | attr("__class__")`
            name = getattr(node.args[0], "value", None)
        if isinstance(name, str) and name.startswith("_"):
            raise TemplateRefused(f"access to '{name}' is not allowed in templates (sandbox)")


class CompiledTemplate:
    def __init__(self, source: str, url: bool = False) -> None:
        env = _URL_ENV if url else _JSON_ENV
        try:
            tree = env.parse(source)
        except TemplateSyntaxError as exc:
            raise TemplateRefused(f"template does not compile: {exc.message} (line {exc.lineno})") from exc
        _refuse_private_access(tree)
        self.source = source
        self.names = {n.name for n in tree.find_all(nodes.Name)}
        self._template = env.from_string(source)

    def render(self, context: Mapping[str, Any]) -> str:
        try:
            return self._template.render(context)
        except SecurityError as exc:
            raise TemplateRefused(f"template refused by the sandbox: {exc}") from exc
        except TemplateError as exc:
            raise TemplateRefused(f"template failed to render: {exc}") from exc
        except (TypeError, ValueError, ArithmeticError) as exc:
            raise TemplateRefused(f"template failed to render: {exc}") from exc
