"""An upstream answer as a call result holds it: decoded, masked, parsed when it is JSON; and transport
failures in plain words."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import Any, TypeVar

import httpx

from proxy.config.settings import OFF_LOOP_REPLY_BYTES
from proxy.connections.jsonpath_budget import LoopShareSpent, StepBudget
from proxy.engine.results import UpstreamReply
from proxy.engine.transports import REPLY_MEMO_EXTENSION
from proxy.security import jsonbounds
from proxy.security.head_masking import masked_head
from proxy.security.redaction import Redactor

E = TypeVar("E", bound=BaseException)
T = TypeVar("T")


async def off_loop_if_large(size: int, func: Callable[..., Any], *args: Any) -> Any:
    """Parsing and mapping a large reply (JSONPath `$..x` over megabytes takes seconds) runs in a
    worker thread so the event loop keeps serving; a small one costs less than the hand-off."""
    if size > OFF_LOOP_REPLY_BYTES:
        return await asyncio.to_thread(func, *args)
    return func(*args)


async def read_reply(size: int, func: Callable[..., T], *args: Any) -> T:
    """`func(*args, budget)`: a reply of `size` characters read with JSONPaths (end rules, output mapping) under
    its step budget. A large reply is read in a worker thread; a small one on the event loop until it has taken
    the steps the loop allows, then again from the start in a worker thread, so no JSONPath stalls the loop."""
    if size > OFF_LOOP_REPLY_BYTES:
        return await asyncio.to_thread(func, *args, StepBudget.for_size(size))
    try:
        return func(*args, StepBudget.for_size(size, on_loop=True))
    except LoopShareSpent:
        return await asyncio.to_thread(func, *args, StepBudget.for_size(size))


def masked_text(raw: bytes, encoding: str, redactor: Redactor) -> str:
    """`raw` decoded and masked. Bytes that do not decode (UTF-16 ones, say) are masked first, before
    replacement characters could hide what they held."""
    try:
        text = raw.decode(encoding)
    except UnicodeDecodeError:
        text = redactor.redact_bytes(raw).decode(encoding, errors="replace")
    return redactor.redact(text)


def decode_reply(response: httpx.Response, raw: bytes, redactor: Redactor) -> UpstreamReply:
    # An upstream that echoes a credential back, in whatever encoding, must not leak it into results, logs
    # or cassettes; the JSON is parsed from the masked text, so an escaped echo is masked before it is decoded.
    # Working out the charset parses the Content-Type each time: only when one is named.
    charset_named = "charset" in response.headers.get("content-type", "").lower()
    encoding = (response.encoding or "utf-8") if charset_named else "utf-8"
    text = masked_text(raw, encoding, redactor)
    reason, headers = masked_head(response, redactor)
    reply = UpstreamReply(response.status_code, reason, headers, text, size=len(raw))
    # A replayed answer comes with a memo of its recording: the same masked text parses to the same JSON.
    memo: dict[str, Any] | None = response.extensions.get(REPLY_MEMO_EXTENSION)
    if memo is not None and memo.get("text") == text:
        reply.json, reply.is_json, reply.json_refused = memo["json"], memo["is_json"], memo["refused"]
        return reply
    try:
        reply.json = jsonbounds.loads(text) if text.strip() else None
        reply.is_json = bool(text.strip())
    except jsonbounds.JsonRefused as exc:
        reply.json_refused = str(exc)
    except ValueError:
        pass
    if memo is not None:
        memo.update(text=text, json=reply.json, is_json=reply.is_json, refused=reply.json_refused)
    return reply


_DEFAULT_PORTS = {"http": 80, "https": 443}


def transport_failure(exc: httpx.TransportError, url: httpx.URL) -> str:
    """A transport error in plain words; httpx's own text is often empty."""
    detail = str(exc) or "no detail"
    unresolved = _cause(exc, socket.gaierror)
    if unresolved is not None:
        return f"could not resolve host {url.host} ({unresolved.strerror or unresolved})"
    if isinstance(exc, httpx.ConnectError):
        if _cause(exc, ConnectionRefusedError) is not None:
            # The live client's own text names its TLS context (aiohttp: `ssl:default`), even for http://.
            port = url.port or _DEFAULT_PORTS.get(url.scheme, 443)
            return f"connection refused: {url.host}:{port} (nothing listening)"
        return f"connection refused: {detail}"
    if isinstance(exc, httpx.ReadError | httpx.RemoteProtocolError):
        return f"the upstream closed the connection mid-reply ({type(exc).__name__}: {detail})"
    if isinstance(exc, httpx.WriteError):
        return f"the connection broke while sending the request ({detail})"
    return f"{type(exc).__name__}: {detail}"


def _cause(exc: BaseException, kind: type[E]) -> E | None:
    """The first exception of `kind` in the chain that led to `exc`: each live client wraps the resolver's
    error in its own."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, kind):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None
