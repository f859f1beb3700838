"""Live fanout: committed deliveries → frames in the send queues of this node's sockets.

Called synchronously by the fold loop after each committed batch (consumer.py), so it must not
await. Each message is serialised once and the same ``str`` is enqueued for every subscriber.
A subscriber whose bounded queue is full is closed with 4100 ``Over capacity`` (spec 01 §2.4:
the client reconnects with backoff) rather than letting a slow reader grow the node's memory.

V2 sockets may also receive a channel's messages through wildcard patterns, and its occupancy
and presence changes through ``[meta]<channel>`` (spec 02 §5.8). A socket whose subscriptions
cover a message several times (the channel and a pattern, or two patterns) receives it once:
when at least one of those subscriptions' predicates accepts it.
"""

from __future__ import annotations

import json
import logging
import time

from projections.folds.revocations import CLOSE_REVOKED
from projections.folds.state import (
    CLOSE_USER,
    MEMBER_ADDED,
    MEMBER_REMOVED,
    MEMBER_UPDATED,
    MESSAGE,
    Delivery,
)
from sockudo import metrics
from sockudo.channels import META_PREFIX
from sockudo.events.users import USER_CHANNEL_PREFIX
from sockudo.node.hub import Hub, Outbox, PatternSubscribers
from sockudo.node.replay import HotReplay
from sockudo.node.tokens import close_revoked
from sockudo.ws.egress import Frame
from sockudo.ws.framing import encode_frame, payload_length
from sockudo.ws.predicates import MessageView

log = logging.getLogger(__name__)

SLOW_CONSUMER_CODE = 4100
SLOW_CONSUMER_REASON = "Over capacity"


TERMINATE = (4009, "You got disconnected by the app.")
RECONNECT = (4200, "Force reconnect requested by the app.")


