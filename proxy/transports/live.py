"""Pacing for the live end of the stack: the rate limit applies to calls that really go to the network, so
replayed calls never wait for it."""

from __future__ import annotations

import httpx

from proxy.ratelimit import RateLimiters

RATE_LIMIT_EXTENSION = "proxy.rate_limit"  # request: (connection id, calls per minute)
RATE_WAITED_EXTENSION = "proxy.rate_waited_ms"  # response: how long the call waited for a slot


class PacedTransport(httpx.AsyncBaseTransport):
    def __init__(self, inner: httpx.AsyncBaseTransport, limiters: RateLimiters | None = None) -> None:
        self.inner = inner
        self.limiters = limiters or RateLimiters()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        waited_ms = 0.0
        limit = request.extensions.get(RATE_LIMIT_EXTENSION)
        if limit:
            limiter = self.limiters.get(*limit)
            if limiter is not None:
                waited_ms = await limiter.acquire() * 1000
        response = await self.inner.handle_async_request(request)
        response.extensions = {**response.extensions, RATE_WAITED_EXTENSION: waited_ms}
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()
