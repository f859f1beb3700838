"""The capability token of one V2 connection, session side (spec 02 §11). Pure: time is passed in.

:class:`TokenState` is what a :class:`~sockudo.ws.session.Session` keeps once a token was
accepted (at connect, or by a ``sockudo:auth`` refresh): the grant, the operation checks, and
the expiry clock. Expiry follows upstream Sockudo: at ``exp`` the server sends
``sockudo:token_expired {"code": 40142, "reason": "expired"}``; without a valid refresh within
30 s more the connection is closed with 4009 "capability token expired". A refresh replaces the
state, so both deadlines restart from the new token.

Verification itself (signature, claims, revocations) is the edge's work
(``sockudo/ws/token_auth.py``); the session only sees grants that passed it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from sockudo import inbound
from sockudo.capabilities import TokenGrant
from sockudo.node.tokens import (
    EXPIRED_CLOSE_REASON,
    TOKEN_CLOSE_CODE,
    TOKEN_EXPIRED_CODE,
)
from sockudo.ws import v1

GRACE_S: Final = 30.0
"""After ``token_expired``, how long a refresh may still arrive before the close."""

AUTH_ERROR: Final = v1.UNAUTHORIZED


def denied(action: str, channel: str) -> v1.FrameError:
    """The 4009 of an operation the token does not grant (upstream's wording)."""
    return v1.FrameError(
        AUTH_ERROR,
        f"Authentication error: Connection is not allowed to {action} channel '{channel}'",
        channel,
    )


@dataclass(frozen=True, slots=True)
class RefreshToken:
    """``sockudo:auth``: verify ``token`` and, if it is good, make it the connection's token."""

    token: str


def token_of(data: Any) -> str:
    """The ``token`` of a ``sockudo:auth`` frame's data (an object, or a JSON string of one)."""
    if isinstance(data, str):
        try:
            data = inbound.loads(data)
        except (ValueError, RecursionError):
            data = None
    token = data.get("token") if isinstance(data, dict) else None
    if not isinstance(token, str):
        raise v1.FrameError(
            v1.MALFORMED, "Invalid message format: sockudo:auth requires data.token"
        )
    return token


class TokenState:
    """The accepted token of a connection and its expiry deadlines (monotonic seconds)."""

    __slots__ = ("expires_at", "grant", "notified")

    def __init__(self, grant: TokenGrant, now: float, wall_now: float) -> None:
        self.grant = grant
        self.expires_at = now + max(0.0, grant.exp - wall_now)
        """Monotonic time of ``exp``."""
        self.notified = False
        """``token_expired`` was sent; the close follows at ``expires_at + GRACE_S``."""

    @property
    def client_id(self) -> str:
        return self.grant.client_id

    # --- operation checks -------------------------------------------------------------------

    def check(self, action: str, channel: str) -> None:
        """Raise the 4009 unless the token grants ``action`` on ``channel``."""
        if not self.grant.capabilities.allows(action, channel):
            raise denied(action, channel)

    def check_subscribe(self, channel: str, options: dict[str, Any] | None) -> None:
        """Subscribe needs ``subscribe``; presence channels ``presence`` too; ``rewind`` needs
        ``history``; the ``ANNOTATION_SUBSCRIBE`` mode needs ``annotation_subscribe``."""
        self.check("subscribe", channel)
        if channel.startswith("presence-"):
            self.check("presence", channel)
        options = options or {}
        if "rewind" in options:
            self.check("history", channel)
        modes = options.get("modes")
        if isinstance(modes, list) and "ANNOTATION_SUBSCRIBE" in modes:
            self.check("annotation_subscribe", channel)

    # --- expiry -------------------------------------------------------------------------------

    def deadline(self) -> float:
        return self.expires_at + GRACE_S if self.notified else self.expires_at

    def tick(self, now: float, out: Any) -> tuple[list[Any], tuple[int, str] | None]:
        """``(frames, close)`` due at ``now``: the ``token_expired`` frame, then the close."""
        if self.notified:
            if now >= self.expires_at + GRACE_S:
                return [], (TOKEN_CLOSE_CODE, EXPIRED_CLOSE_REASON)
            return [], None
        if now >= self.expires_at:
            self.notified = True
            frame = out.system(
                "token_expired", None, {"code": TOKEN_EXPIRED_CODE, "reason": "expired"}
            )
            return [frame], None
        return [], None
