"""The last check before a call goes live: no credential left unset.

A config read for a replay (record mode none) keeps `${VAR}` where a credential's variable is not set. Should a
call still go live (a per-call record mode, a fault of the cassette), it fails here naming the variable, before
anything is sent.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Collection

import httpx

from proxy.engine.transports import CredentialUnset


class UnsetCredentialGuard(httpx.AsyncBaseTransport):
    def __init__(self, inner: httpx.AsyncBaseTransport, variables: Collection[str]) -> None:
        self.inner = inner
        self.references = {f"${{{name}}}": name for name in variables}

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        places = [str(request.url), *request.headers.values()]
        places += [_basic_value(value) for value in request.headers.get_list("authorization")]
        for reference, variable in self.references.items():
            if any(reference in place for place in places):
                raise CredentialUnset(variable)
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


def _basic_value(value: str) -> str:
    """`user:password` of a Basic value, where the reference would be base64-encoded."""
    scheme, _, encoded = value.partition(" ")
    if scheme.lower() != "basic":
        return ""
    try:
        return base64.b64decode(encoded.strip(), validate=True).decode("utf-8", "replace")
    except (binascii.Error, ValueError):
        return ""
