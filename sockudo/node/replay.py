"""The hot replay tier: the newest deliveries of each channel, kept in memory for fast resumes.

Fed by fanout with every committed channel message (spec 02 §7.3 "hot" tier): at most
``per_channel`` entries per channel, entries older than ``ttl_s`` (by publish time) ignored,
and at most ``max_channels`` channels and ``max_bytes`` of payload (least recently published
channels dropped first). A resume the buffer cannot serve falls back to the durable tier.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable

from projections.folds.state import Delivery

MAX_BUFFER_SIZE = 100
"""Spec 02 §7.3 ``max_buffer_size``: also the largest gap a resume may replay."""
BUFFER_TTL_S = 120
MAX_BYTES = 64 * 1024 * 1024
"""Payload bytes the whole buffer may hold; least recently published channels go first."""


class HotReplay:
    """Recent deliveries per (app, channel)."""

    def __init__(
        self,
        per_channel: int = MAX_BUFFER_SIZE,
        ttl_s: float = BUFFER_TTL_S,
        max_channels: int = 10_000,
        max_bytes: int = MAX_BYTES,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.per_channel = per_channel
        self.ttl_ms = ttl_s * 1000
        self.max_channels = max_channels
        self.max_bytes = max_bytes
        self._clock = clock
        self._channels: OrderedDict[tuple[str, str], deque[Delivery]] = OrderedDict()
        self._sizes: dict[tuple[str, str], int] = {}
        self.bytes = 0

    def add(self, d: Delivery) -> None:
        if d.serial is None:
            return  # ephemeral messages are never replayed (spec 02 §4.1)
        key = (d.app_id, d.channel)
        entries = self._channels.get(key)
        if entries is None:
            entries = self._channels[key] = deque(maxlen=self.per_channel)
            self._sizes[key] = 0
        else:
            self._channels.move_to_end(key)
            if len(entries) == self.per_channel:
                self._account(key, -_size(entries[0]))  # the deque drops it on append
        entries.append(d)
        self._account(key, _size(d))
        while len(self._channels) > self.max_channels or (
            self.bytes > self.max_bytes and len(self._channels) > 1
        ):
            oldest, _ = self._channels.popitem(last=False)
            self.bytes -= self._sizes.pop(oldest)

    def _account(self, key: tuple[str, str], delta: int) -> None:
        self._sizes[key] += delta
        self.bytes += delta

    def get(self, app_id: str, channel: str) -> list[Delivery]:
        """The channel's entries within the TTL, oldest first."""
        entries = self._channels.get((app_id, channel))
        if not entries:
            return []
        cutoff = self._clock() * 1000 - self.ttl_ms
        return [d for d in entries if d.published_at_ms >= cutoff]


def _size(d: Delivery) -> int:
    """Approximate memory of an entry: its payload dominates."""
    return len(d.data) + len(d.extras_json or "") + 200
