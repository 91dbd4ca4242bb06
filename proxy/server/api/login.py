"""The inspector's login, with `--api-key`: a form takes the key once and leaves an HttpOnly, SameSite=Strict
cookie. The cookie opens the inspector's pages and forms only; the JSON API and /forward still need
`Authorization: Bearer <key>`, so a page on another port of the same host (same-site) cannot ride it there."""

from __future__ import annotations

import hmac

from starlette.requests import Request, cookie_parser
from starlette.responses import RedirectResponse, Response
from starlette.types import Receive, Scope, Send

from proxy.server.api.common import runtime
from proxy.server.api.guard import BrowserKeys, is_inspector_path
from proxy.server.api.inspector import FORM, browser_keys, page, read_form
from proxy.server.api.openapi import HTML, ApiRoute

LOGIN_PATH = "/inspector/login"
LOGOUT_PATH = "/inspector/logout"
OPEN_PATHS = frozenset({LOGIN_PATH, LOGOUT_PATH})


def cookie_name(scope: Scope) -> str:
    """One name per port: cookies ignore ports, so two servers on one host would overwrite each other's."""
    server = scope.get("server")
    return f"proxy_login_{server[1]}" if server and server[1] else "proxy_login"


def safe_next(value: str | None) -> str:
    """Where to go after logging in: a path on this server, never another site."""
    if (
        not value
        or not value.startswith("/")
        or value.startswith(("//", "/\\"))
        or value.startswith((LOGIN_PATH, LOGOUT_PATH))
    ):
        return "/"
    return value if value.isprintable() else "/"


class InspectorLogin:
    """Lets the login cookie in on the inspector's paths; asks for the key with the login form otherwise."""

    def __init__(self, api_key: str, keys: BrowserKeys) -> None:
        self.cookie_value = keys.login_cookie(api_key).encode()

    def covers(self, path: str) -> bool:
        return is_inspector_path(path)

    def lets_in(self, scope: Scope) -> bool:
        if scope["path"] in OPEN_PATHS:
            return True
        raw = dict(scope["headers"]).get(b"cookie", b"").decode("latin-1")
        given = cookie_parser(raw).get(cookie_name(scope), "")
        return hmac.compare_digest(given.encode(), self.cookie_value)

    async def challenge(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        wanted = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        target = wanted if request.method in ("GET", "HEAD") else "/"
        await login_page(request, target, status_code=401)(scope, receive, send)


def login_page(request: Request, target: str, status_code: int = 200, error: str | None = None) -> Response:
    return page(request, "login.html", status_code, next=safe_next(target), error=error)


async def login_form(request: Request) -> Response:
    """Inspector: the login form (with --api-key)."""
    target = safe_next(request.query_params.get("next"))
    if runtime(request).settings.api_key is None:
        return RedirectResponse(target, status_code=303)
    return login_page(request, target)


async def log_in(request: Request) -> Response:
    """Inspector: check the API key and leave the login cookie."""
    form = await read_form(request)
    target = safe_next(form.get("next"))
    api_key = runtime(request).settings.api_key
    if api_key is None:
        return RedirectResponse(target, status_code=303)
    if not hmac.compare_digest(form.get("api_key", "").encode(), api_key.encode()):
        return login_page(request, target, 401, error="Wrong API key.")
    response = RedirectResponse(target, status_code=303)
    value = browser_keys(request).login_cookie(api_key)
    response.set_cookie(cookie_name(request.scope), value, httponly=True, samesite="strict", path="/")
    return response


async def log_out(request: Request) -> Response:
    """Inspector: drop the login cookie."""
    response = RedirectResponse(LOGIN_PATH, status_code=303)
    response.delete_cookie(cookie_name(request.scope), httponly=True, samesite="strict", path="/")
    return response


LOGIN_FORM = {
    "type": "object",
    "properties": {
        "api_key": {"type": "string", "description": "the server's --api-key"},
        "next": {"type": "string", "description": "the inspector path to go back to"},
    },
}
LOGOUT_FORM: dict[str, object] = {"type": "object", "properties": {}}

ROUTES = [
    ApiRoute(LOGIN_PATH, login_form, methods=["GET"], response=HTML, media="text/html"),
    ApiRoute(LOGIN_PATH, log_in, methods=["POST"], body=LOGIN_FORM, body_media=FORM, response=HTML, media="text/html"),
    ApiRoute(
        LOGOUT_PATH, log_out, methods=["POST"], body=LOGOUT_FORM, body_media=FORM, response=HTML, media="text/html"
    ),
]
