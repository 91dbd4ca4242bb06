"""The live end: aiohttp's HTTP client, as an httpx transport.

Pooling, keep-alive, TLS, proxies, chunked decoding and their corner cases are aiohttp's job; this module
only carries an `httpx.Request` across and the answer back, and raises every failure as the httpx exception
the engine's retry rules and messages expect. What it sets on aiohttp, and why:
- one `ClientSession` per transport, with a `DummyCookieJar`: a cookie an upstream sets in one session's
  call never rides along on another's, nor lands in a cassette;
- `HTTP_PROXY`/`HTTPS_PROXY`/`NO_PROXY` honoured (as aiohttp's `trust_env` reads them, once per origin), but
  never for a loopback upstream, whatever `NO_PROXY` says: a proxy would receive its credentials;
  TLS verified with the system's CA store;
- no redirect followed and no body decompressed by aiohttp: the answer reaches httpx as the upstream sent
  it, and httpx decodes gzip/deflate as it always did, a bounded piece at a time (so a compression bomb
  meets the engine's cap before it is inflated whole);
- the body streamed as it arrives from the network, each piece as aiohttp receives it; a connection whose
  answer was not read to its end is closed, never handed to another request;
- the request framed by the body we send, never by a caller's Content-Length or Transfer-Encoding, and a
  header name or value with a control character refused before anything is sent; aiohttp adds none of its
  own headers (the engine's are the ones upstreams and cassettes see).
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import re
import socket
import ssl
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any, cast

import aiohttp
import httpx
from aiohttp.client_proto import ResponseHandler
from aiohttp.helpers import get_env_proxy_for_url
from multidict import CIMultiDict
from yarl import URL

from proxy.config.settings import DEFAULT_KEEPALIVE_TIMEOUT_S, DEFAULT_MAX_CONNECTIONS_PER_ORIGIN
from proxy.engine.transports.eager_body import REQUEST_CLASS

# httpx inflates each piece whole, and deflate packs up to ~1,000:1: a compressed body is read in small
# pieces so that one piece never inflates past a few MB before the caller's cap can refuse it.
ENCODED_READ_BYTES = 4 * 1024
# Framing is aiohttp's: it follows the body we send, whatever the caller's headers say.
FRAMING_HEADERS = frozenset({"content-length", "transfer-encoding"})
# aiohttp adds these when a request lacks them; the request goes out with the headers it was built with.
AIOHTTP_AUTO_HEADERS = ("Accept", "Accept-Encoding", "User-Agent", "Content-Type")
# RFC 9110 token for names and methods; a value may hold tab and visible characters, no other control.
TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
FIELD_VALUE = re.compile(r"[^\x00-\x08\x0a-\x1f\x7f]*")
URLS_KEPT = 1024


class AiohttpTransport(httpx.AsyncBaseTransport):
    def __init__(
        self,
        max_connections_per_origin: int = DEFAULT_MAX_CONNECTIONS_PER_ORIGIN,
        ssl_context: ssl.SSLContext | None = None,  # default: the system's CA store, verified
        keepalive_timeout: float = DEFAULT_KEEPALIVE_TIMEOUT_S,
    ) -> None:
        self.max_connections_per_origin = max_connections_per_origin
        self.keepalive_timeout = keepalive_timeout
        self._ssl_context = ssl_context
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._urls: dict[str, URL] = {}
        self._proxies: dict[tuple[str, str, int | None], tuple[URL | None, aiohttp.BasicAuth | None]] = {}
        self._timeouts: dict[tuple[Any, Any], aiohttp.ClientTimeout] = {}

    def _client(self) -> aiohttp.ClientSession:
        """The session, made on first use: aiohttp binds it to the running event loop (a transport used
        again under another loop, as `asyncio.run` twice, gets a session of its own there)."""
        session, loop = self._session, asyncio.get_running_loop()
        if session is None or session.closed or self._loop is not loop:
            self._loop = loop
            if self._ssl_context is None:  # loading the CA store takes ~20 ms: once, and only when used
                self._ssl_context = ssl.create_default_context()
            connector = InStepConnector(
                limit=0,
                limit_per_host=self.max_connections_per_origin,
                keepalive_timeout=self.keepalive_timeout,
                ssl=self._ssl_context,
            )
            session = self._session = aiohttp.ClientSession(
                connector=connector,
                cookie_jar=aiohttp.DummyCookieJar(),
                trust_env=False,  # the environment's proxies are looked up once per origin, below
                auto_decompress=False,
                skip_auto_headers=AIOHTTP_AUTO_HEADERS,
                timeout=aiohttp.ClientTimeout(total=None),
                request_class=REQUEST_CLASS,  # the body goes out with the head, at once (see eager_body)
            )
        return session

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        headers = outgoing_headers(request)
        try:
            body = request.content
        except httpx.RequestNotRead:
            body = await request.aread()
        session = self._client()
        url = self._url(request.url)
        proxy, proxy_auth = self._proxy(request.url, url)
        with mapped_errors(request):
            response = await session.request(
                request.method,
                url,
                headers=headers,
                data=body or None,
                allow_redirects=False,
                timeout=self._timeout(request.extensions.get("timeout") or {}),
                proxy=proxy,
                proxy_auth=proxy_auth,
            )
        return httpx.Response(
            response.status,
            headers=response.raw_headers,
            stream=ResponseBody(response, request),
            extensions={
                "http_version": b"HTTP/1.0" if response.version == aiohttp.HttpVersion10 else b"HTTP/1.1",
                "reason_phrase": (response.reason or "").encode("latin-1", "replace"),
            },
            request=request,
        )

    def _url(self, url: httpx.URL) -> URL:
        """httpx's URL is already percent-encoded: parsed once per URL, not encoded again."""
        text = str(url)
        parsed = self._urls.get(text)
        if parsed is None:
            if len(self._urls) >= URLS_KEPT:
                self._urls.clear()
            parsed = self._urls[text] = URL(text, encoded=True)
        return parsed

    def _proxy(self, url: httpx.URL, parsed: URL) -> tuple[URL | None, aiohttp.BasicAuth | None]:
        """The proxy `HTTP_PROXY`/`HTTPS_PROXY` name for this origin, unless `NO_PROXY` excludes it, as
        aiohttp's `trust_env` finds it. Looked up once per origin: aiohttp's own `trust_env` reads the
        environment and the netrc file in a worker thread on every request, a third of the forward route's
        CPU. (Credentials come from connections only: a netrc file never adds any.) A loopback upstream is
        always called directly: the proxy would read its stored token, in clear text over `http://`, and could
        not reach this machine's loopback anyway unless it runs here."""
        origin = (url.scheme, url.host, url.port)
        found = self._proxies.get(origin)
        if found is None:
            proxy: URL | None = None
            proxy_auth: aiohttp.BasicAuth | None = None
            if not is_loopback_host(url.host):
                try:
                    proxy, proxy_auth = get_env_proxy_for_url(parsed)
                except LookupError:
                    pass
            found = self._proxies[origin] = (proxy, proxy_auth)
        return found

    def _timeout(self, timeouts: dict[str, Any]) -> aiohttp.ClientTimeout:
        """httpx's connect and read timeouts, as aiohttp's. The pool wait and the write are bounded by the
        caller's timeout for the whole attempt."""
        key = (timeouts.get("connect"), timeouts.get("read"))
        timeout = self._timeouts.get(key)
        if timeout is None:
            timeout = self._timeouts[key] = aiohttp.ClientTimeout(total=None, sock_connect=key[0], sock_read=key[1])
        return timeout

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def is_loopback_host(host: str) -> bool:
    """`localhost`, or an address in 127.0.0.0/8 or ::1, in any spelling the resolver reads as one (`127.1`,
    `2130706433`, `::ffff:127.0.0.1`)."""
    name = host.lower().rstrip(".")
    if name == "localhost":
        return True
    try:
        address: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.ip_address(name)
    except ValueError:
        try:  # the shorthand and integer forms of IPv4 that getaddrinfo accepts, as inet_aton reads them
            address = ipaddress.IPv4Address(socket.inet_aton(name))
        except (OSError, ValueError):
            return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


