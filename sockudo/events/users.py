"""Connection control of the ``channel-events`` topic: closing a user's sockets on every node.

``terminate_connections`` and ``force_reconnect`` (spec 01 §5.4) must reach the user's sockets
wherever they are connected, so the HTTP handler appends this event instead of touching local
sockets; every node folds it and closes its own sockets of that user. It is keyed like the
user's ``#server-to-user-<id>`` channel, so it is ordered with that channel's messages.

Revoking capability tokens (spec 02 §11) works the same way: ``POST /apps/{id}/revocations``
appends :class:`CapabilityRevoked`; every node folds it into the revocation projection (later
connects and refreshes with the token are refused) and closes its own sockets using it. All
revocations of an app share one partition (keyed like :data:`REVOCATIONS_CHANNEL`), so the
projection of an app's revocations is folded in one order everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from sockudo.events.channel import Origin


@dataclass(frozen=True, slots=True)
class UserConnectionsTerminated:
    """Every socket of ``user_id`` in ``app_id`` must close (4009, or 4200 when ``reconnect``)."""

    TYPE: ClassVar[str] = "user.terminate"

    event_id: str
    app_id: str
    user_id: str
    origin: Origin
    reconnect: bool = False
    """``force_reconnect``: close 4200 so clients reconnect at once, instead of 4009."""

    @property
    def channel(self) -> str:
        """The user channel whose partition carries the event."""
        return user_channel(self.user_id)


USER_CHANNEL_PREFIX = "#server-to-user-"


def user_channel(user_id: str) -> str:
    return USER_CHANNEL_PREFIX + user_id


REVOCATIONS_CHANNEL = "#capability-revocations"
"""The pseudo-channel keying an app's revocations (``#`` names are never client channels)."""


@dataclass(frozen=True, slots=True)
class CapabilityRevoked:
    """Capability tokens with ``jti``, or of ``client_id``, are revoked for ``ttl_ms``.

    At least one of ``jti`` and ``client_id`` is set. The revocation holds until the record's
    log-append time plus ``ttl_ms`` (the fold's clock is the record time).
    """

    TYPE: ClassVar[str] = "capability.revoke"

    event_id: str
    app_id: str
    origin: Origin
    ttl_ms: int
    """How long the revocation holds, from the record's log-append time."""
    jti: str | None = None
    client_id: str | None = None
    reason: str = "revoked"

    @property
    def channel(self) -> str:
        """The pseudo-channel whose partition carries every revocation of the app."""
        return REVOCATIONS_CHANNEL


UserEvent = UserConnectionsTerminated | CapabilityRevoked
