"""Forward-only upstreams: a name and a base URL, nothing else, for the raw forward route.

`openai=https://api.openai.com/v1` answers `/forward/openai/v1/…` as a connection would, without a Galtea
connection (no product, template or mapping) and without a credential of its own: the client's credential
(`Authorization`, `X-Api-Key`, `Api-Key`) goes upstream as the client sent it, on live calls only, and is masked
in recordings, flows and logs like any secret. Recordings go to `connections/<name>.yaml`, as a connection's do.
`tools=mcp+http://127.0.0.1:8000` marks an MCP server (the connection field `protocol: mcp`).
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import httpx

from proxy.config.settings import MAX_CLIENT_SECRETS, MIN_SECRET_LEN
from proxy.connections.spec import Protocol, check_url
from proxy.connections.targets import CallSubject, ForwardTarget
from proxy.engine.transports.client import is_loopback_host
from proxy.errors import InvalidField
from proxy.security.origins import Origin, url_origin
from proxy.security.redaction import Redactor

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}\Z")
# Headers that carry a client's own credential to the upstream.
CLIENT_CREDENTIAL_HEADERS = frozenset({"authorization", "x-api-key", "api-key"})
SCHEME_WORDS = frozenset({"bearer", "basic", "token"})
MCP_SCHEME_PREFIX = "mcp+"  # `mcp+https://…`: the upstream speaks MCP's streamable HTTP transport


@dataclass(frozen=True)
class ForwardUpstream:
    name: str
    url: str  # the base URL as given
    origin: Origin
    target: ForwardTarget
    protocol: Protocol = Protocol.HTTP

    @property
    def path(self) -> str:
        """The base URL's path ("/v1"), which the forward URL of this upstream carries too."""
        return httpx.URL(self.url).path.rstrip("/")


def parse_assignment(text: str, what: str) -> tuple[str, str]:
    """`NAME=VALUE` of an option such as `--proxy-upstream`; InvalidField naming `what` otherwise."""
    name, sep, value = text.partition("=")
    if not sep or not name.strip() or not value.strip():
        raise InvalidField(what, f"{text!r} is not NAME=VALUE")
    return name.strip(), value.strip()


def forward_upstream(name: str, url: str, http_allowed: bool) -> ForwardUpstream:
    """A forward-only upstream, validated: a plain name, and an absolute http(s) URL with no query (plain http
    only for a loopback host or with http allowed)."""
    field = f"upstream {name}"
    protocol = Protocol.MCP if url.lower().startswith(MCP_SCHEME_PREFIX) else Protocol.HTTP
    url = url[len(MCP_SCHEME_PREFIX) :] if protocol is Protocol.MCP else url
    if not NAME.match(name):
        raise InvalidField(field, "a name is letters, digits, '.', '_' or '-' (at most 100), starting with one")
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise InvalidField(field, f"{url!r} is not a URL: {exc}") from None
    origin = url_origin(parsed)
    if origin is None or parsed.scheme not in ("http", "https"):
        raise InvalidField(field, f"{url!r} is not an absolute http(s) URL")
    if parsed.query or parsed.fragment:
        raise InvalidField(field, f"{url!r}: a base URL has no query or fragment")
    check_url(url, http_allowed or is_loopback_host(origin.host))
    subject = CallSubject(f"upstream:{name}", name, "CLIENT", "FORWARD")
    target = ForwardTarget(f"upstream:{name}", subject, traceparent=False, adds=False)
    return ForwardUpstream(name, url, origin, target, protocol)


class ClientSecrets:
    """The credentials clients send through forward-only upstreams, masked from the first call that carries one:
    the newest MAX_CLIENT_SECRETS per upstream stay known to the server's redactor (registering one rebuilds
    its masks, so a value already known costs nothing)."""

    def __init__(self, redactor: Redactor) -> None:
        self.redactor = redactor
        self._seen: dict[str, OrderedDict[str, None]] = {}

    def note(self, upstream: str, headers: Mapping[str, str]) -> None:
        values = list(client_credentials(headers.items()))
        seen = self._seen.setdefault(upstream, OrderedDict())
        new = [value for value in values if value not in seen]
        if not new:
            return
        for value in new:
            seen[value] = None
        while len(seen) > MAX_CLIENT_SECRETS:
            seen.popitem(last=False)
        self.redactor.register(("client credentials of upstream", upstream), list(seen))


def client_credentials(headers: Iterable[tuple[str, str]]) -> Iterable[str]:
    """The credential values in a client's headers: a header's whole value and, after a scheme word, the token.
    One too short to mask reliably is a placeholder (`Bearer unused`), not a secret, and is left out."""
    for name, value in headers:
        if name.lower() not in CLIENT_CREDENTIAL_HEADERS or not value:
            continue
        scheme, _, token = value.partition(" ")
        found = [value, token.strip()] if token and scheme.lower() in SCHEME_WORDS else [value]
        yield from (item for item in found if len(item) >= MIN_SECRET_LEN)
