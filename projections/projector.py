"""Applies a batch of log records to the folds and commits state plus checkpoints atomically.

The projector owns no I/O loop: the node's consumer (``sockudo/node/consumer.py``) and
``sockudo-tools rebuild`` both read the log and hand batches here. A record that cannot be
decoded stalls its partition: the fold never skips a record (spec 05 §6.1 rule 5, §7.4). So
does a record that decodes but that its fold cannot apply (contents no writer should have
produced): the batch is folded again without it and its partition stops before it, while the
other partitions go on.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from projections.folds.channel import (
    CHANNEL_EVENT_TYPES,
    ChannelState,
    FoldResult,
    RecordContext,
    fold,
    new_context,
)
from projections.folds.presence import PRESENCE_EVENT_TYPES, fold_presence
from projections.folds.revocations import REVOCATION_EVENT_TYPES, fold_revocation
from projections.folds.state import IGNORED, Delivery, Outcome, StreamHead
from projections.store import keys
from projections.store.kv import Overlay
from projections.store.rocks import FOLD_VERSION, Checkpoint, ProjectionStore, Stall
from sockudo.errors import CodecError
from sockudo.log.base import LogRecord

STALL_TRUNCATED = "projection_log_truncated"
STALL_UNDECODABLE = "projection_stalled_unknown_schema"
STALL_AHEAD = "projection_ahead_of_log"

_RECORD_ERRORS = (ArithmeticError, AttributeError, LookupError, TypeError, ValueError, struct.error)
"""What a fold raises on contents it cannot apply (malformed JSON flagged as JSON, say). Errors
of the store itself are not among them: they fail the batch, never stall a partition."""

_HEAD_CACHE_LIMIT = 100_000
"""Stream heads kept decoded between batches; the projector is their only writer."""

Decoder = Callable[[LogRecord], object]
Partitioner = Callable[[bytes, int], int]
Fold = Callable[[ChannelState, RecordContext, Any], FoldResult]

_FOLDS: dict[type, Fold] = (
    {cls: fold for cls in CHANNEL_EVENT_TYPES}
    | {cls: fold_presence for cls in PRESENCE_EVENT_TYPES}
    | {cls: fold_revocation for cls in REVOCATION_EVENT_TYPES}
)
"""The fold of each event class the projector interprets (exact classes, as decoded)."""


@dataclass(slots=True)
class PartitionState:
    """Where the fold of one partition stands on this node."""

    position: int
    last_timestamp_ms: int | None
    stall: Stall | None = None


class _Unfoldable(Exception):
    """A decoded record its fold failed on (raised inside :meth:`Projector._apply`)."""

    def __init__(self, partition: int, offset: int, cause: Exception) -> None:
        super().__init__(f"fold of offset {offset} failed: {type(cause).__name__}: {cause}")
        self.partition = partition
        self.offset = offset


@dataclass(slots=True)
class BatchResult:
    """What one committed batch produced, for waiters and live fanout."""

    outcomes: dict[tuple[int, int], Outcome] = field(default_factory=dict)
    deliveries: list[Delivery] = field(default_factory=list)
    stalled: dict[int, Stall] = field(default_factory=dict)
    applied: int = 0


class Projector:
    """Folds ``channel-events`` records into a :class:`ProjectionStore`."""

    def __init__(
        self,
        store: ProjectionStore,
        topic: str,
        partitions: int,
        decode: Decoder,
        partitioner: Partitioner,
        *,
        collect_deliveries: bool = True,
    ) -> None:
        self.store = store
        self.topic = topic
        self.partitions = partitions
        self._decode = decode
        self._partitioner = partitioner
        self._deliver = collect_deliveries
        self.state: dict[int, PartitionState] = {}
        self._heads: dict[bytes, StreamHead | None] = {}
        for p in range(partitions):
            ckpt = store.checkpoint(topic, p)
            self.state[p] = PartitionState(
                position=ckpt.position if ckpt else 0,
                last_timestamp_ms=ckpt.last_timestamp_ms if ckpt else None,
                stall=store.stall(topic, p),
            )

    def stalled(self) -> dict[int, Stall]:
        return {p: s.stall for p, s in self.state.items() if s.stall is not None}

    def mark_stalled(self, partition: int, stall: Stall) -> None:
        """Record a node-local stall (checkpoint behind log start, projection ahead of log)."""
        self.state[partition].stall = stall
        self.store.write({}, {keys.stall_key(self.topic, partition): stall.encode()})

    def clear_stall(self, partition: int) -> None:
        self.state[partition].stall = None
        self.store.write({}, {keys.stall_key(self.topic, partition): None})

    def apply(
        self,
        records: Iterable[LogRecord],
        positions_after: Mapping[int, int] | None = None,
        *,
        now_ms: int = 0,
    ) -> BatchResult:
        """Fold ``records`` (offset order per partition) and commit them in one write batch.

        ``positions_after`` are the reader's positions after the batch; they may lie past the
        last record (transaction markers, compacted gaps) and become the checkpoints.
        ``now_ms`` only stamps stall records; the fold itself uses record times.
        """
        batch = records if isinstance(records, list) else list(records)
        saved = [(st, st.position, st.last_timestamp_ms, st.stall) for st in self.state.values()]
        unfoldable: dict[int, Stall] = {}
        while True:
            try:
                result = self._apply(batch, positions_after, now_ms, unfoldable)
            except _Unfoldable as failed:
                # Nothing of this attempt was written: start it again from the saved states,
                # with the record's partition stalled at it (records before it still fold).
                self._heads.clear()
                for st, position, last_ts, stall in saved:
                    st.position, st.last_timestamp_ms, st.stall = position, last_ts, stall
                stall = Stall(STALL_UNDECODABLE, failed.offset, str(failed), now_ms)
                unfoldable[failed.partition] = stall
                for p, st_stall in unfoldable.items():
                    self.state[p].stall = st_stall
                continue
            result.stalled.update(unfoldable)
            return result

    def _apply(
        self,
        records: list[LogRecord],
        positions_after: Mapping[int, int] | None,
        now_ms: int,
        unfoldable: Mapping[int, Stall],
    ) -> BatchResult:
        overlay = Overlay(self.store)
        if len(self._heads) > _HEAD_CACHE_LIMIT:
            self._heads.clear()
        channel_state = ChannelState(overlay, self._heads)
        result = BatchResult()
        outcomes = result.outcomes
        deliveries = result.deliveries
        touched: set[int] = set(unfoldable)  # their stalls go into this batch's write
        decode, topic, partitions = self._decode, self.topic, self.partitions
        partitioner, deliver = self._partitioner, self._deliver
        folds = _FOLDS
        states = self.state
        applied = 0
        for rec in records:
            p = rec.partition
            st = states[p]
            offset = rec.offset
            stall = st.stall
            if offset < st.position or (
                stall is not None and (stall.offset is None or offset >= stall.offset)
            ):
                continue  # records before a stall that an unfoldable record set still fold
            try:
                event = decode(rec)
            except CodecError as exc:
                st.stall = Stall(STALL_UNDECODABLE, offset, str(exc), now_ms)
                result.stalled[p] = st.stall
                touched.add(p)
                continue
            ts = rec.timestamp_ms
            ctx = new_context(
                topic, p, offset, ts, st.last_timestamp_ms, partitions, partitioner, deliver
            )
            fold_event = folds.get(type(event))
            if fold_event is None:
                # Not an exact class the table knows: a subclass folds as its base would.
                for cls, candidate in folds.items():
                    if isinstance(event, cls):
                        fold_event = candidate
                        break
            if fold_event is not None:
                try:
                    folded = fold_event(channel_state, ctx, event)
                except _RECORD_ERRORS as exc:
                    raise _Unfoldable(p, offset, exc) from exc
                outcome = folded.outcome
                if folded.deliveries:
                    deliveries.extend(folded.deliveries)
            else:
                # Families folded by later projections (versions, annotations) still move
                # the checkpoint; their outcome says nobody here interpreted them.
                outcome = Outcome(kind=IGNORED, details={"type": type(event).__name__})
            outcomes[(p, offset)] = outcome
            st.position = offset + 1
            st.last_timestamp_ms = ts
            touched.add(p)
            applied += 1
        result.applied = applied

        if positions_after:
            for p, pos in positions_after.items():
                st = self.state[p]
                if st.stall is None and pos > st.position:
                    st.position = pos
                    touched.add(p)

        channel_state.flush()
        meta: dict[bytes, bytes | None] = {}
        for p in touched:
            st = self.state[p]
            meta[keys.checkpoint_key(self.topic, p)] = Checkpoint(
                st.position, st.last_timestamp_ms, FOLD_VERSION
            ).encode()
            if st.stall is not None:
                meta[keys.stall_key(self.topic, p)] = st.stall.encode()
        try:
            self.store.write(overlay.changes(), meta)
        except BaseException:
            self._heads.clear()  # cached heads hold this batch's uncommitted updates
            raise
        return result
