"""Node-local sockets and channel subscriptions (memory only; knows nothing about other nodes).

Every socket owns an :class:`Outbox`, a bounded send queue drained by one writer task. Fanout
and the socket's own read loop enqueue synchronously; when the queue is full the socket is
asked to close instead of buffering without bound (spec 01 §2.4 code 4100, see fanout.py).
"""

from __future__ import annotations

import asyncio
from collections import deque

SEND_QUEUE_FRAMES = 1024
"""Frames one socket may have waiting; a client that falls this far behind is disconnected."""
SEND_QUEUE_CHARS = 4 * 1024 * 1024
"""Characters one socket may have waiting: bounds memory when frames are large (100 KiB each)."""


class Outbox:
    """The bounded send queue of one socket plus a pending close request."""

    def __init__(
        self,
        socket_id: str,
        app_id: str,
        capacity: int = SEND_QUEUE_FRAMES,
        max_chars: int = SEND_QUEUE_CHARS,
    ) -> None:
        self.socket_id = socket_id
        self.app_id = app_id
        self.capacity = capacity
        self.max_chars = max_chars
        self._frames: deque[str] = deque()
        self._chars = 0
        self._wake = asyncio.Event()
        self.close_request: tuple[int, str] | None = None

    def offer(self, frame: str) -> bool:
        """Enqueue ``frame``; ``False`` when full or closing (the frame is dropped)."""
        if self.close_request is not None or len(self._frames) >= self.capacity:
            return False
        # An empty queue always takes one frame, so a single large frame is never refused.
        if self._frames and self._chars + len(frame) > self.max_chars:
            return False
        self._frames.append(frame)
        self._chars += len(frame)
        self._wake.set()
        return True

    def request_close(self, code: int, reason: str) -> None:
        """Ask the writer to close; the first request wins, pending frames are dropped."""
        if self.close_request is None:
            self.close_request = (code, reason)
            self._frames.clear()
            self._chars = 0
            self._wake.set()

    def __len__(self) -> int:
        return len(self._frames)

    def take(self) -> list[str]:
        """Everything queued now, oldest first."""
        frames = list(self._frames)
        self._frames.clear()
        self._chars = 0
        return frames

    async def wait(self) -> None:
        """Until there is a frame or a close request."""
        while not self._frames and self.close_request is None:
            self._wake.clear()
            await self._wake.wait()


class Hub:
    """Who is connected to this node and which channels each socket is subscribed to."""

    def __init__(self) -> None:
        self._sockets: dict[str, Outbox] = {}
        # (app id, channel) → socket id → outbox; dicts keep subscribe order for fanout.
        self._channels: dict[tuple[str, str], dict[str, Outbox]] = {}
        self._subscriptions: dict[str, set[str]] = {}
        self._per_app: dict[str, int] = {}

    # --- sockets ----------------------------------------------------------------------------

    def has_socket(self, socket_id: str) -> bool:
        return socket_id in self._sockets

    def add(self, outbox: Outbox) -> None:
        if outbox.socket_id in self._sockets:
            raise ValueError(f"socket id {outbox.socket_id} is already connected")
        self._sockets[outbox.socket_id] = outbox
        self._subscriptions[outbox.socket_id] = set()
        self._per_app[outbox.app_id] = self._per_app.get(outbox.app_id, 0) + 1

    def remove(self, socket_id: str) -> list[str]:
        """Forget the socket and every subscription it had; returns those channels."""
        outbox = self._sockets.pop(socket_id, None)
        if outbox is None:
            return []
        channels = sorted(self._subscriptions.pop(socket_id, set()))
        for channel in channels:
            self._leave(outbox.app_id, channel, socket_id)
        left = self._per_app[outbox.app_id] - 1
        if left:
            self._per_app[outbox.app_id] = left
        else:
            del self._per_app[outbox.app_id]
        return channels

    def close_all(self, code: int, reason: str) -> int:
        """Ask every socket to close (shutdown: 4200, spec 01 §2.4); returns how many."""
        for outbox in self._sockets.values():
            outbox.request_close(code, reason)
        return len(self._sockets)

    def get(self, socket_id: str) -> Outbox | None:
        return self._sockets.get(socket_id)

    def connection_count(self, app_id: str | None = None) -> int:
        """Sockets of ``app_id``, or of every app on this node when ``None``."""
        if app_id is None:
            return len(self._sockets)
        return self._per_app.get(app_id, 0)

    def counts_per_app(self) -> dict[str, int]:
        return dict(self._per_app)

    # --- subscriptions ----------------------------------------------------------------------

    def subscribe(self, socket_id: str, channel: str) -> bool:
        """Join ``channel``; ``False`` when the socket already was a subscriber."""
        outbox = self._sockets[socket_id]
        subscribers = self._channels.setdefault((outbox.app_id, channel), {})
        if socket_id in subscribers:
            return False
        subscribers[socket_id] = outbox
        self._subscriptions[socket_id].add(channel)
        return True

    def unsubscribe(self, socket_id: str, channel: str) -> bool:
        """Leave ``channel``; ``False`` (a no-op) when the socket was not subscribed."""
        outbox = self._sockets.get(socket_id)
        if outbox is None or channel not in self._subscriptions[socket_id]:
            return False
        self._subscriptions[socket_id].discard(channel)
        self._leave(outbox.app_id, channel, socket_id)
        return True

    def _leave(self, app_id: str, channel: str, socket_id: str) -> None:
        subscribers = self._channels.get((app_id, channel))
        if subscribers is None:
            return
        subscribers.pop(socket_id, None)
        if not subscribers:
            del self._channels[(app_id, channel)]

    def channels_of(self, socket_id: str) -> frozenset[str]:
        return frozenset(self._subscriptions.get(socket_id, ()))

    def subscribers(self, app_id: str, channel: str) -> list[Outbox]:
        """A snapshot, so a close triggered while iterating cannot disturb the caller."""
        return list(self._channels.get((app_id, channel), {}).values())

    def subscription_count(self, app_id: str, channel: str) -> int:
        return len(self._channels.get((app_id, channel), ()))
