"""Connection control of the ``channel-events`` topic: closing a user's sockets on every node.

``terminate_connections`` and ``force_reconnect`` (spec 01 §5.4) must reach the user's sockets
wherever they are connected, so the HTTP handler appends this event instead of touching local
sockets; every node folds it and closes its own sockets of that user. It is keyed like the
user's ``#server-to-user-<id>`` channel, so it is ordered with that channel's messages.
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


UserEvent = UserConnectionsTerminated
