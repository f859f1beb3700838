"""Presence events of the ``channel-events`` topic (spec 05 §9.3, spec 03 §5).

The node that owns a connection appends ``presence.join`` / ``presence.leave`` /
``presence.update`` for it. The fold keeps connection-level membership and derives the user-level
``member_added`` / ``member_removed`` / ``member_updated`` edges and, when the record's
``flags.presence_history`` is set, the presence-history serial P. ``node.dead`` is a partition
marker appended by the cluster's cleaner to every partition (and, as a summary, to ``nodes``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from sockudo.events.channel import Flags, Origin, Retention

LEAVE_CAUSES = frozenset({"unsubscribe", "disconnect", "terminated", "timeout", "orphan_cleanup"})
"""Values of ``PresenceMemberLeft.cause``.

Presence history (spec 03 §5.1) records them as: ``unsubscribe`` and ``disconnect`` →
``disconnect``; ``terminated`` (``terminate_connections``, ``force_reconnect``) →
``forced_disconnect``; ``timeout`` → ``timeout``; ``orphan_cleanup`` → ``orphan_cleanup``.
"""


@dataclass(frozen=True, slots=True)
class PresenceMemberJoined:
    """A connection joined a presence channel (the user may already be a member elsewhere)."""

    TYPE: ClassVar[str] = "presence.join"

    event_id: str
    app_id: str
    channel: str
    origin: Origin
    user_id: str
    """The member's ``user_id`` from the channel auth's ``channel_data``."""
    socket_id: str
    """The joining connection."""
    incarnation: str
    """Incarnation of the node holding the connection (``origin.node`` unless a cleaner appends)."""
    user_info_json: str | None = None
    """The member's ``user_info`` as JSON text, ``None`` when absent."""
    flags: Flags = field(default_factory=Flags)
    """``presence_history`` decides whether the fold records the transition (allocates P)."""
    retention: Retention = field(default_factory=Retention)
    """Presence-history retention in force at append time (``presence_history.*``)."""


@dataclass(frozen=True, slots=True)
class PresenceMemberLeft:
    """A connection left a presence channel; ``cause`` says why (see ``LEAVE_CAUSES``)."""

    TYPE: ClassVar[str] = "presence.leave"

    event_id: str
    app_id: str
    channel: str
    origin: Origin
    user_id: str
    socket_id: str
    incarnation: str
    """Incarnation of the node that held the connection."""
    cause: str
    """``unsubscribe``, ``disconnect``, ``terminated``, ``timeout`` or ``orphan_cleanup``."""
    flags: Flags = field(default_factory=Flags)
    retention: Retention = field(default_factory=Retention)


@dataclass(frozen=True, slots=True)
class PresenceMemberUpdated:
    """A V2 ``presence_update`` changed a connection's member data (spec 03 §5.1)."""

    TYPE: ClassVar[str] = "presence.update"

    event_id: str
    app_id: str
    channel: str
    origin: Origin
    user_id: str
    socket_id: str
    incarnation: str
    user_info_json: str | None = None
    """The new ``user_info`` as JSON text."""
    flags: Flags = field(default_factory=Flags)
    retention: Retention = field(default_factory=Retention)


@dataclass(frozen=True, slots=True)
class PresenceHistoryReset:
    """An operator reset the channel's presence-history stream (spec 03 §5.3).

    Clears retained transitions and dedupe state and opens a new presence generation; live
    membership is untouched.
    """

    TYPE: ClassVar[str] = "presence.stream_reset"

    event_id: str
    app_id: str
    channel: str
    origin: Origin
    new_stream_id: str
    """UUID minted by the handler for the new presence generation."""
    reason: str
    requested_by: str | None = None


@dataclass(frozen=True, slots=True)
class NodeDeclaredDead:
    """A node incarnation stopped heartbeating and was declared dead (spec 05 §9.3).

    Appended by the cleaner to every ``channel-events`` partition (the fold removes that
    incarnation's connections, cause ``orphan_cleanup``) and as a summary to ``nodes``.
    Duplicate declarations are harmless.
    """

    TYPE: ClassVar[str] = "node.dead"

    event_id: str
    origin: Origin
    incarnation: str
    """The dead incarnation."""
    declared_by: str
    """Incarnation of the cleaner that declared it."""
    last_seen_ms: int
    """Log time of the dead incarnation's last heartbeat as seen by the cleaner."""


PresenceEvent = (
    PresenceMemberJoined
    | PresenceMemberLeft
    | PresenceMemberUpdated
    | PresenceHistoryReset
    | NodeDeclaredDead
)
