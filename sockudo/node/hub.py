"""Node-local sockets and channel subscriptions (memory only; knows nothing about other nodes).

Every socket owns an :class:`Outbox`. On the node's WebSocket edge it writes frames straight to
the socket's transport (direct mode, see sockudo/ws/direct.py); elsewhere it is a bounded send
queue drained by one writer task. Either way fanout and the socket's own read loop offer frames
synchronously, and a socket that cannot keep up is asked to close instead of buffering without
bound (spec 01 §2.4 code 4100, see fanout.py).

Besides channels, a V2 socket can subscribe to a wildcard pattern or a ``[meta]<channel>``
(spec 02 §5.8). They are kept apart from channel subscribers, so subscription counts, occupied
channels and the fanout of a node without them stay exactly what they were: a pattern lookup
for a message is one dict probe while the app has no patterns, and the patterns matching a
channel are computed once and cached until the app's set of patterns changes.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from typing import Final

from sockudo import metrics
from sockudo.channels import META_PREFIX, ChannelPattern, is_v2_only_target
from sockudo.node.tokens import TokenSockets
from sockudo.ws.delta import ChannelDeltaState
from sockudo.ws.egress import V1, Egress, Frame
from sockudo.ws.framing import Transport, encode_frame, payload_length
from sockudo.ws.predicates import Predicate

SEND_QUEUE_FRAMES = 1024
"""Frames one socket may have waiting; a client that falls this far behind is disconnected."""
SEND_QUEUE_CHARS = 4 * 1024 * 1024
"""Characters one socket may have waiting: bounds memory when frames are large (100 KiB each)."""
_NO_FRAMES: Final[tuple[Frame, ...]] = ()
"""The queue of an outbox nothing was ever queued on: shared, so a direct-mode socket (which
writes straight to its transport) never pays for a deque of its own (~0.75 KiB each)."""
PATTERN_CACHE_CHANNELS = 4096
"""Channels per app whose matching patterns are remembered; the cache restarts when full."""

PatternSubscribers = tuple[tuple[str, dict[str, "Outbox"]], ...]
"""The patterns matching one channel: ``(pattern, socket id → outbox)`` each."""
OccupancyListener = Callable[[str, str, int, int, list["Outbox"]], None]
"""``(app_id, channel, count before, count after, meta subscribers)``: told of every change of a
channel's local subscription count while someone subscribes to its ``[meta]`` channel."""