class InStepProtocol(ResponseHandler):
    """aiohttp's connection protocol, never reused once the server sent bytes while it sat idle in the pool
    (a `408` before it hangs up, bytes past an answer's end): aiohttp would read them as the next request's
    answer."""

    pooled = False
    heard_unasked = False

    def set_response_params(self, **kwargs: Any) -> None:
        self.pooled = False  # a request is on its way: what arrives now is its answer
        super().set_response_params(**kwargs)

    def data_received(self, data: bytes) -> None:
        if self.pooled and data:
            self.heard_unasked = True
        super().data_received(data)

    def is_connected(self) -> bool:
        # Asked only of an idle connection, by the pool, before it hands the connection out.
        return super().is_connected() and not self.heard_unasked and not len(self)


class InStepConnector(aiohttp.TCPConnector):
    """aiohttp's connection pool, with connections that tell when they fell out of step."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._factory = cast("functools.partial[ResponseHandler]", functools.partial(InStepProtocol, loop=self._loop))

    def _release(self, key: Any, protocol: ResponseHandler, *, should_close: bool = False) -> None:
        if isinstance(protocol, InStepProtocol):
            protocol.pooled = True  # at the end of its answer: nothing more is due on it
        super()._release(key, protocol, should_close=should_close)


def outgoing_headers(request: httpx.Request) -> CIMultiDict[str]:
    """The headers to send. A rendered header must never be able to start a header (or a request) of its
    own, nor a caller's Content-Length or Transfer-Encoding frame the body as something else."""
    if not TOKEN.fullmatch(request.method):
        raise httpx.LocalProtocolError(f"the method {request.method!r} is not an HTTP token", request=request)
    headers: CIMultiDict[str] = CIMultiDict()
    for raw_name, raw_value in request.headers.raw:
        name = raw_name.decode("latin-1")
        if not TOKEN.fullmatch(name):
            raise httpx.LocalProtocolError(
                f"the header name {name!r} is not an HTTP token, so the request was not sent", request=request
            )
        try:
            value = raw_value.decode()
        except UnicodeDecodeError:
            value = "\x00"  # refused below, without telling the value
        if not FIELD_VALUE.fullmatch(value):
            # The value may be a secret: only the name is told.
            raise httpx.LocalProtocolError(
                f"the header {name!r} holds a line break, another control character or bytes that are not"
                " UTF-8, so the request was not sent",
                request=request,
            )
        if name.lower() not in FRAMING_HEADERS:
            headers.add(name, value)
    return headers


