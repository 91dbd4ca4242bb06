"""Retry policy: which failures retry, and how long to wait before retry k (1-based)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

from proxy.config.settings import (
    DEFAULT_RETRY_INITIAL_DELAY_MS,
    DEFAULT_RETRY_MAX_ATTEMPTS,
    DEFAULT_RETRY_MAX_DELAY_MS,
    DEFAULT_RETRYABLE_STATUS_CODES,
)
from proxy.connections.spec import BackoffStrategy, ConnectionSpec

RETRY_AFTER_STATUSES = frozenset({429, 503})


@dataclass(frozen=True)
class RetryPolicy:
    enabled: bool
    max_retries: int
    initial_delay_ms: int
    strategy: BackoffStrategy
    max_delay_ms: int
    retryable_statuses: frozenset[int]

    @classmethod
    def of(cls, spec: ConnectionSpec) -> RetryPolicy:
        return cls(
            spec.retry_enabled,
            spec.retry_max_attempts,
            spec.retry_initial_delay_ms,
            spec.retry_backoff_strategy,
            spec.retry_max_delay_ms,
            frozenset(spec.retryable_status_codes),
        )

    @classmethod
    def default(cls) -> RetryPolicy:
        """A connection's policy with every retry field left at its default (no retries)."""
        return cls(
            False,
            DEFAULT_RETRY_MAX_ATTEMPTS,
            DEFAULT_RETRY_INITIAL_DELAY_MS,
            BackoffStrategy.EXPONENTIAL,
            DEFAULT_RETRY_MAX_DELAY_MS,
            frozenset(DEFAULT_RETRYABLE_STATUS_CODES),
        )

    @property
    def max_calls(self) -> int:
        return 1 + (self.max_retries if self.enabled else 0)

    def backoff_ms(self, retry: int) -> float:
        d = self.initial_delay_ms
        if self.strategy is BackoffStrategy.FIXED:
            delay = d
        elif self.strategy is BackoffStrategy.LINEAR:
            delay = d * retry
        else:
            delay = d * 2 ** (retry - 1)
        return min(delay, self.max_delay_ms)

    def delay_ms(self, retry: int, status: int | None, retry_after: str | None, now: float | None = None) -> float:
        """Backoff for retry k, or the upstream's Retry-After on 429/503, capped either way."""
        if status in RETRY_AFTER_STATUSES and retry_after:
            seconds = parse_retry_after(retry_after, now)
            if seconds is not None:
                return min(seconds * 1000, self.max_delay_ms)
        return self.backoff_ms(retry)


def parse_retry_after(value: str, now: float | None = None) -> float | None:
    """Seconds from a Retry-After value: delta-seconds or an HTTP date."""
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))
