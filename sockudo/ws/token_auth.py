"""Capability tokens at the WebSocket edge (spec 02 §11): ``?token=`` at connect, ``sockudo:auth``.

A token is verified (``sockudo.capabilities``) and looked up in this node's revocation
projection. At connect a refused token gets ``sockudo:error`` 4009 "Authentication error: …" and
the close 4009, before ``connection_established``; a refused refresh gets the same error and the
connection stays open with its previous token (whose expiry keeps running). An accepted token
sets the socket's identity to its ``client_id`` (the hub's user index, so user channels and
``terminate_connections`` reach it), registers the socket for revocations, and on refresh is
answered with ``sockudo:auth_success {"client_id", "jti", "exp"}``.
"""

from __future__ import annotations

import logging
import time

from starlette.websockets import WebSocket

from sockudo.capabilities import InvalidToken, TokenGrant, verify_token
from sockudo.config import AppConfig
from sockudo.node import revocations
from sockudo.node.hub import Hub, Outbox
from sockudo.node.services import ChannelService
from sockudo.node.tokens import TOKEN_CLOSE_CODE
from sockudo.ws import v1
from sockudo.ws.egress import Egress
from sockudo.ws.session import Session
from sockudo.ws.tokens import RefreshToken

log = logging.getLogger(__name__)

_MAX_CLOSE_REASON_BYTES = 123
"""RFC 6455: a close frame's reason fits in 123 bytes."""


def authenticate(
    token: str, app: AppConfig, channels: ChannelService, wall_now: float
) -> TokenGrant:
    """Verify ``token`` for ``app`` and check it is not revoked; raise :class:`InvalidToken`."""
    grant = verify_token(token, app.key, app.secret, int(wall_now))
    if revocations.revoked(channels, app.id, grant.jti, grant.client_id) is not None:
        raise InvalidToken("capability token has been revoked")
    return grant


def attach(session: Session, outbox: Outbox, hub: Hub, grant: TokenGrant) -> None:
    """Make ``grant`` the connection's token: session state, identity, revocation index."""
    session.accept_token(grant, time.monotonic(), time.time())
    hub.set_user(session.socket_id, grant.client_id)
    hub.tokens.set(outbox, grant.jti, grant.client_id)


def error_message(exc: InvalidToken) -> str:
    return f"Authentication error: {exc}"


def close_reason(message: str) -> str:
    """``message`` cut to what a close frame can carry (whole UTF-8 characters)."""
    return message.encode()[:_MAX_CLOSE_REASON_BYTES].decode(errors="ignore")


async def reject(websocket: WebSocket, egress: Egress, exc: InvalidToken) -> None:
    """Connect with a refused token: the 4009 error, then the close 4009."""
    message = error_message(exc)
    frame = egress.error(TOKEN_CLOSE_CODE, message)
    try:
        if isinstance(frame, str):
            await websocket.send_text(frame)
        else:
            await websocket.send_bytes(frame)
        await websocket.close(TOKEN_CLOSE_CODE, close_reason(message))
    except Exception as exc_send:  # the client already left; nothing to tell it
        log.debug("rejecting a token connection failed: %s", exc_send)


def refresh(
    effect: RefreshToken,
    session: Session,
    outbox: Outbox,
    hub: Hub,
    app: AppConfig,
    channels: ChannelService,
) -> None:
    """``sockudo:auth``: accept the new token and answer ``auth_success``, or a 4009 error."""
    try:
        grant = authenticate(effect.token, app, channels, time.time())
        if session.token is not None:
            if session.token.client_id != grant.client_id:
                raise InvalidToken("capability token refresh cannot change client_id")
        elif session.user_id is not None and session.user_id != grant.client_id:
            raise InvalidToken("capability token refresh cannot change authenticated identity")
    except InvalidToken as exc:
        outbox.offer(outbox.egress.error(v1.UNAUTHORIZED, error_message(exc)))
        return
    attach(session, outbox, hub, grant)
    outbox.offer(
        outbox.egress.system(
            "auth_success", None, {"client_id": grant.client_id, "jti": grant.jti, "exp": grant.exp}
        )
    )
