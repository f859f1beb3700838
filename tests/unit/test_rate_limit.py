"""``max_backend_events_per_second``: the per-app rolling window (spec 01 §3.14, §5.5)."""

from __future__ import annotations

import pytest

from sockudo.errors import ApiError
from sockudo.http.rate_limit import BackendRateLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def limiter(clock: Clock) -> BackendRateLimiter:
    return BackendRateLimiter(clock=clock)


def test_unlimited_admits_everything_and_records_nothing(limiter: BackendRateLimiter) -> None:
    for _ in range(1000):
        assert limiter.try_acquire("a", 100, None)
        assert limiter.try_acquire("a", 100, 0)
    assert limiter.in_window("a") == 0


def test_admits_up_to_the_limit_within_one_second(
    limiter: BackendRateLimiter, clock: Clock
) -> None:
    assert limiter.try_acquire("a", 2, 3)
    clock.now += 0.5
    assert limiter.try_acquire("a", 1, 3)
    assert not limiter.try_acquire("a", 1, 3)
    assert limiter.in_window("a") == 3


def test_refusal_consumes_nothing(limiter: BackendRateLimiter, clock: Clock) -> None:
    assert limiter.try_acquire("a", 2, 3)
    assert not limiter.try_acquire("a", 2, 3)  # 2 + 2 > 3: the whole request is refused
    assert limiter.in_window("a") == 2
    assert limiter.try_acquire("a", 1, 3)  # the refused units were never counted


def test_window_rolls_per_entry(limiter: BackendRateLimiter, clock: Clock) -> None:
    assert limiter.try_acquire("a", 2, 3)  # t=0
    clock.now += 0.6
    assert limiter.try_acquire("a", 1, 3)  # t=0.6
    clock.now += 0.3  # t=0.9: nothing expired yet
    assert not limiter.try_acquire("a", 1, 3)
    clock.now += 0.1  # t=1.0: the first entry is exactly one second old and leaves
    assert limiter.try_acquire("a", 2, 3)
    assert not limiter.try_acquire("a", 1, 3)
    clock.now += 0.6  # t=1.6: the t=0.6 entry leaves
    assert limiter.try_acquire("a", 1, 3)
    assert limiter.in_window("a") == 3


def test_apps_are_independent(limiter: BackendRateLimiter) -> None:
    assert limiter.try_acquire("a", 2, 2)
    assert not limiter.try_acquire("a", 1, 2)
    assert limiter.try_acquire("b", 2, 2)
    assert not limiter.try_acquire("b", 1, 2)


def test_a_request_larger_than_the_limit_is_always_refused(
    limiter: BackendRateLimiter, clock: Clock
) -> None:
    assert not limiter.try_acquire("a", 4, 3)
    clock.now += 10
    assert not limiter.try_acquire("a", 4, 3)
    assert limiter.try_acquire("a", 3, 3)


def test_acquire_raises_429_with_retry_after(limiter: BackendRateLimiter) -> None:
    limiter.acquire("a", 1, 1)
    with pytest.raises(ApiError) as info:
        limiter.acquire("a", 1, 1)
    err = info.value
    assert (err.status, err.code) == (429, "rate_limited")
    assert err.headers == {"Retry-After": "1"}
