"""Connection recovery reads: which messages a resuming V2 client missed (spec 02 §7.3).

Two tiers: the node's hot replay buffer (recent deliveries kept in memory by fanout) and the
durable tier, the history projection indexed by delivery serial (``delivery`` CF). The decision
table is evaluated in the spec's order; the answer is either the deliveries to replay or a
failure code and reason. Pure over a KV reader and the hot entries passed in.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from projections.folds.state import (
    DEGRADED,
    RESET_REQUIRED,
    Delivery,
    HistoryRow,
    StreamHead,
    is_binary_message,
)
from projections.store import keys
from projections.store.kv import KVReader

_COMPACT = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


@dataclass(frozen=True, slots=True)
class Position:
    """Where a client says it is on a channel."""

    serial: int
    stream_id: str | None = None
    last_message_id: str | None = None
    legacy: bool = False
    """From ``channel_serials`` (no stream id): only the hot tier may serve it."""


@dataclass(frozen=True, slots=True)
class Recovered:
    source: str
    """``hot`` or ``cold``."""
    deliveries: list[Delivery]
    stream_id: str | None
    head: int
    """The terminal position: the channel's delivery head."""
    head_message_id: str | None


@dataclass(frozen=True, slots=True)
class Failed:
    code: str
    reason: str
    expected_stream_id: str | None
    current_stream_id: str | None
    oldest_available_serial: int | None
    newest_available_serial: int | None

    def as_dict(self, channel: str) -> dict[str, Any]:
        return {
            "channel": channel,
            "code": self.code,
            "reason": self.reason,
            "expected_stream_id": self.expected_stream_id,
            "current_stream_id": self.current_stream_id,
            "oldest_available_serial": self.oldest_available_serial,
            "newest_available_serial": self.newest_available_serial,
        }


def evaluate(
    kv: KVReader,
    app_id: str,
    channel: str,
    pos: Position,
    *,
    hot: Sequence[Delivery],
    upto: int | None,
    max_buffer: int,
    history_enabled: bool,
    stalled: bool,
) -> Recovered | Failed:
    """The outcome of resuming ``channel`` from ``pos``.

    ``upto`` caps the replay (the subscription's attach head: later serials reach the client
    live); ``None`` replays to the current head. ``hot`` is the channel's hot buffer, oldest
    first.
    """
    ck = keys.channel_prefix(app_id, channel)
    raw = kv.get(keys.STREAMS, ck)
    head = StreamHead.decode(raw) if raw is not None else None
    current = head.stream_id if head is not None else None
    h = head.next_d - 1 if head is not None else 0
    oldest = _oldest_delivery(kv, ck, head)

    def fail(code: str, reason: str) -> Failed:
        return Failed(code, reason, pos.stream_id, current, oldest, h if head else None)

    if head is not None and head.durable_state == RESET_REQUIRED:
        return fail("stream_reset", "durable_stream_reset_required")
    if stalled or (head is not None and head.durable_state == DEGRADED):
        return fail("persistence_unavailable", "history_stream_degraded")
    if pos.stream_id is not None and pos.stream_id != current:
        return fail("stream_reset", "stream_id_mismatch")
    end = h if upto is None else min(h, upto)
    hot_range = _from_hot(hot, current, pos.serial, end)
    if pos.legacy and hot_range is None and pos.serial < end:
        return fail(
            "continuity_unverifiable", "legacy_serial_only_position_cannot_use_cold_recovery"
        )
    if pos.serial > h:
        return fail("continuity_unverifiable", "position_ahead_of_durable_stream")
    if h - pos.serial > max_buffer:
        return fail("position_expired", "recovery_window_exceeded")
    if hot_range is not None:
        source, deliveries = "hot", hot_range
    else:
        if oldest is not None and pos.serial + 1 < oldest:
            return fail("position_expired", "retained_history_floor_is_ahead_of_requested_serial")
        if not history_enabled:
            return fail("position_expired", "hot_replay_expired_and_durable_history_disabled")
        cold = _from_cold(kv, app_id, channel, ck, head, pos.serial, end)
        if cold is None:
            return fail("continuity_unverifiable", "durable_history_is_not_contiguous")
        source, deliveries = "cold", cold
    if deliveries and pos.last_message_id and deliveries[0].message_id == pos.last_message_id:
        deliveries = deliveries[1:]
    head_message_id = _message_id_at(hot, kv, ck, head, h)
    return Recovered(source, deliveries, current, h, head_message_id)


@dataclass(frozen=True, slots=True)
class Newest:
    """The newest stored messages of a channel (rewind, spec 02 §5.6), oldest first."""

    deliveries: list[Delivery]
    more: bool
    """More matching rows existed than were taken, or the scan limit cut the search."""
    head: StreamHead | None


