"""The revocation fold and read model (``capability.revoke``, spec 02 §11); projector wiring."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass

from projections.folds.channel import ChannelState, FoldResult, RecordContext
from projections.folds.revocations import CLOSE_REVOKED, REVOKED, fold_revocation
from projections.folds.state import DUPLICATE
from projections.projector import Projector
from projections.reads.revocations import revoked
from projections.store import keys
from projections.store.kv import MemoryKV, Overlay
from projections.store.rocks import ProjectionStore
from sockudo.events import codec
from sockudo.events.channel import Origin
from sockudo.events.users import REVOCATIONS_CHANNEL, CapabilityRevoked
from sockudo.log.base import LogRecord
from sockudo.log.partitioning import channel_key, partition_for

APP = "app"
T0 = 1_700_000_000_000
TOPIC = "sockudo.channel-events"


def revocation(
    *,
    jti: str | None = None,
    client_id: str | None = None,
    ttl_ms: int = 60_000,
    reason: str = "revoked",
    app: str = APP,
    event_id: str | None = None,
) -> CapabilityRevoked:
    return CapabilityRevoked(
        event_id=event_id or str(uuid.uuid4()),
        app_id=app,
        origin=Origin(node="node-a/1"),
        ttl_ms=ttl_ms,
        jti=jti,
        client_id=client_id,
        reason=reason,
    )


@dataclass
class Fold:
    """One partition folded record by record into a memory store, at chosen record times."""

    kv: MemoryKV
    offset: int = 0
    last_ts: int | None = None
    deliver: bool = True

    def apply(self, ev: CapabilityRevoked, ts: int) -> FoldResult:
        return self.batch([(ev, ts)])[0]

    def batch(self, events: list[tuple[CapabilityRevoked, int]]) -> list[FoldResult]:
        """Fold ``events`` through one overlay and commit them together, as the projector does."""
        overlay = Overlay(self.kv)
        state = ChannelState(overlay)
        results = []
        for ev, ts in events:
            ctx = RecordContext(
                TOPIC, 0, self.offset, ts, self.last_ts, 1, partition_for, self.deliver
            )
            results.append(fold_revocation(state, ctx, ev))
            self.offset += 1
            self.last_ts = ts
        state.flush()
        for cf, pairs in overlay.changes().items():
            for k, v in pairs.items():
                if v is None:
                    self.kv.delete(cf, k)
                else:
                    self.kv.put(cf, k, v)
        return results


def test_a_revocation_holds_for_its_ttl_from_the_record_time() -> None:
    f = Fold(MemoryKV())
    result = f.apply(revocation(jti="j1", ttl_ms=60_000, reason="leaked"), T0)

    assert result.outcome.kind == REVOKED
    assert result.outcome.details == {"jti": "j1", "client_id": None, "expires_at_ms": T0 + 60_000}
    assert revoked(f.kv, APP, "j1", "someone", T0) == "leaked"
    assert revoked(f.kv, APP, "j1", "someone", T0 + 59_999) == "leaked"
    assert revoked(f.kv, APP, "j1", "someone", T0 + 60_000) is None
    # Other tokens, other clients, other apps are untouched.
    assert revoked(f.kv, APP, "j2", "someone", T0) is None
    assert revoked(f.kv, "other-app", "j1", "someone", T0) is None


def test_client_id_and_jti_are_revoked_independently() -> None:
    f = Fold(MemoryKV())
    f.apply(revocation(client_id="alice"), T0)
    assert revoked(f.kv, APP, "any-jti", "alice", T0 + 1) == "revoked"
    assert revoked(f.kv, APP, "any-jti", "bob", T0 + 1) is None
    f.apply(revocation(jti="jb", client_id="carol"), T0 + 10)
    assert revoked(f.kv, APP, "jb", "bob", T0 + 11) == "revoked"
    assert revoked(f.kv, APP, "other", "carol", T0 + 11) == "revoked"


def test_the_delivery_names_what_to_close_on_every_node() -> None:
    f = Fold(MemoryKV())
    ev = revocation(jti="j1", client_id="alice")
    (d,) = f.apply(ev, T0).deliveries
    assert d.kind == CLOSE_REVOKED
    assert (d.app_id, d.channel, d.message_id) == (APP, REVOCATIONS_CHANNEL, ev.event_id)
    assert json.loads(d.data) == {"jti": "j1", "client_id": "alice"}
    # A rebuild folds the same state without deliveries.
    quiet = Fold(MemoryKV(), deliver=False)
    assert quiet.apply(ev, T0).deliveries == ()
    assert list(quiet.kv.items(keys.REVOCATIONS)) == list(f.kv.items(keys.REVOCATIONS))


def test_a_replayed_append_is_folded_once() -> None:
    f = Fold(MemoryKV())
    ev = revocation(jti="j1", ttl_ms=1_000)
    f.apply(ev, T0)
    again = f.apply(ev, T0 + 500_000)
    assert again.outcome.kind == DUPLICATE
    assert again.deliveries == ()
    # The replay did not extend the revocation.
    assert revoked(f.kv, APP, "j1", "c", T0 + 1_000) is None


def test_a_later_revocation_replaces_the_expiry_and_expired_ones_are_pruned() -> None:
    f = Fold(MemoryKV())
    f.apply(revocation(jti="j1", ttl_ms=10_000), T0)
    f.apply(revocation(jti="j1", ttl_ms=100_000, reason="again"), T0 + 5_000)
    assert revoked(f.kv, APP, "j1", "c", T0 + 50_000) == "again"
    f.apply(revocation(client_id="short", ttl_ms=1_000), T0 + 6_000)
    before = len(list(f.kv.items(keys.REVOCATIONS)))
    assert before == 4  # two entries, two expiry index keys
    # A revocation folded after both expired prunes them (by record time).
    f.apply(revocation(jti="j9", app=APP), T0 + 200_000)
    remaining = list(f.kv.items(keys.REVOCATIONS))
    assert len(remaining) == 2
    assert all(b"j9" in k for k, _ in remaining)
    # Another app's revocation never prunes this app's keys.
    f.apply(revocation(jti="x", app="other-app", ttl_ms=1), T0 + 10_000_000)
    assert revoked(f.kv, APP, "j9", "c", T0 + 200_001) == "revoked"
    assert len(list(f.kv.items(keys.REVOCATIONS))) == 4


def test_folding_is_deterministic_whatever_the_batching() -> None:
    events = [
        (revocation(jti=f"j{i}", client_id=f"c{i % 3}", ttl_ms=1_000 * (i + 1)), T0 + i * 700)
        for i in range(12)
    ]
    one = Fold(MemoryKV())
    for ev, ts in events:
        one.apply(ev, ts)
    two = Fold(MemoryKV(), deliver=False)
    two.batch(events[:5])
    two.batch(events[5:])
    for cf in (keys.REVOCATIONS, keys.DEDUP, keys.OFFSETS):
        assert list(one.kv.items(cf)) == list(two.kv.items(cf))
    assert list(one.kv.items(keys.REVOCATIONS))  # not vacuous


def test_the_projector_folds_encoded_revocations_into_the_store(tmp_path: object) -> None:
    from pathlib import Path

    store = ProjectionStore(Path(str(tmp_path)) / "proj")
    try:
        partitions = 3
        projector = Projector(store, TOPIC, partitions, _decode, partition_for)
        ev = revocation(jti="j-store", client_id="c-store", ttl_ms=30_000)
        enc = codec.encode(ev)
        p = partition_for(channel_key(APP, REVOCATIONS_CHANNEL), partitions)
        rec = LogRecord(
            TOPIC, p, 0, T0, channel_key(APP, REVOCATIONS_CHANNEL), enc.value, enc.headers
        )

        result = projector.apply([rec])

        assert result.outcomes[(p, 0)].kind == REVOKED
        (d,) = result.deliveries
        assert d.kind == CLOSE_REVOKED
        assert revoked(store, APP, "j-store", "x", T0 + 1) == "revoked"
        assert revoked(store, APP, "x", "c-store", T0 + 29_999) == "revoked"
        assert revoked(store, APP, "j-store", "c-store", T0 + 30_000) is None
    finally:
        store.close()


def _decode(rec: LogRecord) -> object:
    assert rec.value is not None
    return codec.decode(rec.headers, rec.value)
