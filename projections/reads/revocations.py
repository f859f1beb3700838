"""Revocation read model: is a capability token (its ``jti`` or its ``client_id``) revoked now?"""

from __future__ import annotations

from projections.folds.revocations import CLIENT, JTI, decode_entry, entry_key
from projections.store import keys
from projections.store.kv import KVReader


def revoked(kv: KVReader, app_id: str, jti: str, client_id: str, now_ms: int) -> str | None:
    """The reason of a revocation of ``jti`` or ``client_id`` still in force, else ``None``.

    Entries the fold has not pruned yet are compared with ``now_ms`` here.
    """
    for kind, ident in ((JTI, jti), (CLIENT, client_id)):
        raw = kv.get(keys.REVOCATIONS, entry_key(app_id, kind, ident))
        if raw is None:
            continue
        expires, reason = decode_entry(raw)
        if expires > now_ms:
            return reason
    return None