def newest_messages(
    kv: KVReader,
    app_id: str,
    channel: str,
    *,
    limit: int,
    since_ms: int | None,
    scan_limit: int,
    accept: Callable[[Delivery], bool] | None = None,
) -> Newest:
    """Up to ``limit`` newest rows published at or after ``since_ms`` that ``accept`` takes."""
    ck = keys.channel_prefix(app_id, channel)
    raw = kv.get(keys.STREAMS, ck)
    head = StreamHead.decode(raw) if raw is not None else None
    picked: list[Delivery] = []
    more = False
    if head is not None and head.retained_count:
        gen = keys.history_gen_prefix(ck, head.generation)
        for scanned, (_key, raw_row) in enumerate(
            kv.scan(keys.HISTORY, gen, keys.prefix_end(gen), reverse=True), start=1
        ):
            if scanned > scan_limit:
                more = True
                break
            row = HistoryRow.decode(raw_row)
            if since_ms is not None and row.published_at_ms < since_ms:
                break
            d = delivery_of_row(app_id, channel, head.stream_id, row.delivery_serial, row)
            if accept is not None and not accept(d):
                continue
            if len(picked) == limit:
                more = True
                break
            picked.append(d)
    picked.reverse()
    return Newest(picked, more, head)


def _oldest_delivery(kv: KVReader, ck: bytes, head: StreamHead | None) -> int | None:
    if head is None:
        return None
    gen = keys.history_gen_prefix(ck, head.generation)
    for key, _ in kv.scan(keys.DELIVERY, gen, keys.prefix_end(gen)):
        return keys.read_u64(key, len(gen))
    return None


def _from_hot(
    hot: Sequence[Delivery], stream_id: str | None, after: int, end: int
) -> list[Delivery] | None:
    """``(after, end]`` from the hot buffer if it holds every serial of it on this stream."""
    if after >= end:
        return []
    wanted = [d for d in hot if d.stream_id == stream_id and d.serial is not None]
    picked = [d for d in wanted if after < (d.serial or 0) <= end]
    if len(picked) != end - after:
        return None
    return picked


def _from_cold(
    kv: KVReader,
    app_id: str,
    channel: str,
    ck: bytes,
    head: StreamHead | None,
    after: int,
    end: int,
) -> list[Delivery] | None:
    """``(after, end]`` from the history projection; ``None`` on any missing serial."""
    if after >= end:
        return []
    assert head is not None
    gen = keys.history_gen_prefix(ck, head.generation)
    out: list[Delivery] = []
    expected = after + 1
    for key, raw_h in kv.scan(keys.DELIVERY, gen + keys.u64(after + 1), gen + keys.u64(end + 1)):
        d = keys.read_u64(key, len(gen))
        if d != expected:
            return None
        row_raw = kv.get(keys.HISTORY, gen + raw_h)
        if row_raw is None:
            return None
        out.append(delivery_of_row(app_id, channel, head.stream_id, d, HistoryRow.decode(row_raw)))
        expected += 1
    return out if expected == end + 1 else None


def delivery_of_row(
    app_id: str, channel: str, stream_id: str, serial: int, row: HistoryRow
) -> Delivery:
    """A stored history row as the delivery live fanout would have built (V2 shaping)."""
    msg = row.message
    data = msg.get("data")
    is_json = not isinstance(data, str)
    extras = msg.get("extras")
    return Delivery(
        app_id=app_id,
        channel=channel,
        event=str(msg["event"]),
        data=data if isinstance(data, str) else _COMPACT.encode(data),
        data_is_json=is_json,
        message_id=str(msg.get("message_id") or ""),
        stream_id=stream_id,
        serial=serial,
        history_serial=int(msg.get("serial") or 0) or None,
        published_at_ms=row.published_at_ms,
        exclude_socket_id=None,
        user_id=msg.get("user_id"),
        client_event=False,
        extras_json=_COMPACT.encode(extras) if extras is not None else None,
        tags=msg.get("tags"),
        data_is_binary=is_binary_message(msg),
    )


def _message_id_at(
    hot: Sequence[Delivery], kv: KVReader, ck: bytes, head: StreamHead | None, serial: int
) -> str | None:
    if head is None or serial == 0:
        return None
    for d in reversed(hot):
        if d.serial == serial and d.stream_id == head.stream_id:
            return d.message_id
    gen = keys.history_gen_prefix(ck, head.generation)
    raw_h = kv.get(keys.DELIVERY, gen + keys.u64(serial))
    if raw_h is None:
        return None
    row = kv.get(keys.HISTORY, gen + raw_h)
    if row is None:
        return None
    message_id = HistoryRow.decode(row).message.get("message_id")
    return str(message_id) if message_id is not None else None