class Fanout:
    """Hands each delivery to the local sockets it is for."""

    def __init__(self, hub: Hub, hot: HotReplay | None = None) -> None:
        self.hub = hub
        self.hot = hot if hot is not None else HotReplay()
        self.frames_sent = 0
        self.slow_closed = 0
        self._held: list[Outbox] | None = None
        hub.occupancy_listener = self.occupancy

    def deliver(self, deliveries: list[Delivery]) -> None:
        if len(deliveries) > 1:
            # A batch of several messages leaves as one write per socket, not one per frame.
            self._held = []
            try:
                self._deliver(deliveries)
            finally:
                held, self._held = self._held, None
                for outbox in held:
                    if not outbox.release():
                        self._close_slow(outbox)
        else:
            self._deliver(deliveries)

    def _deliver(self, deliveries: list[Delivery]) -> None:
        for d in deliveries:
            if d.kind == MESSAGE:
                self._message(d)
            elif d.kind in (MEMBER_ADDED, MEMBER_REMOVED):
                # The joining socket is not in the hub yet, so it never sees its own edge.
                self._presence(d, d.kind, v2_only=False)
                self._meta_presence(d)
            elif d.kind == MEMBER_UPDATED:
                # V2 only, the sender included (spec 02 §12); V1 members get nothing.
                self._presence(d, "presence_update", v2_only=True)
                self._meta_presence(d)
            elif d.kind == CLOSE_USER:
                code, reason = RECONNECT if d.data == "reconnect" else TERMINATE
                for outbox in self.hub.sockets_of_user(d.app_id, d.user_id or ""):
                    outbox.close_cause = "terminated"
                    outbox.request_close(code, reason)
            elif d.kind == CLOSE_REVOKED:
                close_revoked(self.hub, d)

    def _presence(self, d: Delivery, name: str, *, v2_only: bool) -> None:
        """A presence frame to the channel's subscribers, built once per (protocol, format)."""
        frames = _Frames()
        for outbox in self.hub.subscribers(d.app_id, d.channel):
            if v2_only and outbox.egress.protocol != 2:
                continue
            frame = frames.get(outbox.egress.key)
            if frame is None:
                frame = frames.put(
                    outbox.egress.key, outbox.egress.presence_edge(name, d.channel, d.data)
                )
            self._offer(outbox, frame, frames)
        frames.count(d.app_id)

    def _message(self, d: Delivery) -> None:
        self.hot.add(d)
        patterns: PatternSubscribers = ()
        if d.channel.startswith(USER_CHANNEL_PREFIX):
            # User channels reach every socket of the user, subscribed or not (spec 01 §3.10).
            targets = self.hub.sockets_of_user(d.app_id, d.channel[len(USER_CHANNEL_PREFIX) :])
        else:
            targets = self.hub.subscribers(d.app_id, d.channel)
            patterns = self.hub.pattern_subscribers(d.app_id, d.channel)
        if not targets and not patterns:
            return
        # Serialise once per (protocol, format) and share the frame between sockets.
        frames = _Frames()
        sent = 0
        view: MessageView | None = None
        # With patterns in play: the sockets this message is settled for (sent, or excluded).
        reached: set[str] | None = set() if patterns else None
        for outbox in targets:
            predicate = outbox.predicates.get(d.channel) if outbox.predicates else None
            if predicate is not None:
                if view is None:
                    view = MessageView.of_delivery(d)  # once per message, shared
                if not predicate.matches(view):
                    continue
            if reached is not None:
                reached.add(outbox.socket_id)
            sent += self._send(d, outbox, frames)
        if reached is not None:
            sent += self._pattern_message(d, patterns, reached, frames, view)
        frames.count(d.app_id)
        self.frames_sent += sent
        metrics.broadcast_latency(
            d.app_id, metrics.channel_type(d.channel), sent, time.time() * 1000 - d.published_at_ms
        )

    def _pattern_message(
        self,
        d: Delivery,
        patterns: PatternSubscribers,
        reached: set[str],
        frames: _Frames,
        view: MessageView | None,
    ) -> int:
        """Deliver ``d`` to the sockets of the matching wildcard patterns not yet reached.

        The frame is the concrete channel's own message (its name in ``channel``, its
        ``message_id``, ``stream_id`` and ``serial``), shared with the channel's subscribers.
        """
        sent = 0
        for pattern, subscribers in patterns:
            for outbox in list(subscribers.values()):
                if outbox.socket_id in reached:
                    continue
                predicate = outbox.predicates.get(pattern) if outbox.predicates else None
                if predicate is not None:
                    if view is None:
                        view = MessageView.of_delivery(d)
                    if not predicate.matches(view):
                        continue  # another pattern of this socket may still accept it
                reached.add(outbox.socket_id)
                sent += self._send(d, outbox, frames)
        return sent

    def _send(self, d: Delivery, outbox: Outbox, frames: _Frames) -> int:
        """``d`` to one socket that accepts it: the shared frame, or the socket's delta."""
        if outbox.socket_id == d.exclude_socket_id and not (
            # A V2 sender of a client event receives it back unless echo is off (02 §10.3).
            d.client_event and outbox.egress.protocol == 2 and _echo(d, outbox)
        ):
            return 0
        frame = frames.get(outbox.egress.key)
        if frame is None:
            frame = frames.put(outbox.egress.key, outbox.egress.message(d))
        # A socket with delta on for the channel (also when a pattern reached it because the
        # channel's predicate refused the message) keeps that channel's delta sequence whole.
        delta = outbox.deltas.get(d.channel) if outbox.deltas else None
        if delta is not None and isinstance(frame, str):
            # Per-socket: the shared frame is the input, the base is this socket's own.
            own = delta.next_frame(
                frame, d.event, message_id=d.message_id, stream_id=d.stream_id, serial=d.serial
            )
            return self._offer(outbox, own, None)
        return self._offer(outbox, frame, frames)

    # --- meta channels (spec 02 §5.8) -----------------------------------------------------------

    def occupancy(
        self, app_id: str, channel: str, before: int, after: int, subscribers: list[Outbox]
    ) -> None:
        """The hub's listener: ``[meta]<channel>`` frames for a local subscription count change.

        ``channel_occupied`` when the channel gains its first local subscriber, then the new
        ``subscription_count``, then ``channel_vacated`` when the last one left.
        """
        meta = META_PREFIX + channel
        events: list[tuple[str, dict[str, object]]] = []
        if before == 0 and after > 0:
            events.append(("channel_occupied", {"channel": channel}))
        events.append(("subscription_count", {"channel": channel, "subscription_count": after}))
        if after == 0 and before > 0:
            events.append(("channel_vacated", {"channel": channel}))
        for event, data in events:
            self._meta_frame(app_id, meta, event, data, subscribers)

    def _meta_presence(self, d: Delivery) -> None:
        """``presence_update`` on ``[meta]<channel>`` for a presence change of ``channel``."""
        subscribers = self.hub.meta_subscribers(d.app_id, d.channel)
        if not subscribers:
            return
        data = {"channel": d.channel, "user_id": d.user_id, "action": d.kind}
        self._meta_frame(d.app_id, META_PREFIX + d.channel, "presence_update", data, subscribers)

    def _meta_frame(
        self, app_id: str, meta: str, event: str, data: object, subscribers: list[Outbox]
    ) -> None:
        frames = _Frames()
        for outbox in subscribers:
            frame = frames.get(outbox.egress.key)
            if frame is None:
                frame = frames.put(outbox.egress.key, outbox.egress.internal(event, meta, data))
            self.frames_sent += self._offer(outbox, frame, frames)
        frames.count(app_id)

    def _offer(self, outbox: Outbox, frame: Frame, shared: _Frames | None) -> int:
        """1 when sent or queued; a socket that cannot keep up is closed instead (4100).

        ``shared``: the frame is one of these, encoded once for every direct socket.
        """
        if outbox.direct and self._held is not None and outbox.hold():
            self._held.append(outbox)
        if shared is not None and outbox.direct:
            accepted = shared.write(outbox, frame)
        else:
            accepted = outbox.offer(frame)
        if accepted:
            return 1
        self._close_slow(outbox)
        return 0

    def _close_slow(self, outbox: Outbox) -> None:
        if not outbox.closing:
            self.slow_closed += 1
            log.info("closing slow socket %s: send queue full", outbox.socket_id)
            outbox.request_close(SLOW_CONSUMER_CODE, SLOW_CONSUMER_REASON)


