"""Live fanout: committed deliveries → frames in the send queues of this node's sockets.

Called synchronously by the fold loop after each committed batch (consumer.py), so it must not
await. Each message is serialised once and the same ``str`` is enqueued for every subscriber.
A subscriber whose bounded queue is full is closed with 4100 ``Over capacity`` (spec 01 §2.4:
the client reconnects with backoff) rather than letting a slow reader grow the node's memory.
"""

from __future__ import annotations

import logging
import time

from projections.folds.state import CLOSE_USER, MEMBER_ADDED, MEMBER_REMOVED, MESSAGE, Delivery
from sockudo import metrics
from sockudo.events.users import USER_CHANNEL_PREFIX
from sockudo.node.hub import Hub, Outbox
from sockudo.ws import v1

log = logging.getLogger(__name__)

SLOW_CONSUMER_CODE = 4100
SLOW_CONSUMER_REASON = "Over capacity"


TERMINATE = (4009, "You got disconnected by the app.")
RECONNECT = (4200, "Force reconnect requested by the app.")


class Fanout:
    """Hands each delivery to the local sockets it is for."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.frames_sent = 0
        self.slow_closed = 0

    def deliver(self, deliveries: list[Delivery]) -> None:
        for d in deliveries:
            if d.kind == MESSAGE:
                self._message(d)
            elif d.kind in (MEMBER_ADDED, MEMBER_REMOVED):
                # Presence edges carry no user_id field on the wire; the joining socket is not
                # in the hub yet, so it never sees its own member_added.
                self._send(
                    self.hub.subscribers(d.app_id, d.channel),
                    v1.message(d.event, d.channel, d.data),
                    None,
                )
            elif d.kind == CLOSE_USER:
                code, reason = RECONNECT if d.data == "reconnect" else TERMINATE
                for outbox in self.hub.sockets_of_user(d.app_id, d.user_id or ""):
                    outbox.close_cause = "terminated"
                    outbox.request_close(code, reason)
            # MEMBER_UPDATED is a V2 frame; V1 sockets never see it.

    def _message(self, d: Delivery) -> None:
        if d.channel.startswith(USER_CHANNEL_PREFIX):
            # User channels reach every socket of the user, subscribed or not (spec 01 §3.10).
            targets = self.hub.sockets_of_user(d.app_id, d.channel[len(USER_CHANNEL_PREFIX) :])
        else:
            targets = self.hub.subscribers(d.app_id, d.channel)
        if not targets:
            return
        # V1 carries exactly the Pusher fields. `data` is the delivered string; a client
        # event's JSON value is forwarded as JSON, with the sender's presence user id.
        if d.client_event and d.data_is_json:
            frame = v1.raw_data_message(d.event, d.channel, d.data, d.user_id)
        else:
            frame = v1.message(d.event, d.channel, d.data, d.user_id if d.client_event else None)
        sent = self._send(targets, frame, d.exclude_socket_id)
        metrics.broadcast_latency(
            d.app_id, metrics.channel_type(d.channel), sent, time.time() * 1000 - d.published_at_ms
        )

    def _send(self, targets: list[Outbox], frame: str, exclude: str | None) -> int:
        """Enqueue ``frame`` for every target but ``exclude``; how many took it."""
        sent = 0
        for outbox in targets:
            if outbox.socket_id == exclude:
                continue
            if outbox.offer(frame):
                sent += 1
            elif outbox.close_request is None:
                self.slow_closed += 1
                log.info("closing slow socket %s: send queue full", outbox.socket_id)
                outbox.request_close(SLOW_CONSUMER_CODE, SLOW_CONSUMER_REASON)
        self.frames_sent += sent
        return sent
