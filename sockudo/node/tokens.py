"""This node's capability-token sockets by ``jti`` and by ``client_id`` (memory only).

The hub owns one :class:`TokenSockets`; the WebSocket edge registers a socket when its token is
accepted (at connect or by a ``sockudo:auth`` refresh) and the hub forgets it with the socket.
A revocation (spec 02 §11) closes the sockets :meth:`TokenSockets.matching` names:
``sockudo:token_expired {"code": 40160, "reason": "revoked"}``, then close 4009.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from projections.folds.state import Delivery
    from sockudo.node.hub import Hub, Outbox

TOKEN_EXPIRED_CODE: Final = 40142
TOKEN_REVOKED_CODE: Final = 40160
TOKEN_CLOSE_CODE: Final = 4009
EXPIRED_CLOSE_REASON: Final = "capability token expired"
REVOKED_CLOSE_REASON: Final = "capability token revoked"


class TokenSockets:
    """Sockets authenticated by a capability token, indexed by app and ``jti`` / ``client_id``."""

    def __init__(self) -> None:
        self._of: dict[str, tuple[str, str, str]] = {}
        """socket id → (app id, jti, client id)."""
        self._by_jti: dict[tuple[str, str], dict[str, Outbox]] = {}
        self._by_client: dict[tuple[str, str], dict[str, Outbox]] = {}

    def set(self, outbox: Outbox, jti: str, client_id: str) -> None:
        """The socket now uses the token ``jti`` of ``client_id`` (replacing an earlier one)."""
        self.discard(outbox.socket_id)
        app = outbox.app_id
        self._of[outbox.socket_id] = (app, jti, client_id)
        self._by_jti.setdefault((app, jti), {})[outbox.socket_id] = outbox
        self._by_client.setdefault((app, client_id), {})[outbox.socket_id] = outbox

    def discard(self, socket_id: str) -> None:
        entry = self._of.pop(socket_id, None)
        if entry is None:
            return
        app, jti, client_id = entry
        for index, key in ((self._by_jti, (app, jti)), (self._by_client, (app, client_id))):
            sockets = index.get(key)
            if sockets is not None:
                sockets.pop(socket_id, None)
                if not sockets:
                    del index[key]

    def __len__(self) -> int:
        return len(self._of)

    def matching(self, app_id: str, jti: str | None, client_id: str | None) -> list[Outbox]:
        """Sockets of ``app_id`` whose token has ``jti`` or belongs to ``client_id``."""
        found: dict[str, Outbox] = {}
        if jti is not None:
            found.update(self._by_jti.get((app_id, jti), {}))
        if client_id is not None:
            found.update(self._by_client.get((app_id, client_id), {}))
        return list(found.values())


def close_revoked(hub: Hub, d: Delivery) -> int:
    """Fanout of a ``close_revoked`` delivery: close this node's sockets using a revoked token."""
    target = json.loads(d.data)
    closed = 0
    for outbox in hub.tokens.matching(d.app_id, target.get("jti"), target.get("client_id")):
        if outbox.close_request is not None:
            continue
        farewell = outbox.egress.system(
            "token_expired", None, {"code": TOKEN_REVOKED_CODE, "reason": "revoked"}
        )
        hub.tokens.discard(outbox.socket_id)
        outbox.request_close(TOKEN_CLOSE_CODE, REVOKED_CLOSE_REASON, farewell)
        closed += 1
    return closed
