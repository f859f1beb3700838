"""The native WebSocket heartbeat of V2 connections (spec 02 §10.1), as a pure schedule.

The server pings every ``max(ping_interval, activity_timeout / 2)`` seconds; a ping that no
inbound frame (its Pong or anything else) follows within ``pong_timeout`` closes the socket with
4201. Time is passed in: the endpoint writes the Ping frames to the socket's transport and
learns when frames arrived from :class:`sockudo.ws.direct.FrameClock`. Without those (another
ASGI server, HTTP/2) the session's ``sockudo:ping`` fallback runs instead (spec 02 §10.2).
"""

from __future__ import annotations

import enum
import math


class Beat(enum.Enum):
    """What a :meth:`NativeHeartbeat.tick` asks of the endpoint."""

    NOTHING = 0
    PING = 1
    """Write a Ping frame now."""
    TIMEOUT = 2
    """Close with 4201: a ping went unanswered for ``pong_timeout`` seconds."""


def ping_interval(ping_interval_s: float, activity_timeout_s: float) -> float:
    """Seconds between pings: ``max(ping_interval, activity_timeout / 2)`` (defaults → 60)."""
    return max(ping_interval_s, activity_timeout_s / 2)


class NativeHeartbeat:
    """One socket's ping schedule and the oldest ping still waiting for an inbound frame."""

    # One per V2 connection: slots keep an idle socket's footprint down.
    __slots__ = ("_next_ping", "_unanswered", "interval", "pong_timeout")

    def __init__(self, interval: float, pong_timeout: float, now: float) -> None:
        self.interval = interval
        self.pong_timeout = pong_timeout
        self._next_ping = now + interval
        self._unanswered: float | None = None
        """When the oldest ping no frame has followed yet was sent."""

    def next_deadline(self) -> float:
        """The next moment :meth:`tick` has something to do."""
        if self._unanswered is None:
            return self._next_ping
        return min(self._next_ping, self._unanswered + self.pong_timeout)

    def tick(self, now: float, last_inbound: float) -> Beat:
        """Advance to ``now``; ``last_inbound`` is when the socket's latest frame arrived."""
        if self._unanswered is not None and last_inbound > self._unanswered:
            self._unanswered = None
        if self._unanswered is not None and now >= self._unanswered + self.pong_timeout:
            # The socket is closing: no more pings, and no deadline to wake the endpoint for.
            self._next_ping = math.inf
            self._unanswered = None
            return Beat.TIMEOUT
        if now >= self._next_ping:
            # From now, not from the missed slot: a stalled loop sends one ping, not a burst.
            self._next_ping = now + self.interval
            if self._unanswered is None:
                # A later ping never moves the deadline of one still unanswered (an interval
                # shorter than pong_timeout must not postpone the 4201 forever).
                self._unanswered = now
            return Beat.PING
        return Beat.NOTHING