class Outbox:
    """The bounded send queue of one socket plus a pending close request."""

    # One per connection: slots keep an idle socket's footprint down (spec target 40 KiB).
    __slots__ = (
        "_chars",
        "_frames",
        "_held",
        "_held_bytes",
        "_transport",
        "_wake",
        "app_id",
        "capacity",
        "close_cause",
        "close_request",
        "deltas",
        "echo",
        "egress",
        "max_chars",
        "on_close_request",
        "predicates",
        "socket_id",
    )

    def __init__(
        self,
        socket_id: str,
        app_id: str,
        capacity: int = SEND_QUEUE_FRAMES,
        max_chars: int = SEND_QUEUE_CHARS,
        egress: Egress = V1,
    ) -> None:
        self.socket_id = socket_id
        self.app_id = app_id
        self.egress = egress
        """Builds this socket's frames (protocol and wire format)."""
        self.echo = True
        """V2 ``echo_messages``: the socket receives its own client events."""
        self.deltas: Mapping[str, ChannelDeltaState] = {}
        """V2 JSON delta-compression state by channel (the session's own dict)."""
        self.predicates: Mapping[str, Predicate] = {}
        """V2 subscription predicates by channel (the session's own dict)."""
        self.capacity = capacity
        self.max_chars = max_chars
        # Both made on first use: most sockets never queue a frame, nor have a writer waiting.
        self._frames: deque[Frame] | tuple[Frame, ...] = _NO_FRAMES
        self._chars = 0
        self._wake: asyncio.Event | None = None
        self.close_request: tuple[int, str] | None = None
        self.close_cause = "disconnect"
        """Why the socket ended, as presence leaves record it (``terminated`` by the app)."""
        self._transport: Transport | None = None
        self._held: list[bytes] | None = None
        self._held_bytes = 0
        self.on_close_request: Callable[[], object] | None = None
        """Called once, by the first :meth:`request_close`: the edge starts its writer then."""

    def _queue(self) -> deque[Frame]:
        frames = self._frames
        if isinstance(frames, deque):
            return frames
        queue: deque[Frame] = deque()
        self._frames = queue
        return queue

    def _notify(self) -> None:
        if self._wake is not None:
            self._wake.set()

    # --- direct mode: frames written straight to the socket's transport ----------------------

    def attach(self, transport: Transport) -> None:
        """Write data frames to ``transport`` from now on instead of queueing them.

        The transport's own buffer is then the send queue: it is bounded by ``max_chars``
        bytes, and a socket past that is refused further frames (fanout closes it, 4100).
        """
        self._transport = transport

    @property
    def direct(self) -> bool:
        return self._transport is not None

    @property
    def closing(self) -> bool:
        """A close was asked for, or the connection is going (the peer left, say): frames
        are refused for that, not because the socket is slow."""
        transport = self._transport
        return self.close_request is not None or (transport is not None and transport.is_closing())

    def offer_wire(self, wire: bytes) -> bool:
        """Direct mode: write an already encoded WebSocket frame (shared between sockets).

        The caller counts the bytes in the metrics (fanout counts a message once).
        """
        transport = self._transport
        assert transport is not None
        if self.close_request is not None or transport.is_closing():
            return False
        if self._held is not None:
            if self._held and self._held_bytes + len(wire) > self.max_chars:
                return False
            self._held.append(wire)
            self._held_bytes += len(wire)
            return True
        # A socket whose peer stopped reading keeps its bytes here: past the bound it is closed.
        if transport.get_write_buffer_size() + len(wire) > self.max_chars:
            return False
        transport.write(wire)
        return True

    def write_last(self, frame: Frame) -> bool:
        """Direct mode: write the frame that goes before the close, past the bound.

        It never waits for the client to read: a client that stopped reading (the reason for
        many a close) must not hold its own close, and with it the socket. ``False`` when
        the socket is not direct or already closing.
        """
        transport = self._transport
        if transport is None or transport.is_closing():
            return False
        transport.write(encode_frame(frame))
        return True

    def hold(self) -> bool:
        """Direct mode: gather frames until :meth:`release` (one write per socket per batch).

        ``False`` when already holding (or queueing), so the caller releases only what it held.
        """
        if self._transport is None or self._held is not None:
            return False
        self._held = []
        self._held_bytes = 0
        return True

    def release(self) -> bool:
        """Write what :meth:`hold` gathered, in one ``write``.

        ``False`` when that would pass the bound (nothing is written): the caller closes the
        socket as slow, as for any refused frame.
        """
        held, self._held = self._held, None
        transport = self._transport
        if not held or transport is None or self.close_request is not None:
            return True
        if transport.get_write_buffer_size() + self._held_bytes > self.max_chars:
            return False
        transport.write(held[0] if len(held) == 1 else b"".join(held))
        return True

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Frames offered inside go out in one write (direct mode; synchronous code only).

        A replay is a burst of frames for one socket: one ``write`` system call instead of one
        per frame. Past the send bound the socket is closed with 4100, as for a refused frame.
        """
        held = self.hold()
        try:
            yield
        finally:
            if held and not self.release():
                self.request_close(4100, "Over capacity")

    def offer(self, frame: Frame) -> bool:
        """Enqueue ``frame``; ``False`` when full or closing (the frame is dropped)."""
        if self._transport is not None:
            wire = encode_frame(frame)
            if not self.offer_wire(wire):
                return False
            metrics.ws_sent(self.app_id, payload_length(wire))
            return True
        if self.close_request is not None or len(self._frames) >= self.capacity:
            return False
        # An empty queue always takes one frame, so a single large frame is never refused.
        if self._frames and self._chars + len(frame) > self.max_chars:
            return False
        self._queue().append(frame)
        self._chars += len(frame)
        self._notify()
        return True

    def request_close(self, code: int, reason: str, farewell: Frame | None = None) -> None:
        """Ask the writer to close; the first request wins, pending frames are dropped.

        ``farewell``: one last frame the writer sends before the close (a revoked token's
        ``token_expired``), in direct mode too.
        """
        if self.close_request is None:
            self.close_request = (code, reason)
            if self._frames:
                self._queue().clear()
            self._chars = 0
            self._held = None
            if farewell is not None:
                self._queue().append(farewell)
            self._notify()
            if self.on_close_request is not None:
                self.on_close_request()

    def __len__(self) -> int:
        return len(self._frames)

    def take(self) -> list[Frame]:
        """Everything queued now, oldest first."""
        frames = list(self._frames)
        if frames:
            self._queue().clear()
        self._chars = 0
        return frames

    async def wait(self) -> None:
        """Until there is a frame or a close request."""
        while not self._frames and self.close_request is None:
            if self._wake is None:
                self._wake = asyncio.Event()
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
        # User identity (spec 01 §3.10): signed-in id, else the first presence user id.
        self._user_of: dict[str, str] = {}
        self._users: dict[tuple[str, str], dict[str, Outbox]] = {}
        # (socket id, presence channel) → the user id the socket joined it as.
        self._members: dict[tuple[str, str], str] = {}
        # Wildcard patterns: app id → pattern → (parsed pattern, socket id → outbox), and the
        # patterns matching each channel seen since the app's pattern set last changed.
        self._patterns: dict[str, dict[str, tuple[ChannelPattern, dict[str, Outbox]]]] = {}
        self._pattern_hits: dict[str, dict[str, PatternSubscribers]] = {}
        # `[meta]<channel>` subscribers: (app id, channel) → socket id → outbox.
        self._meta: dict[tuple[str, str], dict[str, Outbox]] = {}
        self.occupancy_listener: OccupancyListener | None = None
        """Set by fanout: sends the ``[meta]`` frames of a subscription count change."""
        self.tokens = TokenSockets()
        """Sockets authenticated by a capability token (spec 02 §11)."""
        self._emptied: asyncio.Event | None = None

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
        # Patterns and meta subscriptions first: the leaving socket is then told nothing
        # about its own channels' counts on the way out.
        for channel in sorted(channels, key=lambda c: not is_v2_only_target(c)):
            self._leave(outbox.app_id, channel, socket_id)
            self._members.pop((socket_id, channel), None)
        self._drop_user(outbox, socket_id)
        self.tokens.discard(socket_id)
        left = self._per_app[outbox.app_id] - 1
        if left:
            self._per_app[outbox.app_id] = left
        else:
            del self._per_app[outbox.app_id]
        if not self._sockets and self._emptied is not None:
            self._emptied.set()
        return channels

    async def wait_empty(self) -> None:
        """Until the last socket has left (shutdown waits for its closes to go out)."""
        if not self._sockets:
            return
        if self._emptied is None or self._emptied.is_set():
            self._emptied = asyncio.Event()
        await self._emptied.wait()

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

    def subscribe(self, socket_id: str, channel: str, member: str | None = None) -> bool:
        """Join ``channel`` (``member``: user id of a presence join); ``False`` if already in.

        ``channel`` may also be a validated wildcard pattern or ``[meta]`` channel (V2).
        """
        outbox = self._sockets[socket_id]
        if is_v2_only_target(channel):
            return self._subscribe_target(outbox, channel)
        subscribers = self._channels.setdefault((outbox.app_id, channel), {})
        if socket_id in subscribers:
            return False
        subscribers[socket_id] = outbox
        self._subscriptions[socket_id].add(channel)
        kind = metrics.channel_type(channel)
        metrics.subscribed(outbox.app_id, kind)
        count = len(subscribers)
        if count == 1:
            metrics.channel_active(outbox.app_id, kind, 1)
        if self._meta:
            self._occupancy(outbox.app_id, channel, count - 1, count)
        if member is not None:
            self._members[(socket_id, channel)] = member
            if socket_id not in self._user_of:
                self.set_user(socket_id, member)
        return True

    def unsubscribe(self, socket_id: str, channel: str) -> bool:
        """Leave ``channel``; ``False`` (a no-op) when the socket was not subscribed."""
        outbox = self._sockets.get(socket_id)
        if outbox is None or channel not in self._subscriptions[socket_id]:
            return False
        self._subscriptions[socket_id].discard(channel)
        self._leave(outbox.app_id, channel, socket_id)
        self._members.pop((socket_id, channel), None)
        return True

    def _leave(self, app_id: str, channel: str, socket_id: str) -> None:
        if is_v2_only_target(channel):
            self._leave_target(app_id, channel, socket_id)
            return
        subscribers = self._channels.get((app_id, channel))
        if subscribers is None:
            return
        # Counted here so a disconnect ends its subscriptions in the metrics too.
        if subscribers.pop(socket_id, None) is None:
            return
        metrics.unsubscribed(app_id, metrics.channel_type(channel))
        count = len(subscribers)
        if not count:
            del self._channels[(app_id, channel)]
            metrics.channel_active(app_id, metrics.channel_type(channel), -1)
        if self._meta:
            self._occupancy(app_id, channel, count + 1, count)

    def channels_of(self, socket_id: str) -> frozenset[str]:
        return frozenset(self._subscriptions.get(socket_id, ()))

    def subscribers(self, app_id: str, channel: str) -> list[Outbox]:
        """A snapshot, so a close triggered while iterating cannot disturb the caller."""
        return list(self._channels.get((app_id, channel), {}).values())

    def subscription_count(self, app_id: str, channel: str) -> int:
        return len(self._channels.get((app_id, channel), ()))

    # --- wildcard patterns and meta channels (V2, spec 02 §5.8) --------------------------------

    def _subscribe_target(self, outbox: Outbox, name: str) -> bool:
        socket_id, app_id = outbox.socket_id, outbox.app_id
        if name.startswith(META_PREFIX):
            subscribers = self._meta.setdefault((app_id, name[len(META_PREFIX) :]), {})
        else:
            patterns = self._patterns.setdefault(app_id, {})
            entry = patterns.get(name)
            if entry is None:
                entry = patterns[name] = (ChannelPattern.parse(name), {})
                self._pattern_hits.pop(app_id, None)  # the app's pattern set changed
            subscribers = entry[1]
        if socket_id in subscribers:
            return False
        subscribers[socket_id] = outbox
        self._subscriptions[socket_id].add(name)
        return True

    def _leave_target(self, app_id: str, name: str, socket_id: str) -> None:
        if name.startswith(META_PREFIX):
            key = (app_id, name[len(META_PREFIX) :])
            subscribers = self._meta.get(key)
            if subscribers is not None:
                subscribers.pop(socket_id, None)
                if not subscribers:
                    del self._meta[key]
            return
        patterns = self._patterns.get(app_id)
        entry = patterns.get(name) if patterns is not None else None
        if patterns is None or entry is None:
            return
        entry[1].pop(socket_id, None)
        if not entry[1]:
            del patterns[name]
            self._pattern_hits.pop(app_id, None)
            if not patterns:
                del self._patterns[app_id]

    def pattern_subscribers(self, app_id: str, channel: str) -> PatternSubscribers:
        """The wildcard patterns of ``app_id`` that match ``channel``, with their subscribers.

        ``()`` at the cost of one dict probe while the app has no pattern subscriptions.
        The subscriber dicts are live: snapshot them before offering frames.
        """
        patterns = self._patterns.get(app_id)
        if not patterns:
            return ()
        hits = self._pattern_hits.setdefault(app_id, {})
        found = hits.get(channel)
        if found is None:
            if len(hits) >= PATTERN_CACHE_CHANNELS:
                hits.clear()
            found = hits[channel] = tuple(
                (name, subscribers)
                for name, (pattern, subscribers) in patterns.items()
                if pattern.matches(channel)
            )
        return found

    def meta_subscribers(self, app_id: str, channel: str) -> list[Outbox]:
        """Sockets subscribed to ``[meta]<channel>`` (a snapshot); ``[]`` cheaply when none."""
        if not self._meta:
            return []
        subscribers = self._meta.get((app_id, channel))
        return list(subscribers.values()) if subscribers else []

    def _occupancy(self, app_id: str, channel: str, before: int, after: int) -> None:
        listener = self.occupancy_listener
        if listener is None:
            return
        subscribers = self._meta.get((app_id, channel))
        if subscribers:
            listener(app_id, channel, before, after, list(subscribers.values()))

    def member_of(self, socket_id: str, channel: str) -> str | None:
        """The user id ``socket_id`` joined presence ``channel`` as, if it did."""
        return self._members.get((socket_id, channel))

    def channels(self, app_id: str) -> dict[str, int]:
        """Occupied channels of ``app_id`` on this node and their subscriber counts."""
        return {ch: len(subs) for (app, ch), subs in self._channels.items() if app == app_id}

    # --- user identity ----------------------------------------------------------------------

    def set_user(self, socket_id: str, user_id: str) -> None:
        """Give the socket a user identity (signin replaces an earlier one)."""
        outbox = self._sockets[socket_id]
        self._drop_user(outbox, socket_id)
        self._user_of[socket_id] = user_id
        self._users.setdefault((outbox.app_id, user_id), {})[socket_id] = outbox

    def user_of(self, socket_id: str) -> str | None:
        return self._user_of.get(socket_id)

    def sockets_of_user(self, app_id: str, user_id: str) -> list[Outbox]:
        return list(self._users.get((app_id, user_id), {}).values())

    def users(self, app_id: str) -> set[str]:
        """User ids with at least one socket of ``app_id`` on this node."""
        return {user for (app, user) in self._users if app == app_id}

    def authenticated_count(self, app_id: str) -> int:
        """Sockets of ``app_id`` that have a user identity."""
        return sum(len(s) for (app, _u), s in self._users.items() if app == app_id)

    def _drop_user(self, outbox: Outbox, socket_id: str) -> None:
        user = self._user_of.pop(socket_id, None)
        if user is None:
            return
        sockets = self._users.get((outbox.app_id, user))
        if sockets is not None:
            sockets.pop(socket_id, None)
            if not sockets:
                del self._users[(outbox.app_id, user)]