class _Frames:
    """One message's frames by egress key, each WebSocket-encoded at most once."""

    __slots__ = ("_frames", "_wires", "frames", "payload_bytes")

    def __init__(self) -> None:
        self._frames: dict[str, Frame] = {}
        self._wires: dict[int, tuple[bytes, int]] = {}
        self.frames = 0
        self.payload_bytes = 0

    def get(self, key: str) -> Frame | None:
        return self._frames.get(key)

    def put(self, key: str, frame: Frame) -> Frame:
        self._frames[key] = frame
        return frame

    def write(self, outbox: Outbox, frame: Frame) -> bool:
        """Write ``frame``'s shared encoding to a direct socket; counts it when written."""
        # Keyed by identity: every frame here is held by _frames, so ids cannot be reused.
        entry = self._wires.get(id(frame))
        if entry is None:
            wire = encode_frame(frame)
            entry = self._wires[id(frame)] = (wire, payload_length(wire))
        if not outbox.offer_wire(entry[0]):
            return False
        self.frames += 1
        self.payload_bytes += entry[1]
        return True

    def count(self, app_id: str) -> None:
        """The direct writes of this message, counted in the metrics once."""
        if self.frames:
            metrics.ws_sent(app_id, self.payload_bytes, self.frames)


def _echo(d: Delivery, sender: Outbox) -> bool:
    """The message's ``extras.echo`` if it has one, else the sender's ``echo_messages``."""
    if d.extras_json is not None:
        echo = json.loads(d.extras_json).get("echo")
        if isinstance(echo, bool):
            return echo
    return sender.echo
