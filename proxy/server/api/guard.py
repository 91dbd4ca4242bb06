"""The request guard: a server on loopback beside a browser, where any page the user visits can send requests.

Before any route runs, the guard refuses
- a `Host` that is not this server's address (DNS rebinding: a page whose name now resolves to 127.0.0.1
  would read the answers as its own), 403;
- an `Origin` other than the server's own, unless listed (`--cors-origin`, `settings.cors_origins`: then CORS
  answers), 403;
- a cross-site or same-site request (`Sec-Fetch-Site`) from no listed origin, but a top-level navigation
  to an inspector page, 403;
- a state-changing API call whose body is not JSON (a form or `text/plain` post needs no CORS preflight), 415;
- an inspector form post without this server's CSRF token, 403.
A preflight is answered here, so it never reaches a route (and never goes upstream from /forward).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
import secrets
from dataclasses import dataclass
from urllib.parse import parse_qs

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from proxy.config.settings import CORS_MAX_AGE_S, MAX_API_BODY_BYTES, Settings
from proxy.config.web_access import is_ip, normalize_host_name, normalize_origin
from proxy.errors import ConfigError
from proxy.server.api.middleware import send_json, too_large_message

FORWARD_PREFIX = "/forward/"
CSRF_FIELD = "csrf_token"
FORM_TYPE = "application/x-www-form-urlencoded"
# The content types a page may post anywhere without a CORS preflight.
CORS_SAFELISTED_TYPES = frozenset({FORM_TYPE, "multipart/form-data", "text/plain"})
STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
ALLOW_METHODS = b"GET, POST, PUT, PATCH, DELETE, HEAD, OPTIONS"
EXPOSE_HEADERS = b"X-Proxy-Cassette, Mcp-Session-Id"  # an MCP client in a listed page reads its session id
ALWAYS_ALLOWED_HOSTS = frozenset({"localhost"})
WILDCARD_ADDRESSES = frozenset({"", "0.0.0.0", "::"})
HOST_HEADER = re.compile(r"(?:\[(?P<v6>[0-9a-f:.]+)\]|(?P<name>[a-z0-9._-]+))(?::[0-9]{1,5})?")
HEADER_TOKEN = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+")
FRAME_DESTINATIONS = frozenset({"iframe", "frame", "embed", "object", "fencedframe"})


def is_inspector_path(path: str) -> bool:
    """The inspector's HTML pages and forms (the login form included), the flow log and its exports."""
    return path in ("/", "/flows") or path.startswith(("/inspector/", "/flows/", "/flows."))


class BrowserKeys:
    """This server's secrets for browsers: the CSRF token of its forms and the value of its login cookie.
    Random per server, so two servers in one process (or one restarted) share neither."""

    def __init__(self, secret: bytes | None = None) -> None:
        self._secret = secret or secrets.token_bytes(32)
        self.csrf_token = self._derive(b"csrf")

    def _derive(self, purpose: bytes) -> str:
        return hmac.new(self._secret, purpose, hashlib.sha256).hexdigest()

    def csrf_ok(self, given: str) -> bool:
        return hmac.compare_digest(given.encode(), self.csrf_token.encode())

    def login_cookie(self, api_key: str) -> str:
        """Never the key itself: a cookie read off the disk or a log gives no API access."""
        return self._derive(b"login\0" + api_key.encode())


@dataclass(frozen=True)
class GuardPolicy:
    host_names: frozenset[str]
    listen_any: bool  # bound to 0.0.0.0 or ::: the address each connection arrived at counts too
    cors_origins: frozenset[str]

    @classmethod
    def from_settings(cls, settings: Settings) -> GuardPolicy:
        try:
            names = {normalize_host_name(h) for h in (settings.host, *settings.allowed_hosts) if h}
            origins = frozenset(normalize_origin(o) for o in settings.cors_origins)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        return cls(frozenset(names | ALWAYS_ALLOWED_HOSTS), settings.host in WILDCARD_ADDRESSES, origins)

    def host_allowed(self, name: str, scope: Scope) -> bool:
        if name in self.host_names:
            return True
        try:
            address = ipaddress.ip_address(name)
        except ValueError:
            return False
        if address.is_loopback:
            return True
        server = scope.get("server")
        arrived = str(server[0]) if server else ""
        return self.listen_any and is_ip(arrived) and ipaddress.ip_address(arrived) == address


