"""Live fanout: committed deliveries → frames in the send queues of this node's sockets.

Called synchronously by the fold loop after each committed batch (consumer.py), so it must not
await. Each message is serialised once and the same ``str`` is enqueued for every subscriber.
A subscriber whose bounded queue is full is closed with 4100 ``Over capacity`` (spec 01 §2.4:
the client reconnects with backoff) rather than letting a slow reader grow the node's memory.
"""

from __future__ import annotations

import logging

from projections.folds.state import Delivery
from sockudo.node.hub import Hub
from sockudo.ws import v1

log = logging.getLogger(__name__)

SLOW_CONSUMER_CODE = 4100
SLOW_CONSUMER_REASON = "Over capacity"


class Fanout:
    """Hands each delivery to the local subscribers of its channel."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.frames_sent = 0
        self.slow_closed = 0

    def deliver(self, deliveries: list[Delivery]) -> None:
        for d in deliveries:
            subscribers = self.hub.subscribers(d.app_id, d.channel)
            if not subscribers:
                continue
            # V1 carries exactly the Pusher fields; `data` is already the delivered string
            # (non-string JSON was made compact text at publish time).
            frame = v1.message(d.event, d.channel, d.data, d.user_id)
            for outbox in subscribers:
                if outbox.socket_id == d.exclude_socket_id:
                    continue
                if outbox.offer(frame):
                    self.frames_sent += 1
                elif outbox.close_request is None:
                    self.slow_closed += 1
                    log.info("closing slow socket %s: send queue full", outbox.socket_id)
                    outbox.request_close(SLOW_CONSUMER_CODE, SLOW_CONSUMER_REASON)
