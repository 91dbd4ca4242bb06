"""Who may reach the server from a browser, as the user lists them: the `Host` names it answers beside its own
(`--allowed-host`, `settings.allowed_hosts`) and the web origins it lets call the API (`--cors-origin`,
`settings.cors_origins`). One parser for each, so a flag and the config file accept and refuse the same values."""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import urlsplit

HOST_NAME = re.compile(r"[a-z0-9._-]+|\[?[0-9a-f:.]+\]?")


def normalize_origin(value: str) -> str:
    """`scheme://host[:port]` as a browser writes it in `Origin`; ValueError says what is wrong."""
    try:
        parts = urlsplit(value.strip())
        port = parts.port
    except ValueError:
        raise ValueError(f"{value!r} is not a valid origin (scheme://host[:port])") from None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{value!r} is not an origin: write it as http(s)://host[:port], e.g. http://localhost:3000")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username is not None:
        raise ValueError(f"{value!r}: an origin is scheme://host[:port] alone, with no path, query or user")
    scheme, host = parts.scheme.lower(), parts.hostname.rstrip(".")
    host = f"[{host}]" if ":" in host else host
    default = 443 if scheme == "https" else 80
    return f"{scheme}://{host}" + (f":{port}" if port is not None and port != default else "")


def normalize_host_name(value: str) -> str:
    """A name for `--allowed-host`: no scheme, no port; ValueError says what is wrong."""
    name = value.strip().lower().rstrip(".")
    if not HOST_NAME.fullmatch(name) or (":" in name and not is_ip(name.strip("[]"))):
        raise ValueError(f"{value!r} is not a host name: give the name alone, without scheme or port")
    return name.strip("[]")


def is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True
