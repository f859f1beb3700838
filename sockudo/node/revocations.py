"""Capability-token revocation (spec 02 §11): append ``capability.revoke``, read the projection.

A revocation is one :class:`~sockudo.events.users.CapabilityRevoked` record. Every node folds it
into its ``revocations`` projection (connects and ``sockudo:auth`` refreshes with a revoked
``jti`` or ``client_id`` are refused from then on) and closes its own sockets using such a token
(fanout, ``close_revoked``). :func:`revoke` returns once this node has folded the record.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from projections.reads import revocations as revocation_reads
from sockudo.config import AppConfig
from sockudo.events.channel import Origin
from sockudo.events.users import CapabilityRevoked
from sockudo.ids import random_uuid
from sockudo.node.hub import Hub
from sockudo.node.services import ChannelService


@dataclass(frozen=True, slots=True)
class RevocationRequest:
    """A validated revocation: at least one of ``jti`` and ``client_id``."""

    jti: str | None
    client_id: str | None
    ttl_s: int
    reason: str = "revoked"


@dataclass(frozen=True, slots=True)
class RevocationResult:
    revoked_jti: bool
    revoked_client_id: bool
    closed_connections: int
    """Sockets of *this node* the revocation closes (other nodes close theirs unreported)."""


async def revoke(
    channels: ChannelService, hub: Hub, app: AppConfig, req: RevocationRequest
) -> RevocationResult:
    """Append the revocation and wait for this node's fold (which closes the local sockets)."""
    # Counted before the append: the fold closes them, and closed sockets leave the hub.
    closing = [
        o for o in hub.tokens.matching(app.id, req.jti, req.client_id) if o.close_request is None
    ]
    await channels.append_and_wait(
        CapabilityRevoked(
            event_id=random_uuid(),
            app_id=app.id,
            origin=Origin(node=channels.runtime.incarnation, request_id=random_uuid()),
            ttl_ms=req.ttl_s * 1000,
            jti=req.jti,
            client_id=req.client_id,
            reason=req.reason,
        )
    )
    return RevocationResult(req.jti is not None, req.client_id is not None, len(closing))


def revoked(channels: ChannelService, app_id: str, jti: str, client_id: str) -> str | None:
    """Why ``jti`` or ``client_id`` is revoked now (this node's projection); ``None`` if not."""
    store = channels.runtime.store
    assert store is not None, "runtime not started"
    return revocation_reads.revoked(store, app_id, jti, client_id, int(time.time() * 1000))
