"""The retry budget and backoff."""

from __future__ import annotations

import random

from router.config import RetrySettings
from router.routing.retry import RetryBudget, backoff


def test_retries_never_exceed_the_ratio_of_requests() -> None:
    budget = RetryBudget(RetrySettings(budget_ratio=0.25, min_per_second=0, window_seconds=10))
    granted = 0
    for i in range(100):
        budget.record_request(100.0 + i * 0.05)  # 100 requests over 5 s
        if budget.try_retry(100.0 + i * 0.05):
            granted += 1
    assert granted == 25
    assert budget.totals(105.0) == (100, 25)


def test_floor_lets_a_quiet_gateway_retry() -> None:
    budget = RetryBudget(RetrySettings(budget_ratio=0.2, min_per_second=0.5, window_seconds=4))
    budget.record_request(0.0)
    # floor: 0.5/s x 4 s = 2, plus 0.2 x 1 request
    assert budget.try_retry(0.0) and budget.try_retry(0.1)
    assert not budget.try_retry(0.2)


def test_window_slides() -> None:
    budget = RetryBudget(RetrySettings(budget_ratio=1.0, min_per_second=0, window_seconds=3))
    for _ in range(4):
        budget.record_request(10.2)
    assert all(budget.try_retry(10.5) for _ in range(4))
    assert not budget.try_retry(11.0)
    assert not budget.try_retry(12.9)  # still inside the 3 s window
    assert budget.totals(13.0) == (0, 0)  # the second 10 has left the window
    budget.record_request(13.0)
    assert budget.try_retry(13.0)


def test_zero_ratio_and_floor_means_no_retries() -> None:
    budget = RetryBudget(RetrySettings(budget_ratio=0, min_per_second=0))
    for _ in range(10):
        budget.record_request(1.0)
    assert not budget.try_retry(1.0)


def test_reconfigure_keeps_counts_when_the_window_is_the_same() -> None:
    budget = RetryBudget(RetrySettings(budget_ratio=0, min_per_second=0, window_seconds=10))
    for _ in range(10):
        budget.record_request(1.0)
    budget.configure(RetrySettings(budget_ratio=0.5, min_per_second=0, window_seconds=10))
    assert sum(budget.try_retry(1.0) for _ in range(10)) == 5


def test_backoff_full_jitter_doubles_to_a_cap() -> None:
    s = RetrySettings(backoff_base_seconds=0.1, backoff_max_seconds=0.3)
    rnd = random.Random(1)
    for retry, ceiling in ((1, 0.1), (2, 0.2), (3, 0.3), (6, 0.3)):
        delays = [backoff(s, retry, None, False, rnd) for _ in range(200)]
        assert all(d is not None and 0 <= d <= ceiling for d in delays)
        assert max(d or 0 for d in delays) > ceiling * 0.8  # jitter spans the range
    assert backoff(RetrySettings(backoff_base_seconds=0), 3, None, False) == 0.0


def test_retry_after_is_honoured_on_the_same_backend_up_to_the_cap() -> None:
    s = RetrySettings(backoff_base_seconds=0.1, retry_after_max_seconds=2.0)
    assert backoff(s, 1, 1.5, True) == 1.5
    assert backoff(s, 1, 5.0, True) is None  # asks for too long: not retried there
    d = backoff(s, 1, 5.0, False)  # another backend: ordinary backoff
    assert d is not None and d <= 0.1
