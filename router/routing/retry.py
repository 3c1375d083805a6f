"""The retry budget and the backoff between attempts (pure; the caller passes the time).

The budget keeps a failing fleet from being hit by a retry storm: over the last
``window_seconds``, retries may not exceed ``budget_ratio`` of the requests seen
plus ``min_per_second x window_seconds`` (a floor so a quiet gateway can still
retry). It counts in one-second buckets, so recording a request is an
increment. One budget serves the whole process and survives reloads.

Backoff is full jitter on a doubling ceiling; a ``Retry-After`` the upstream
sent is honoured when the next attempt goes back to the same backend, up to a
cap (past the cap that backend is not retried).
"""

from __future__ import annotations

import math
import random

from router.config import RetrySettings


class RetryBudget:
    __slots__ = ("_requests", "_retries", "_stamps", "floor", "ratio", "size", "window")

    def __init__(self, settings: RetrySettings) -> None:
        self.size = 0
        self.configure(settings)

    def configure(self, settings: RetrySettings) -> None:
        """Take new settings (on reload); the counts so far are kept when they fit."""
        self.ratio = settings.budget_ratio
        self.window = settings.window_seconds
        self.floor = settings.min_per_second * settings.window_seconds
        size = max(1, math.ceil(settings.window_seconds))
        if size != self.size:
            self.size = size
            self._stamps = [-1] * size
            self._requests = [0] * size
            self._retries = [0] * size

    def _slot(self, now: float) -> int:
        second = int(now)
        i = second % self.size
        if self._stamps[i] != second:
            self._stamps[i] = second
            self._requests[i] = 0
            self._retries[i] = 0
        return i

    def record_request(self, now: float) -> None:
        self._requests[self._slot(now)] += 1

    def totals(self, now: float) -> tuple[int, int]:
        """(requests, retries) in the current window."""
        oldest = int(now) - self.size + 1
        requests = retries = 0
        for i, stamp in enumerate(self._stamps):
            if stamp >= oldest:
                requests += self._requests[i]
                retries += self._retries[i]
        return requests, retries

    def try_retry(self, now: float) -> bool:
        """Spend one retry if the budget has one."""
        requests, retries = self.totals(now)
        if retries + 1 > self.ratio * requests + self.floor:
            return False
        self._retries[self._slot(now)] += 1
        return True


def backoff(
    settings: RetrySettings,
    retry: int,
    retry_after: float | None,
    same_backend: bool,
    rand: random.Random | None = None,
) -> float | None:
    """Seconds to wait before retry number ``retry`` (1 = the first retry).

    None: do not retry this backend now (it asked for a wait past the cap)."""
    if same_backend and retry_after is not None:
        if retry_after > settings.retry_after_max_seconds:
            return None
        return retry_after
    ceiling = min(settings.backoff_max_seconds, settings.backoff_base_seconds * 2 ** (retry - 1))
    if ceiling <= 0:
        return 0.0
    return (rand or random).uniform(0.0, ceiling)