@contextmanager
def mapped_errors(request: httpx.Request, reading_body: bool = False) -> Iterator[None]:
    """aiohttp's errors as the httpx ones httpcore raises for the same failure. The resolver's error stays
    in the cause chain, where the engine looks for it."""
    try:
        yield
    except aiohttp.ConnectionTimeoutError as exc:
        raise httpx.ConnectTimeout(str(exc) or "connecting to the upstream timed out", request=request) from exc
    except aiohttp.SocketTimeoutError as exc:
        message = "the upstream's body stalled" if reading_body else "the upstream sent no answer in time"
        raise httpx.ReadTimeout(message, request=request) from exc
    except aiohttp.ClientProxyConnectionError as exc:
        raise httpx.ProxyError(str(exc), request=request) from exc
    except aiohttp.ClientConnectorError as exc:  # refused, unresolvable, TLS refused
        raise httpx.ConnectError(str(exc), request=request) from exc
    except aiohttp.ServerDisconnectedError as exc:
        raise httpx.RemoteProtocolError("Server disconnected without sending a response.", request=request) from exc
    except aiohttp.ClientPayloadError as exc:  # a body cut short, a malformed chunk
        raise httpx.RemoteProtocolError(f"the upstream's body is cut or malformed ({exc})", request=request) from exc
    except aiohttp.ClientResponseError as exc:  # a malformed status line or header
        raise httpx.RemoteProtocolError(f"the upstream's answer is malformed ({exc.message})", request=request) from exc
    except (aiohttp.ClientOSError, aiohttp.ClientConnectionResetError, ConnectionError) as exc:
        raise httpx.ReadError(str(exc) or type(exc).__name__, request=request) from exc
    except (aiohttp.InvalidURL, aiohttp.NonHttpUrlClientError) as exc:
        raise httpx.UnsupportedProtocol(f"the URL cannot be called: {exc}", request=request) from exc
    except aiohttp.ClientConnectionError as exc:
        raise httpx.ReadError(str(exc) or type(exc).__name__, request=request) from exc
    except ValueError as exc:  # aiohttp's own refusal of a header it will not write
        raise httpx.LocalProtocolError(str(exc), request=request) from exc


class ResponseBody(httpx.AsyncByteStream):
    """One answer's body, each piece yielded as it arrives; the connection goes back to the pool only
    after the body was read to its end."""

    def __init__(self, response: aiohttp.ClientResponse, request: httpx.Request) -> None:
        self.response = response
        self.request = request
        self.complete = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        content = self.response.content
        encoded = self.response.headers.get("content-encoding", "identity").strip().lower() not in ("", "identity")
        with mapped_errors(self.request, reading_body=True):
            if encoded:
                while piece := await content.read(ENCODED_READ_BYTES):
                    yield piece
            else:
                while piece := await content.readany():
                    yield piece
        self.complete = True

    async def aclose(self) -> None:
        # Never awaits: it also runs while a cancelled turn unwinds.
        if self.complete:
            self.response.release()
        else:
            self.response.close()
