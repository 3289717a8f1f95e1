"""The retry policy, as pure functions."""

from __future__ import annotations

import email.utils
import random
import time
from dataclasses import dataclass
from typing import Callable, Optional

# 408 request_timeout, 429 rate_limited, 503 overloaded / storage_unavailable, 507 storage_full;
# 502 and 504 come from a reverse proxy in front of hookrelay. Nothing was stored for any of
# them, and the idempotency key makes a repeat safe even if something was.
RETRYABLE_STATUSES = frozenset({408, 429, 502, 503, 504, 507})


def parse_retry_after(value: Optional[str], now: Optional[float] = None) -> Optional[float]:
    """``Retry-After`` in seconds: delta-seconds or an HTTP date; ``None`` when absent or
    unreadable; never negative."""
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None or when.tzinfo is None:
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if seconds != seconds:  # NaN
        return None
    return max(0.0, seconds)


@dataclass(frozen=True)
class RetryPolicy:
    """At most ``max_retries`` retries after the first attempt, waiting ``Retry-After`` when the
    server says, else exponential backoff from ``backoff_base`` (capped at ``backoff_max``)
    with jitter; a retry whose wait would take the call's total waiting beyond
    ``max_retry_wait`` seconds is not made: the error is raised instead."""

    max_retries: int = 3
    max_retry_wait: float = 30.0
    backoff_base: float = 0.5
    backoff_max: float = 8.0

    def __post_init__(self) -> None:
        if self.max_retries < 0:
            raise ValueError("max_retries must be 0 or more")
        if self.max_retry_wait < 0:
            raise ValueError("max_retry_wait must be 0 or more")

    def backoff(self, retry: int, rand: Callable[[], float] = random.random) -> float:
        """The wait before retry number ``retry`` (1-based) without a ``Retry-After``: half the
        exponential step plus a random share of the other half ("equal jitter")."""
        step: float = min(self.backoff_max, self.backoff_base * 2.0 ** (retry - 1))
        return step / 2 + float(rand()) * step / 2

    def next_delay(
        self,
        retry: int,
        retry_after: Optional[float],
        waited: float,
        rand: Callable[[], float] = random.random,
    ) -> Optional[float]:
        """Seconds to wait before retry number ``retry`` (1-based), or ``None`` to give up,
        given the server's ``Retry-After`` and the seconds already waited in this call."""
        if retry > self.max_retries:
            return None
        delay = retry_after if retry_after is not None else self.backoff(retry, rand)
        if waited + delay > self.max_retry_wait:
            return None
        return delay
