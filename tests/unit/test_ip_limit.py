"""The per-IP limiter: fixed windows, forwarded addresses, the 429 figures."""

from __future__ import annotations

from sockudo.http.ip_limit import IpRateLimiter, api_refusal, forwarded_for


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_window_counts_per_ip_and_restarts() -> None:
    clock = Clock()
    limiter = IpRateLimiter(2, 60, clock=clock)
    first = limiter.check("a")
    assert (first.allowed, first.remaining, first.limit) == (True, 1, 2)
    assert limiter.check("a").allowed
    clock.now += 10
    refused = limiter.check("a")
    assert not refused.allowed
    assert refused.remaining == 0
    assert refused.reset_after == 50
    assert refused.headers() == {
        "X-RateLimit-Limit": "2",
        "X-RateLimit-Remaining": "0",
        "X-RateLimit-Reset": "50",
        "Retry-After": "50",
    }
    assert limiter.check("b").allowed  # another client is not affected
    clock.now += 50
    assert limiter.check("a").allowed  # a new window


def test_refused_requests_do_not_extend_the_window() -> None:
    clock = Clock()
    limiter = IpRateLimiter(1, 10, clock=clock)
    assert limiter.check("a").allowed
    for _ in range(5):
        clock.now += 1
        assert not limiter.check("a").allowed
    clock.now += 5
    assert limiter.check("a").allowed


def test_client_ip_honours_trusted_hops_only() -> None:
    untrusting = IpRateLimiter(1, 1)
    assert untrusting.client_ip("10.0.0.1", "1.2.3.4") == "10.0.0.1"
    one_proxy = IpRateLimiter(1, 1, trust_hops=1)
    assert one_proxy.client_ip("10.0.0.1", "9.9.9.9, 1.2.3.4") == "1.2.3.4"
    two_proxies = IpRateLimiter(1, 1, trust_hops=2)
    assert two_proxies.client_ip("10.0.0.1", "9.9.9.9, 1.2.3.4") == "9.9.9.9"
    assert two_proxies.client_ip("10.0.0.1", "1.2.3.4") == "10.0.0.1"  # too few entries
    assert one_proxy.client_ip(None, None) == "unknown"


def test_forwarded_for_joins_repeated_headers() -> None:
    headers = [(b"host", b"x"), (b"X-Forwarded-For", b"1.1.1.1"), (b"x-forwarded-for", b"2.2.2.2")]
    assert forwarded_for(headers) == "1.1.1.1,2.2.2.2"
    assert forwarded_for([(b"host", b"x")]) is None


def test_api_refusal_is_rate_limited_429() -> None:
    limiter = IpRateLimiter(0, 30, clock=Clock())
    error = api_refusal(limiter.check("a"))
    assert (error.status, error.code) == (429, "rate_limited")
    assert error.headers["Retry-After"] == "30"
