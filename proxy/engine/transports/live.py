"""Pacing for the live end of the stack: the rate limit applies to calls that really go to the network, so
replayed calls never wait for it. The wait for a slot comes before the request is sent, so it is no part of
the attempt's timeout."""

from __future__ import annotations

import httpx

from proxy.engine.transports import RATE_LIMIT_EXTENSION, waiting_to_send
from proxy.engine.transports.ratelimit import RateLimiters


class PacedTransport(httpx.AsyncBaseTransport):
    def __init__(self, inner: httpx.AsyncBaseTransport, limiters: RateLimiters | None = None) -> None:
        self.inner = inner
        self.limiters = limiters or RateLimiters()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        limit = request.extensions.get(RATE_LIMIT_EXTENSION)
        limiter = self.limiters.get(*limit) if limit else None
        if limiter is not None:
            with waiting_to_send(request):
                await limiter.acquire()
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()
