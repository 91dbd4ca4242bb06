"""Where a connection's URL sends its calls: the origin (scheme, host, port) a stored credential belongs to.

A URL is a template, so its origin is read from its literal text, with the parser the live client uses
(httpx's), and only when no template construct (`{{ }}`, `{% %}`, `{# #}`) stands before the end of the
authority: such a construct can render into the host (`http://a{% if 0 %}@b{% endif %}`), so a templated origin
is known only once rendered and counts as equal to nothing but the very same template.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import httpx

TEMPLATE_CONSTRUCT = re.compile(r"\{[{%#]")
DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True)
class Origin:
    scheme: str
    host: str
    port: int | None

    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = DEFAULT_PORTS.get(self.scheme)
        return f"{self.scheme}://{host}" if self.port in (None, default) else f"{self.scheme}://{host}:{self.port}"


def fixed_origin(url: str) -> Origin | None:
    """The origin of a URL template, or None when the template decides it (or it is no absolute URL)."""
    text = url.strip()
    start = text.find("://")
    if start < 0:
        return None
    ends = [i for i in (text.find(c, start + 3) for c in "/?#") if i >= 0]
    authority_end = min(ends, default=len(text))
    construct = TEMPLATE_CONSTRUCT.search(text)
    if construct is not None and construct.start() < authority_end:
        return None
    try:
        return url_origin(httpx.URL(text[:authority_end]))
    except (httpx.InvalidURL, ValueError):
        return None


def url_origin(parsed: httpx.URL) -> Origin | None:
    """The origin of a URL as the live client parsed it (so of what it calls), or None when it has no host."""
    if not parsed.host:
        return None
    return Origin(parsed.scheme, parsed.host.lower(), parsed.port or DEFAULT_PORTS.get(parsed.scheme))


def same_origin(one: str, other: str) -> bool:
    """Whether calls to `other` go where calls to `one` go; a templated origin is the same only as itself."""
    first, second = fixed_origin(one), fixed_origin(other)
    if first is None or second is None:
        return one.strip() == other.strip()
    return first == second


def describe(url: str) -> str:
    origin = fixed_origin(url)
    return origin.base_url() if origin else f"{url.strip()} (an origin its template decides)"
