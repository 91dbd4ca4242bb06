"""Sandboxed Jinja2 rendering of request bodies and URLs.

Values are escaped as they are rendered, so the template supplies the JSON quotes and an input
with quotes, newlines or backslashes still yields valid JSON: a string renders as its JSON-escaped
text (no surrounding quotes), a dict or list as JSON. In URLs strings are percent-escaped instead.
Templates compile once, when a connection is stored or loaded.

Compiling never runs template code: Jinja folds constant expressions while compiling (so
`{{ 7**3000000 }}` would be computed on the spot, and again at every start-up), and here it does
not — the optimizer is off, the finalizers take the eval context (which keeps Jinja from folding
output), and the growing operators are intercepted by the sandbox. Instead, constant arithmetic
is worked out under the render bounds of `proxy.templating.budget`, so a template whose constants
would be huge is refused when it is stored; every render runs under the same bounds.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any
from urllib.parse import quote

from jinja2 import ChainableUndefined, TemplateSyntaxError, Undefined, nodes, pass_eval_context
from jinja2.exceptions import SecurityError, TemplateError
from jinja2.nodes import EvalContext
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import missing
from jinja2.visitor import NodeTransformer
from markupsafe import Markup

from proxy.config.settings import (
    JSON_MAX_NUMBER_DIGITS,
    MAX_LISTED_KEYS,
    MAX_UNDEFINED_WARNINGS,
    TEMPLATE_MAX_SOURCE_CHARS,
)
from proxy.templating import budget as limits
from proxy.templating import calls, sizes


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
    """Undefined names render empty, but a name the sandbox hid is refused, not silently dropped. Under
    `undefined_rendered`, each one rendered is noted (a misspelt `{{ input.user_mesage }}`, for a warning)."""

    def __str__(self) -> str:
        if issubclass(self._undefined_exception, SecurityError):
            self._fail_with_undefined_error()
        seen = _rendered_undefined.get()
        if seen is not None and len(seen) < MAX_UNDEFINED_WARNINGS:
            seen.append(self)
        return ""


# Set only by the diagnostic calls (testConnection, `proxy check`, the inspector's preview): a turn pays nothing.
_rendered_undefined: ContextVar[list[_Undefined] | None] = ContextVar("rendered_undefined", default=None)


@contextmanager
def undefined_rendered(variables: Mapping[str, Any]) -> Iterator[list[str]]:
    """The undefined names the renders inside it print (empty, by the seeds' rule), each said once with the keys
    that do exist: `{{ input.user_mesage }} is undefined and renders empty; input has: user_message`."""
    seen: list[_Undefined] = []
    warnings: list[str] = []
    token = _rendered_undefined.set(seen)
    try:
        yield warnings
    finally:
        _rendered_undefined.reset(token)
        for undefined in seen:
            warning = _undefined_warning(undefined, variables)
            if warning not in warnings:
                warnings.append(warning)


def _undefined_warning(undefined: _Undefined, variables: Mapping[str, Any]) -> str:
    name, owner = undefined._undefined_name, undefined._undefined_obj
    if owner is missing:
        return f"{{{{ {name} }}}} is undefined and renders empty; defined: {_listed(variables)}"
    path = _path_of(owner, variables) or "the value"
    if isinstance(owner, Mapping):
        has = f"{path} has: {_listed(owner)}" if owner else f"{path} is empty"
    else:
        has = f"{path} is a {type(owner).__name__}, with no {name}"
    return f"{{{{ {path}.{name} }}}} is undefined and renders empty; {has}"


def _listed(keys: Mapping[str, Any]) -> str:
    names = sorted(map(str, keys))
    shown = ", ".join(names[:MAX_LISTED_KEYS])
    return shown + (f" and {len(names) - MAX_LISTED_KEYS} more" if len(names) > MAX_LISTED_KEYS else "")


def _path_of(value: Any, variables: Mapping[str, Any], depth: int = 3) -> str | None:
    """Where `value` sits among the template's variables (`input`, `context.user`): found by identity, a few
    levels of maps deep (a warning's wording; not worth a walk of a large input)."""
    for key, item in variables.items():
        if item is value:
            return str(key)
    if depth > 1:
        for key, item in variables.items():
            if isinstance(item, Mapping):
                found = _path_of(value, item, depth - 1)
                if found is not None:
                    return f"{key}.{found}"
    return None


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


@pass_eval_context  # taking the eval context keeps Jinja from folding output while compiling
def _finalize_json(eval_ctx: EvalContext, value: Any) -> Any:
    if isinstance(value, Markup):  # `| tojson` output is already JSON
        return value
    if isinstance(value, MessageInput):
        value = value.message
    text = _scalar_text(value)
    if text is not None:
        return text
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)[1:-1]
    sizes.printable(value)
    return json.dumps(value, ensure_ascii=False, default=str)


@pass_eval_context
def _finalize_url(eval_ctx: EvalContext, value: Any) -> Any:
    if isinstance(value, MessageInput):
        value = value.message
    text = _scalar_text(value)
    if text is not None:
        return text
    if not isinstance(value, str):
        sizes.printable(value)
        value = json.dumps(value, ensure_ascii=False, default=str)
    return quote(value, safe="")


# Filters the compiler inserts (a filter compiles to a direct call; a function call would go through
# the sandbox's checks on every loop). A user who writes them gets the same bounded behaviour.
METERED_FILTER = "_metered"
CONCAT_FILTER = "_concat"


class BoundedEnvironment(ImmutableSandboxedEnvironment):
    """The sandbox, with the operators, calls and filters that can grow a value held to the budget."""

    # Intercepted operators are also never folded while compiling. `-`, `/` and `//` stay native: on
    # numbers the budget already bounds they cannot grow.
    intercepted_binops = frozenset({"**", "*", "%", "+"})

    def __init__(self, finalize: Callable[..., Any]) -> None:
        super().__init__(undefined=_Undefined, finalize=finalize, autoescape=False, optimized=False)
        self.filters = calls.guarded_filters(self.filters)
        self.filters[METERED_FILTER] = limits.metered
        self.filters[CONCAT_FILTER] = sizes.bounded_concat
        del self.globals["lipsum"]  # placeholder text by the paragraph: no use in a request

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        limits.tick()
        sizes.check_binop(operator, left, right)
        return self.binop_table[operator](left, right)

    def call(self, context: Context, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        budget = limits.enter_call()
        try:
            args = calls.check_method_call(obj, args, kwargs)
            return super().call(context, obj, *args, **kwargs)
        finally:
            if budget is not None:
                budget.depth -= 1


_JSON_ENV = BoundedEnvironment(_finalize_json)
_URL_ENV = BoundedEnvironment(_finalize_url)


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


_UNKNOWN = object()
# Constants are worked out while compiling only while they stay small: a bigger one that passes the
# bounds is left to the render, so compiling does no more than a little work.
_FOLD_MAX_CHARS = 4096


def _check_constants(node: nodes.Node) -> Any:
    """Work out the constant arithmetic in a template under the render bounds, so that a constant
    too big to compute (`{{ 7**3000000 }}`) refuses the template. Returns the node's value, or
    `_UNKNOWN` when it depends on the context (its constant parts are still checked)."""
    if isinstance(node, nodes.Const):
        return node.value
    values = [_check_constants(child) for child in node.iter_child_nodes()]
    if _UNKNOWN in values:
        return _UNKNOWN
    try:
        if isinstance(node, nodes.BinExpr):
            if sizes.check_binop(node.operator, *values) > _FOLD_MAX_CHARS:
                return _UNKNOWN
            return _JSON_ENV.binop_table[node.operator](*values)
        if isinstance(node, nodes.UnaryExpr):
            return _JSON_ENV.unop_table[node.operator](*values)
        if isinstance(node, nodes.Concat):
            small = sum(map(sizes.weight, values)) <= _FOLD_MAX_CHARS
            return sizes.bounded_concat(*values) if small else _UNKNOWN
        if isinstance(node, nodes.List):
            return list(values)
        if isinstance(node, nodes.Tuple) and node.ctx == "load":
            return tuple(values)
    except limits.BudgetExceeded:
        raise
    except Exception:  # `1/0` and the like: the render reports them, as Jinja would
        return _UNKNOWN
    return _UNKNOWN


class _Metering(NodeTransformer):
    """Every loop iterates through `metered` (so it stops when the time is up) and every `~` goes
    through `bounded_concat` (so repeated concatenation cannot double a string without end)."""

    def visit_For(self, node: nodes.For) -> nodes.Node:
        self.generic_visit(node)
        node.iter = nodes.Filter(node.iter, METERED_FILTER, [], [], None, None, lineno=node.lineno)
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:
        self.generic_visit(node)
        first, *rest = node.nodes
        return nodes.Filter(first, CONCAT_FILTER, rest, [], None, None, lineno=node.lineno)


def _parse(env: BoundedEnvironment, source: str, strict: bool) -> nodes.Template:
    if strict and len(source) > TEMPLATE_MAX_SOURCE_CHARS:
        raise TemplateRefused(f"template is longer than {TEMPLATE_MAX_SOURCE_CHARS:,} characters")
    try:
        return env.parse(source)
    except TemplateSyntaxError as exc:
        raise TemplateRefused(f"template does not compile: {exc.message} (line {exc.lineno})") from exc
    except RecursionError:
        raise TemplateRefused("template does not compile: it nests too deeply") from None
    except ValueError:  # the lexer converts number literals; Python refuses one over its digit limit
        raise TemplateRefused(
            f"template does not compile: a number in it has more than {JSON_MAX_NUMBER_DIGITS:,} digits"
        ) from None


def _is_static(tree: nodes.Template) -> bool:
    """A template of plain text only: no expression, tag or name in it."""
    outputs = [node for node in tree.body if isinstance(node, nodes.Output)]
    return len(outputs) == len(tree.body) and all(
        isinstance(piece, nodes.TemplateData) for output in outputs for piece in output.nodes
    )


class CompiledTemplate:
    """A template compiled once. `strict=False` (a template stored before the compile-time bounds)
    skips the source size cap and the constant check; its renders run under the same bounds."""

    def __init__(self, source: str, url: bool = False, strict: bool = True) -> None:
        env = _URL_ENV if url else _JSON_ENV
        tree = _parse(env, source, strict)
        _refuse_private_access(tree)
        self.source = source
        self.names = {n.name for n in tree.find_all(nodes.Name)}
        try:
            if strict:
                _check_constants(tree)
            static = _is_static(tree)
            tree = _Metering().visit(tree)
            tree.set_environment(env)
            self._template = env.from_string(tree)
            # Nothing to fill in (a URL without placeholders, say): rendered once, here, not on every call.
            self.constant: str | None = None
            self.constant = self.render({}) if static else None
        except limits.BudgetExceeded as exc:
            raise TemplateRefused(f"template refused: {exc}") from None
        except TemplateError as exc:
            raise TemplateRefused(f"template does not compile: {exc}") from None
        except (RecursionError, SyntaxError, MemoryError) as exc:
            raise TemplateRefused(f"template does not compile: it nests too deeply or is too large ({exc})") from None

    def render(self, context: Mapping[str, Any]) -> str:
        if self.constant is not None:
            return self.constant
        template = self._template
        variables = context if isinstance(context, dict) else dict(context)
        token = limits.start()
        try:
            pieces = template.root_render_func(template.new_context(variables))
            return "".join(limits.metered_output(pieces))
        except limits.BudgetExceeded as exc:
            raise TemplateRefused(f"template stopped: {exc}") from None
        except RecursionError:
            raise TemplateRefused("template stopped: it recursed too deeply") from None
        except SecurityError as exc:
            raise TemplateRefused(f"template refused by the sandbox: {exc}") from exc
        except TemplateError as exc:
            raise TemplateRefused(f"template failed to render: {exc}") from exc
        except (TypeError, ValueError, ArithmeticError) as exc:
            raise TemplateRefused(f"template failed to render: {exc}") from exc
        except MemoryError:
            raise TemplateRefused("template stopped: it ran out of memory") from None
        except Exception as exc:  # whatever else a filter or method raises: the call's error, not a 500
            raise TemplateRefused(f"template failed to render: {type(exc).__name__}: {exc}") from exc
        finally:
            limits.finish(token)
