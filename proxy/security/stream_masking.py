"""Masking a body that arrives in chunks: an echo of a secret split across two chunks is masked whole."""

from __future__ import annotations

import re

from proxy.security.redaction import Redactor

_ESCAPE_START = re.compile(rb"[\\%]")


class StreamMasker:
    """Masks a body that arrives in chunks. Each chunk is masked with the tail held back from the one before,
    and a tail as long as the longest echo of a secret is held back again, so an echo split across two chunks
    is whole in the text that is masked. What is held back goes out with the next chunk, or at the end."""

    def __init__(self, redactor: Redactor) -> None:
        self.redactor = redactor
        self._held = b""

    def feed(self, chunk: bytes) -> bytes:
        data = self._held + chunk
        hold = self.redactor.longest_echo
        if not hold:
            self._held = b""
            return data
        whole = _complete(data)  # a character cut in two is masked once it is whole
        masked = self.redactor.redact_bytes(data[:whole])
        release = self._echo_start(masked, max(0, len(masked) - hold))
        self._held = masked[release:] + data[whole:]
        return masked[:release]

    def _echo_start(self, data: bytes, start: int) -> int:
        """The first place from `start` on where an echo may begin and run past the end of `data`. Up to its
        first escape (`\\\\`, `%`) an echo reads as one of the secret's literal forms does, so it begins at an
        escape or at a run that is the start of a literal form, no longer than the longest of them."""
        escape = _ESCAPE_START.search(data, start)
        limit = escape.start() if escape else len(data)
        heads = self.redactor.echo_heads
        for found in self.redactor.echo_starts.finditer(data, max(start, limit - self.redactor.longest_head), limit):
            head = data[found.start() : limit]
            if any(form.startswith(head) for form in heads):
                return _char_start(data, found.start())
        return _char_start(data, limit)

    def flush(self) -> bytes:
        held, self._held = self._held, b""
        return self.redactor.redact_bytes(held)


_UTF8_LEADS = ((0x80, 0x00), (0xE0, 0xC0), (0xF0, 0xE0), (0xF8, 0xF0))  # (mask, bits) of a 1- to 4-byte lead


def _char_start(data: bytes, index: int) -> int:
    """`index`, moved back to the start of the UTF-8 character it is inside (at most 3 bytes back)."""
    index = max(0, min(index, len(data)))
    for at in range(index, max(index - 3, 0) - 1, -1):
        if at == len(data) or data[at] & 0xC0 != 0x80:
            return at
    return index


def _complete(data: bytes) -> int:
    """The length of `data` without a UTF-8 character it ends in the middle of."""
    if not data:
        return 0
    last = _char_start(data, len(data) - 1)
    lead = data[last]
    size = next((n for n, (mask, bits) in enumerate(_UTF8_LEADS, 1) if lead & mask == bits), 1)
    return last if last + size > len(data) else len(data)