class RequestGuard:
    """Plain ASGI middleware, outermost but for Starlette's own: refusals are JSON `{"message": ...}`."""

    def __init__(self, app: ASGIApp, policy: GuardPolicy, keys: BrowserKeys) -> None:
        self.app = app
        self.policy = policy
        self.keys = keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        head = RequestHead.of(scope)
        refused = self._host_refusal(head, scope) or self._origin_refusal(head, scope)
        if refused is not None:
            await send_json(send, refused.status, {"message": refused.message})
            return
        listed = self._listed(head.origin)
        if head.origin is not None:
            if head.method == "OPTIONS" and b"access-control-request-method" in head.headers:
                await self._preflight(send, head.origin, head.headers)
                return
            send = _cors_answer(send, head.origin.encode("latin-1") if listed else None)
        refused = _cross_site_refusal(head, listed) or _content_type_refusal(head)
        if refused is not None:
            await send_json(send, refused.status, {"message": refused.message})
        elif head.is_inspector_form:
            await self._form(scope, receive, send, head.media)
        else:
            await self.app(scope, receive, send)

    def _host_refusal(self, head: RequestHead, scope: Scope) -> Refusal | None:
        """A `Host` that is not this server's (DNS rebinding), or a second one."""
        match = HOST_HEADER.fullmatch(head.host)
        name = (match.group("v6") or match.group("name")).rstrip(".") if match else ""
        if head.repeated or not match or not self.policy.host_allowed(name, scope):
            return Refusal(403, _host_refused(head.host, name, head.repeated))
        return None

    def _listed(self, origin: str | None) -> bool:
        return origin is not None and _origin_or_none(origin) in self.policy.cors_origins

    def _origin_refusal(self, head: RequestHead, scope: Scope) -> Refusal | None:
        """An `Origin` other than the server's own that `--cors-origin` does not list."""
        if head.origin is None or self._listed(head.origin):
            return None
        if _origin_or_none(head.origin) != _origin_or_none(f"{scope.get('scheme', 'http')}://{head.host}"):
            return Refusal(403, _origin_refused(head.origin))
        return None

    async def _preflight(self, send: Send, origin: str, headers: dict[bytes, bytes]) -> None:
        requested = headers.get(b"access-control-request-headers", b"").decode("latin-1")
        allowed = ", ".join(h.strip() for h in requested.split(",") if HEADER_TOKEN.fullmatch(h.strip()))
        answer = [
            (b"access-control-allow-origin", origin.encode("latin-1")),
            (b"access-control-allow-methods", ALLOW_METHODS),
            (b"access-control-allow-headers", allowed.encode()),
            (b"access-control-max-age", str(CORS_MAX_AGE_S).encode()),
            (b"vary", b"Origin"),
        ]
        if headers.get(b"access-control-request-private-network") == b"true":
            answer.append((b"access-control-allow-private-network", b"true"))  # Chrome: a public page calling 127.0.0.1
        await send({"type": "http.response.start", "status": 204, "headers": answer})
        await send({"type": "http.response.body", "body": b""})

    async def _form(self, scope: Scope, receive: Receive, send: Send, media: str) -> None:
        """An inspector form post: checked for this server's CSRF token before the route sees it."""
        if media != FORM_TYPE:
            refusal = f"Content-Type: {media or 'none'} is refused: inspector forms are posted as {FORM_TYPE}"
            await send_json(send, 415, {"message": refusal})
            return
        chunks: list[bytes] = []
        size, more = 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > MAX_API_BODY_BYTES:
                await send_json(send, 413, {"message": too_large_message(MAX_API_BODY_BYTES)})
                return
        body = b"".join(chunks)
        given = parse_qs(body.decode("utf-8", errors="replace")).get(CSRF_FIELD, [""])[0]
        if not given or not self.keys.csrf_ok(given):
            refusal = f"form field {CSRF_FIELD}: missing or wrong (reload the page and send the form again)"
            await send_json(send, 403, {"message": refusal})
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


@dataclass(frozen=True)
class Refusal:
    status: int
    message: str


@dataclass(frozen=True)
class RequestHead:
    """What the checks read of a request: the first of each header, as the routes read it."""

    headers: dict[bytes, bytes]
    repeated: bool  # a second Host or Origin
    method: str
    path: str

    @classmethod
    def of(cls, scope: Scope) -> RequestHead:
        headers: dict[bytes, bytes] = {}
        repeated = False
        for key, value in scope["headers"]:
            repeated |= key in (b"host", b"origin") and key in headers
            headers.setdefault(key, value)
        return cls(headers, repeated, scope["method"], scope["path"])

    @property
    def host(self) -> str:
        return self.headers.get(b"host", b"").decode("latin-1").lower()

    @property
    def origin(self) -> str | None:
        raw = self.headers.get(b"origin")
        return raw.decode("latin-1") if raw is not None else None

    @property
    def media(self) -> str:
        return self.headers.get(b"content-type", b"").decode("latin-1").split(";")[0].strip().lower()

    @property
    def is_forward(self) -> bool:
        return self.path.startswith(FORWARD_PREFIX)

    @property
    def is_inspector_form(self) -> bool:
        return not self.is_forward and is_inspector_path(self.path) and self.method in STATE_CHANGING


