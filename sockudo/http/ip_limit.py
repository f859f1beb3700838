"""Per-client-IP rate limiting of API calls and WebSocket connects (``rate_limiter.*``, spec 01 §9).

Off by default. A fixed window per IP: at most ``max_requests`` in each ``window_seconds``
starting at the IP's first request; the decision carries the ``X-RateLimit-*`` figures the
429 answers report (spec 01 §2.2, §4.3 check 0). Behind proxies, ``trust_hops`` says how many
``X-Forwarded-For`` entries (from the right) were added by proxies we trust; the client is the
entry just left of them. Node-local, like upstream's memory limiter.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from sockudo.errors import ApiError

TOO_MANY = {"error": "Too Many Requests", "message": "Rate limit exceeded. Please try again later."}
"""Body of the WebSocket connect refusal (spec 01 §2.2)."""

_MAX_TRACKED = 100_000
"""IPs remembered at once; expired windows are swept first when this is reached."""


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    limit: int
    remaining: int
    reset_after: float
    """Seconds until the window restarts."""

    def headers(self) -> dict[str, str]:
        reset = str(max(1, math.ceil(self.reset_after)))
        out = {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(self.remaining),
            "X-RateLimit-Reset": reset,
        }
        if not self.allowed:
            out["Retry-After"] = reset
        return out


class IpRateLimiter:
    """Fixed windows per client IP; ``clock`` is monotonic seconds (injectable for tests)."""

    def __init__(
        self,
        max_requests: int,
        window_seconds: float,
        trust_hops: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_requests = max_requests
        self.window = float(window_seconds)
        self.trust_hops = trust_hops
        self._clock = clock
        self._windows: dict[str, tuple[float, int]] = {}

    def client_ip(self, peer: str | None, forwarded_for: str | None) -> str:
        """The address the limit applies to (the peer unless trusted proxies forwarded it)."""
        if self.trust_hops > 0 and forwarded_for:
            hops = [h.strip() for h in forwarded_for.split(",") if h.strip()]
            if len(hops) >= self.trust_hops:
                return hops[-self.trust_hops]
        return peer or "unknown"

    def check_request(self, scope: Mapping[str, Any]) -> Decision:
        """:meth:`check` for the client of an ASGI HTTP or WebSocket ``scope``."""
        client = scope.get("client")
        ip = self.client_ip(client[0] if client else None, forwarded_for(scope.get("headers", [])))
        return self.check(ip)

    def check(self, ip: str) -> Decision:
        """Count one request from ``ip``; refused requests are not counted."""
        now = self._clock()
        start, count = self._windows.get(ip, (now, 0))
        if now - start >= self.window:
            start, count = now, 0
        reset_after = start + self.window - now
        if count >= self.max_requests:
            return Decision(False, self.max_requests, 0, reset_after)
        if ip not in self._windows and len(self._windows) >= _MAX_TRACKED:
            self._sweep(now)
        self._windows[ip] = (start, count + 1)
        return Decision(True, self.max_requests, self.max_requests - count - 1, reset_after)

    def _sweep(self, now: float) -> None:
        expired = [ip for ip, (start, _) in self._windows.items() if now - start >= self.window]
        for ip in expired:
            del self._windows[ip]


def forwarded_for(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """Every ``X-Forwarded-For`` value of an ASGI header list, joined in order."""
    values = [v.decode("latin-1") for k, v in headers if k.lower() == b"x-forwarded-for"]
    return ",".join(values) if values else None


def api_refusal(decision: Decision) -> ApiError:
    """Check 0 of spec 01 §4.3."""
    return ApiError(
        429,
        "rate_limited",
        "Rate limit exceeded. Please try again later.",
        headers=decision.headers(),
    )
