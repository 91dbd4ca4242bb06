"""The exception hierarchy. The API maps each class to exactly one HTTP status.

ProxyError                      base; never escapes as a 500
├── BadRequest          400     malformed JSON, a body that is not an object
├── NotFound            404     unknown id
├── Conflict            409     the entity's state refuses the action (a turn on a finished session)
├── PayloadTooLarge     413     API body over the cap
├── InvalidField        422     a field failed validation (names the field and the reason)
│   └── UnknownField    422     a key no field takes (names the nearest known key)
└── ConfigError         -       the config file is unusable (CLI exits with the message)

CallFailure                     an upstream call that cannot complete (raised by a transport: proxy.engine.transports)
├── CassetteMiss                no recording answers and the mode forbids calling live
├── BodyTooLarge                an upstream body over the cap
├── BodyCut                     a body that broke off (also an httpx.ReadError, as a transport's own would be)
└── SearchFailed                a connector's answer is no search answer (proxy.connectors.search)

Refusals raised below the API, each turned into an InvalidField (or a call's error) where it is caught, and
ValueErrors so that pydantic validators can raise them: TemplateRefused (proxy.templating.environment), JsonRefused
(proxy.security.jsonbounds), JsonPathRefused (proxy.connections.mapping), DatasetError (proxy.sessions.dataset,
the CLI's exit 2); and BudgetExceeded (proxy.templating.budget), which proxy.templating.environment turns into a
TemplateRefused.

Before any route runs, the request guard answers 403 (foreign Host or Origin, cross-site fetch, no CSRF
token) and 415 (a write that is not JSON) itself, and the API-key middleware 401 to a missing or wrong
key (with the login form on an inspector page).

Engine failures are not exceptions at the API boundary: a failed upstream call is a result
(`CallResult.error`), because a failed turn is data the user wants to inspect; the engine turns each
CallFailure into one.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Collection
from typing import Any

from pydantic.alias_generators import to_camel


class ProxyError(Exception):
    status_code = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def body(self) -> dict[str, Any]:
        return {"message": self.message}


class BadRequest(ProxyError):
    status_code = 400


class NotFound(ProxyError):
    status_code = 404


class Conflict(ProxyError):
    status_code = 409


class PayloadTooLarge(ProxyError):
    status_code = 413


class InvalidField(ProxyError):
    """A field failed validation. `field` is the API (camelCase) name."""

    status_code = 422

    def __init__(self, field: str, reason: str) -> None:
        self.field = field
        self.reason = reason
        super().__init__(f"{describe_field(field)}: {reason}")

    def body(self) -> dict[str, Any]:
        return {"message": self.message, "errors": [{"field": self.field, "reason": self.reason}]}


class UnknownField(InvalidField):
    """A key that no field takes. Most often a typo, so the nearest known key (in the same spelling,
    camelCase or snake_case, as the one given) is suggested; `field` is the key's place as written.
    `known` holds the snake_case names; `camel_case` says whether their camelCase spellings are taken too."""

    def __init__(
        self, field: str, key: str, known: Collection[str], what: str = "field", camel_case: bool = True
    ) -> None:
        camel = camel_case and any(ch.isupper() for ch in key)
        names = sorted({to_camel(k) for k in known} if camel else set(known))
        nearest = difflib.get_close_matches(key, names, n=1)
        hint = f"did you mean {nearest[0]}?" if nearest else f"known: {', '.join(names)}"
        super().__init__(field, f"unknown {what} — {hint}")
        self.message = f"{field}: {self.reason}"


class ConfigError(ProxyError):
    pass


class CallFailure(Exception):
    """An upstream call that cannot complete; the engine makes it the call's error, never a 500."""


_PATH_STEP = re.compile(r"[.\[]")
_CAMEL_NAME = re.compile(r"[a-z][A-Za-z0-9]*")


def describe_field(field: str) -> str:
    """`authToken (auth_token)`: both spellings of the top-level name, since the API is camelCase and the
    config snake_case. What follows it (a header name, a mapping key) is shown as written: `headers.x-A`. A field
    that is no camelCase name (`header X-Proxy-Record-Mode`) has no other spelling."""
    top = _PATH_STEP.split(field, maxsplit=1)[0]
    snake = camel_to_snake(top)
    return field if snake == top or not _CAMEL_NAME.fullmatch(top) else f"{field} ({snake}{field[len(top) :]})"


def camel_to_snake(name: str) -> str:
    """`authToken` → `auth_token`, every capital a word of its own: pydantic's `to_snake` folds runs of capitals
    and splits digits off (`userID` → `user_id`, `v2Endpoint` → `v_2_endpoint`), which `to_camel` does not give
    back as they were written."""
    return "".join(f"_{ch.lower()}" if ch.isupper() else ch for ch in name)
