"""Events of the ``nodes`` topic: heartbeats and graceful stops (spec 05 §9.3).

Keyed by node incarnation. Liveness is judged by the observer from record times; the ``*_ms``
fields here are informational. ``node.dead`` summaries use ``NodeDeclaredDead`` from
``sockudo.events.presence``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar


@dataclass(frozen=True, slots=True)
class NodeHeartbeat:
    """A node incarnation is alive; carries the node-local state other nodes fold."""

    TYPE: ClassVar[str] = "node.heartbeat"

    event_id: str
    incarnation: str
    """``{node_id}/{start_ms}-{4 random hex}``, new on every process start."""
    node_id: str
    started_at_ms: int
    sent_at_ms: int
    connections: int = 0
    """Open WebSocket connections on this incarnation."""
    subscriptions: dict[str, int] = field(default_factory=dict)
    """Sockets of this incarnation per occupied channel, keyed ``app_id + "\\x00" + channel``."""


@dataclass(frozen=True, slots=True)
class NodeStopping:
    """A node incarnation is shutting down gracefully (after appending its presence leaves)."""

    TYPE: ClassVar[str] = "node.stopping"

    event_id: str
    incarnation: str
    node_id: str
    stopping_at_ms: int


NodeEvent = NodeHeartbeat | NodeStopping
