"""The transport seam: every upstream call goes through one httpx transport that is live, recording
or replaying per cassette. Nothing above it branches on the mode."""

import httpx


class BodyTooLarge(Exception):
    """An upstream body over the cap: the call fails cleanly, and nothing is recorded."""


async def read_capped(response: httpx.Response, max_bytes: int) -> bytes:
    """The decoded body, refused past `max_bytes` rather than truncated."""
    try:
        content = response.content  # a replayed answer is in memory already
    except httpx.ResponseNotRead:
        pass
    else:
        if len(content) > max_bytes:
            raise BodyTooLarge
        return content
    chunks, size = [], 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > max_bytes:
            raise BodyTooLarge
        chunks.append(chunk)
    return b"".join(chunks)
