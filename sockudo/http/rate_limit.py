"""``max_backend_events_per_second``: a per-app rolling one-second window (spec 01 §3.14).

One unit is one event on one channel: a ``/events`` call to three channels costs 3, a batch
costs the sum over its items. A request that does not fit in what is left of the window is
refused whole (429 ``rate_limited``, ``Retry-After: 1``) and consumes nothing, so nothing of it
is published. The limiter is node-local and pure apart from the injected clock.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

from sockudo.errors import ApiError

__all__ = ["WINDOW_SECONDS", "BackendRateLimiter", "rate_limited"]

WINDOW_SECONDS = 1.0


def rate_limited() -> ApiError:
    return ApiError(
        429,
        "rate_limited",
        "Backend event rate limit exceeded (max_backend_events_per_second)",
        headers={"Retry-After": "1"},
    )


class _Window:
    __slots__ = ("entries", "total")

    def __init__(self) -> None:
        self.entries: deque[tuple[float, int]] = deque()
        self.total = 0


class BackendRateLimiter:
    """Rolling-window admission per app; ``clock`` is monotonic seconds (injectable for tests)."""

    def __init__(
        self, clock: Callable[[], float] = time.monotonic, window: float = WINDOW_SECONDS
    ) -> None:
        self._clock = clock
        self._window = window
        self._apps: dict[str, _Window] = {}

    def try_acquire(self, app_id: str, units: int, limit: int | None) -> bool:
        """Admit ``units`` for ``app_id`` if the last window leaves room under ``limit``.

        ``limit`` ``None`` (or ``0``) is unlimited and records nothing. On refusal nothing is
        consumed.
        """
        if not limit or units <= 0:
            return True
        now = self._clock()
        state = self._apps.get(app_id)
        if state is None:
            state = self._apps[app_id] = _Window()
        horizon = now - self._window
        entries = state.entries
        while entries and entries[0][0] <= horizon:
            state.total -= entries.popleft()[1]
        if state.total + units > limit:
            return False
        entries.append((now, units))
        state.total += units
        return True

    def acquire(self, app_id: str, units: int, limit: int | None) -> None:
        """:meth:`try_acquire`, raising the 429 of spec 01 §5.5 on refusal."""
        if not self.try_acquire(app_id, units, limit):
            raise rate_limited()

    def in_window(self, app_id: str) -> int:
        """Units admitted for ``app_id`` within the current window (tests, metrics)."""
        state = self._apps.get(app_id)
        if state is None:
            return 0
        horizon = self._clock() - self._window
        return sum(units for at, units in state.entries if at > horizon)
