"""How an upstream may echo a secret back, and an independent check of whether a text still reveals one.

`revealed` decodes a masked text the way a reader would (JSON unescaping with the json module, again for each
document nested in a string down to the depth the proxy masks, percent decoding with urllib, HTML entities, base64 at
every alignment, UTF-16 either way round) and says in which of those readings the secret can still be read. It shares
no code with proxy.security.redaction (or proxy.security.encoded_forms) on purpose.
"""

from __future__ import annotations

import base64
import html
import json
import re
from collections.abc import Callable
from urllib.parse import quote, quote_plus, unquote, unquote_plus

from proxy.config.settings import MASK_NESTED_JSON_DEPTH

_JSON_ESCAPE = re.compile(
    r"\\u[dD][89abAB][0-9a-fA-F]{2}\\u[dD][c-fC-F][0-9a-fA-F]{2}|\\u[0-9a-fA-F]{4}|\\[\"\\/bfnrt]"
)
_BASE64_RUN = re.compile(r"[A-Za-z0-9+/_-]{4,}")


def json_unescaped(text: str, times: int = 1) -> str:
    for _ in range(times):
        text = _JSON_ESCAPE.sub(lambda m: json.loads(f'"{m.group()}"'), text)
    return text


def json_u_escaped(text: str) -> str:
    """Every character as a lower-case `\\uXXXX` (a surrogate pair outside the BMP)."""
    units = text.encode("utf-16-be", "surrogatepass")
    return "".join(f"\\u{units[i : i + 2].hex()}" for i in range(0, len(units), 2))


def in_json_string(document: str, times: int = 1) -> str:
    """`document` as the content of a JSON string value (its escapes escaped again), `times` over."""
    for _ in range(times):
        document = json.dumps(document)[1:-1]
    return document


def _base64_readings(text: str) -> list[bytes]:
    readings = []
    for run in _BASE64_RUN.findall(text):
        run = run.replace("-", "+").replace("_", "/")
        for start in range(4):  # every alignment of the 4-character groups
            chunk = run[start:]
            partial = len(chunk) % 4  # a last group of 2 or 3 characters still holds 1 or 2 bytes
            chunk = chunk[:-1] if partial == 1 else chunk + "=" * ((4 - partial) % 4)
            if chunk:
                readings.append(base64.b64decode(chunk))
    return readings


def revealed(secret: str, data: str | bytes) -> list[str]:
    """The readings of `data` (masked output) in which `secret` can still be read; empty when none."""
    raw = data if isinstance(data, bytes) else data.encode("utf-8", "surrogatepass")
    text = data if isinstance(data, str) else data.decode("utf-8", "replace")
    secret_bytes = secret.encode("utf-8", "surrogatepass")
    readings: dict[str, str] = {
        "plain": text,
        "percent-decoded": unquote(text, errors="replace"),
        "form-decoded": unquote_plus(text, errors="replace"),
    }
    decoded, unescaped = text, html.unescape(text)  # the inspector's pretty JSON
    for times in range(1, MASK_NESTED_JSON_DEPTH + 2):  # a secret's own escapes, then each document around it
        decoded, unescaped = json_unescaped(decoded), json_unescaped(unescaped)
        readings[f"JSON-decoded x{times}"] = decoded
        readings[f"HTML-unescaped, JSON-decoded x{times}"] = unescaped
    for codec in ("utf-16-le", "utf-16-be"):
        for start in (0, 1):
            readings[f"{codec} from byte {start}"] = raw[start:].decode(codec, "replace")
    found = [name for name, reading in readings.items() if secret in reading]
    if secret_bytes in raw:
        found.append("bytes")
    if any(secret_bytes in reading for reading in _base64_readings(text)):
        found.append("base64-decoded")
    return found


def _json_mixed(token: str) -> str:
    """Every other character as an upper-case `\\uXXXX`, the rest as short escapes where JSON has them."""
    short = {'"': '\\"', "\\": "\\\\", "/": "\\/"}
    return "".join(f"\\u{ord(c):04X}" if i % 2 else short.get(c, c) for i, c in enumerate(token))


def _json_body(echo: str) -> bytes:
    return ('{"reply": "seen ' + echo + '"}').encode()


# name → the whole reply body an upstream echoing `token` that way sends.
ECHOES: dict[str, Callable[[str], bytes]] = {
    "json-escaped": lambda t: _json_body("".join(f"\\u{ord(c):04x}" for c in t)),
    "json-mixed": lambda t: _json_body(_json_mixed(t)),
    # A JSON document inside the reply's string: its escapes escaped again.
    "json-in-json": lambda t: _json_body(in_json_string('{"k": "' + json_u_escaped(t) + '"}')),
    "percent": lambda t: _json_body(quote(t, safe="")),
    "percent-lower": lambda t: _json_body(re.sub(r"%[0-9A-F]{2}", lambda m: m.group().lower(), quote(t, safe=""))),
    "form": lambda t: _json_body(quote_plus(t)),
    "base64": lambda t: _json_body(base64.b64encode(t.encode()).decode()),
    "base64url": lambda t: _json_body(base64.urlsafe_b64encode(t.encode()).decode().rstrip("=")),
    "basic": lambda t: _json_body(base64.b64encode(f"user:{t}".encode()).decode()),  # inside a larger value
    # A whole body in UTF-16 with no charset named, so the proxy reads it as UTF-8.
    "utf-16-le": lambda t: f"seen {t}".encode("utf-16-le"),
    "utf-16-be": lambda t: f"seen {t}".encode("utf-16-be"),
}
