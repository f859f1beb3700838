"""The revocation fold: which capability tokens (by ``jti`` or ``client_id``) are revoked, and
until when.

``capability.revoke`` records (spec 02 §11) land in the ``revocations`` column family:

- ``app ‖ 0x00 ‖ "j"|"c" ‖ 0x00 ‖ id`` → ``u64 expires_at_ms ‖ reason`` (``j``: a jti,
  ``c``: a client id); a later revocation of the same id replaces the earlier one;
- ``app ‖ 0x00 ‖ "x" ‖ 0x00 ‖ u64 expires_at_ms ‖ "j"|"c" ‖ 0x00 ‖ id`` → ``b""``: the expiry
  index the fold prunes from.

``expires_at_ms`` is the record's log-append time plus the event's ``ttl_ms``; pruning uses the
record time too, and touches only the app's own keys (all of an app's revocations share one
partition), so every node and every rebuild store the same bytes. Readers compare expiries with
their own clock (``projections/reads/revocations.py``). Each revocation also yields a
``close_revoked`` delivery: every node closes its own sockets using a revoked token.
"""

from __future__ import annotations

from projections.folds.channel import (
    ChannelState,
    FoldResult,
    RecordContext,
    fold_record,
    seen_event,
)
from projections.folds.state import Delivery, Outcome, dumps
from projections.store import keys
from projections.store.kv import KV
from sockudo.events.users import CapabilityRevoked

REVOCATION_EVENT_TYPES = (CapabilityRevoked,)
"""The events this fold interprets."""

REVOKED = "capability_revoked"
"""Outcome kind of a folded revocation."""
CLOSE_REVOKED = "close_revoked"
"""Delivery kind: close this node's sockets whose token ``data`` (``{"jti","client_id"}``) names."""

JTI = b"j"
CLIENT = b"c"
_EXPIRY = b"x"


def entry_key(app_id: str, kind: bytes, ident: str) -> bytes:
    """Key of the revocation of one jti (``JTI``) or client id (``CLIENT``)."""
    return app_id.encode() + b"\x00" + kind + b"\x00" + ident.encode()


def _expiry_prefix(app_id: str) -> bytes:
    return app_id.encode() + b"\x00" + _EXPIRY + b"\x00"


def _expiry_key(app_id: str, expires_ms: int, kind: bytes, ident: str) -> bytes:
    return _expiry_prefix(app_id) + keys.u64(expires_ms) + kind + b"\x00" + ident.encode()


def decode_entry(raw: bytes) -> tuple[int, str]:
    """``(expires_at_ms, reason)`` of a stored revocation."""
    return keys.read_u64(raw), bytes(raw[8:]).decode()


def fold_revocation(
    state: ChannelState, ctx: RecordContext, event: CapabilityRevoked
) -> FoldResult:
    """Apply one revocation; keep its outcome under its offset; return the close delivery."""
    return fold_record(state, ctx, event, _apply)


def _apply(state: ChannelState, ctx: RecordContext, ev: CapabilityRevoked) -> FoldResult:
    kv = state.kv
    seen = seen_event(kv, ctx, ev.event_id)
    if seen is not None:
        return FoldResult(seen)
    now = ctx.timestamp_ms
    _prune(kv, ev.app_id, now)
    expires = now + max(ev.ttl_ms, 0)
    for kind, ident in ((JTI, ev.jti), (CLIENT, ev.client_id)):
        if ident is None:
            continue
        key = entry_key(ev.app_id, kind, ident)
        previous = kv.get(keys.REVOCATIONS, key)
        if previous is not None:
            kv.delete(
                keys.REVOCATIONS, _expiry_key(ev.app_id, keys.read_u64(previous), kind, ident)
            )
        kv.put(keys.REVOCATIONS, key, keys.u64(expires) + ev.reason.encode())
        kv.put(keys.REVOCATIONS, _expiry_key(ev.app_id, expires, kind, ident), b"")
    kv.put(keys.DEDUP, keys.dedup_key(ctx.partition, ev.event_id), keys.u64(ctx.offset))
    outcome = Outcome(
        kind=REVOKED,
        app_id=ev.app_id,
        channel=ev.channel,
        details={"jti": ev.jti, "client_id": ev.client_id, "expires_at_ms": expires},
    )
    if not ctx.deliver:
        return FoldResult(outcome)
    delivery = Delivery(
        app_id=ev.app_id,
        channel=ev.channel,
        event="sockudo:token_expired",
        data=dumps({"jti": ev.jti, "client_id": ev.client_id}).decode(),
        data_is_json=True,
        message_id=ev.event_id,
        stream_id=None,
        serial=None,
        history_serial=None,
        published_at_ms=now,
        exclude_socket_id=None,
        user_id=ev.client_id,
        client_event=False,
        extras_json=None,
        tags=None,
        kind=CLOSE_REVOKED,
    )
    return FoldResult(outcome, (delivery,))


def _prune(kv: KV, app_id: str, now_ms: int) -> None:
    """Forget the app's revocations that expired at or before ``now_ms`` (record time)."""
    prefix = _expiry_prefix(app_id)
    end = prefix + keys.u64(now_ms + 1)
    for key, _ in list(kv.scan(keys.REVOCATIONS, prefix, end)):
        rest = key[len(prefix) + 8 :]
        kind, ident = rest[:1], rest[2:]
        kv.delete(keys.REVOCATIONS, key)
        kv.delete(keys.REVOCATIONS, entry_key(app_id, kind, ident.decode()))