def _cross_site_refusal(head: RequestHead, listed: bool) -> Refusal | None:
    """A cross-site or same-site request from no listed origin, but a top-level navigation to the inspector."""
    site = head.headers.get(b"sec-fetch-site")
    if (
        site not in (b"cross-site", b"same-site")
        or listed
        or _top_level_navigation(head.method, head.path, head.headers)
    ):
        return None
    return Refusal(
        403,
        f"a {site.decode()} request from a web page (Sec-Fetch-Site: {site.decode()}) is refused; "
        "to let a web app call this server, start it with --cors-origin <its origin>",
    )


def _content_type_refusal(head: RequestHead) -> Refusal | None:
    """A body a page could send without a CORS preflight: a form or text on /forward from a browser, anything
    but JSON to a state-changing API call. (An inspector form post is checked by its CSRF token instead.)"""
    media, has_body = head.media, _has_body(head.headers)
    if head.is_forward:
        from_browser = head.origin is not None or any(k.startswith(b"sec-fetch-") for k in head.headers)
        if from_browser and (media in CORS_SAFELISTED_TYPES or (not media and has_body)):
            return Refusal(
                415,
                f"Content-Type: {media or 'none'} from a browser is refused on /forward "
                "(a page can send it without a CORS preflight); send the body with its real type, e.g. JSON",
            )
        return None
    if head.is_inspector_form:
        return None
    changes_state = head.method in STATE_CHANGING and (head.method != "DELETE" or has_body)
    if changes_state and (media or has_body) and not _is_json(media):
        return Refusal(
            415, f"Content-Type: {media or 'none'} is refused: {head.method} {head.path} takes application/json"
        )
    return None


def _origin_or_none(value: str) -> str | None:
    try:
        return normalize_origin(value)
    except ValueError:
        return None


def _is_json(media: str) -> bool:
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


def _has_body(headers: dict[bytes, bytes]) -> bool:
    length = headers.get(b"content-length", b"").strip()
    return b"transfer-encoding" in headers or (bool(length) and (not length.isdigit() or int(length) > 0))


def _top_level_navigation(method: str, path: str, headers: dict[bytes, bytes]) -> bool:
    """A user following a link to the inspector from another page; never a frame (clickjacking)."""
    destination = headers.get(b"sec-fetch-dest", b"document").decode("latin-1")
    return (
        method in ("GET", "HEAD")
        and headers.get(b"sec-fetch-mode") == b"navigate"
        and destination not in FRAME_DESTINATIONS
        and is_inspector_path(path)
    )


def _cors_answer(send: Send, origin: bytes | None) -> Send:
    """The CORS headers of an answer are the guard's alone: an upstream's own (say `*`, relayed by /forward)
    are dropped; a listed origin gets its own."""

    async def cors_send(message: Message) -> None:
        if message["type"] == "http.response.start":
            kept = [(k, v) for k, v in message.get("headers", []) if not k.lower().startswith(b"access-control-")]
            if origin is not None:
                kept += [
                    (b"access-control-allow-origin", origin),
                    (b"access-control-expose-headers", EXPOSE_HEADERS),
                    (b"vary", b"Origin"),
                ]
            message = {**message, "headers": kept}
        await send(message)

    return cors_send


def _host_refused(host: str, name: str, repeated: bool) -> str:
    if repeated:
        return "Host or Origin: given more than once; a request names one server"
    if not host:
        return "Host: the header is missing; this server answers requests that name it"
    if not name:
        return f"Host: {host!r} is not a host name"
    return (
        f"Host: {host!r} is not this server's address (it answers its bind address, localhost and loopback "
        "addresses only, against DNS rebinding); to serve it under that name, start it with "
        f"--allowed-host {name}"
    )


def _origin_refused(origin: str) -> str:
    normalized = _origin_or_none(origin)
    if normalized is None:
        return f"Origin: {origin!r} (a sandboxed, local-file or redirected page) is refused"
    return (
        f"Origin: {origin!r} is not this server's own; to let a web app at that origin call it, "
        f"start the server with --cors-origin {normalized}"
    )
