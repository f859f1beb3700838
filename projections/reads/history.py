"""Channel history read model: pages, continuity and stream state (spec 03 §2.4, §3.1, §3.2).

Reads only; the fold is the only writer. A stream that is not healthy, or whose partition this
node cannot prove continuity for, fails closed with :class:`StreamNotHealthy`.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from itertools import islice
from types import MappingProxyType
from typing import Any

from projections.folds.state import (
    HEALTHY,
    RESET_REQUIRED,
    HistoryRow,
    StreamHead,
    stored_item,
)
from projections.store import keys
from projections.store.kv import KVReader
from projections.store.rocks import Stall
from sockudo.errors import ApiError, StreamNotHealthy

NEWEST_FIRST = "newest_first"
OLDEST_FIRST = "oldest_first"
MAX_CURSOR_BYTES = 16 * 1024
DIRECTIONS = {
    "newest_first": NEWEST_FIRST,
    "backwards": NEWEST_FIRST,
    "reverse": NEWEST_FIRST,
    "oldest_first": OLDEST_FIRST,
    "forwards": OLDEST_FIRST,
    "forward": OLDEST_FIRST,
}
"""Accepted ``direction`` values and their aliases (spec 03 §3.1, spec 02 §8.1)."""


@dataclass(frozen=True, slots=True)
class HistoryQuery:
    """A validated history page request."""

    limit: int
    direction: str = NEWEST_FIRST
    cursor: str | None = None
    start_serial: int | None = None
    end_serial: int | None = None
    start_time_ms: int | None = None
    end_time_ms: int | None = None

    def bounds(self) -> dict[str, int | None]:
        return {
            "start_serial": self.start_serial,
            "end_serial": self.end_serial,
            "start_time_ms": self.start_time_ms,
            "end_time_ms": self.end_time_ms,
        }


def read_head(kv: KVReader, app_id: str, channel: str) -> StreamHead | None:
    raw = kv.get(keys.STREAMS, keys.channel_prefix(app_id, channel))
    return StreamHead.decode(raw) if raw is not None else None


def stream_state(head: StreamHead | None, stall: Stall | None, node_id: str) -> dict[str, Any]:
    """The ``stream_state`` object; a node-local stall overrides the folded state."""
    reason: str | None
    at: int | None
    if stall is not None:
        state, reason, at = "degraded", stall.reason, stall.since_ms
        node: str | None = node_id
        observed = "local_projection"
    else:
        state = head.durable_state if head else HEALTHY
        reason = head.reason if head else None
        at = head.last_transition_at_ms if head else None
        node = None
        observed = "event_log"
    return {
        "stream_id": head.stream_id if head else None,
        "durable_state": state,
        "recovery_allowed": state == HEALTHY,
        "reset_required": state == RESET_REQUIRED,
        "reason": reason,
        "node_id": node,
        "last_transition_at_ms": at,
        "authoritative_source": "event_log",
        "observed_source": observed,
    }


def retained(head: StreamHead | None) -> dict[str, Any]:
    return {
        "stream_id": head.stream_id if head else None,
        "retained_messages": head.retained_count if head else 0,
        "retained_bytes": head.retained_bytes if head else 0,
        "oldest_available_serial": head.oldest_serial if head else None,
        "newest_available_serial": head.newest_serial if head else None,
        "oldest_available_published_at_ms": head.oldest_ts if head else None,
        "newest_available_published_at_ms": head.newest_ts if head else None,
    }


def stream_summary(
    kv: KVReader, app_id: str, channel: str, stall: Stall | None, node_id: str
) -> dict[str, Any]:
    """The ``stream`` object of ``GET …/history/state`` (and of ``inspect-stream``)."""
    head = read_head(kv, app_id, channel)
    return {
        "stream_id": head.stream_id if head else None,
        "next_serial": head.next_h if head else None,
        "retained": retained(head),
        "state": stream_state(head, stall, node_id),
    }


def encode_cursor(payload: dict[str, Any]) -> str:
    raw = json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _invalid(message: str) -> ApiError:
    return ApiError(400, "invalid_input", message)


@functools.lru_cache(maxsize=256)
def decode_cursor(cursor: str) -> Mapping[str, Any]:
    """The payload of a cursor; remembered, as the handler validates it before the read uses it
    (errors are not cached: a bad cursor is checked again each time)."""
    if len(cursor.encode()) > MAX_CURSOR_BYTES:
        raise _invalid("History cursor exceeds 16 KiB")
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        data = json.loads(base64.urlsafe_b64decode(padded.encode()))
    except (binascii.Error, ValueError, UnicodeDecodeError) as exc:
        raise _invalid(f"Invalid history cursor: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("serial"), int):
        raise _invalid("Invalid history cursor: malformed payload")
    if data.get("version") != 1:
        raise _invalid(f"Unsupported history cursor version: {data.get('version')}")
    return MappingProxyType(data)


@dataclass(slots=True)
class _Rows:
    """The rows of one page, still encoded, and what the envelope needs."""

    head: StreamHead | None
    state: dict[str, Any]
    rows: list[tuple[bytes, bytes]]
    """``(key, stored row)`` pairs of the ``history`` CF, in page order."""
    serial_at: int
    """Where a row key's u64 history serial starts."""
    has_more: bool

    def serial(self, key: bytes) -> int:
        return int(_U64.unpack_from(key, self.serial_at)[0])


def _select(
    kv: KVReader,
    app_id: str,
    channel: str,
    query: HistoryQuery,
    stall: Stall | None,
    node_id: str,
) -> _Rows:
    """Validate the cursor against the stream and pick the page's rows without decoding them."""
    cursor = decode_cursor(query.cursor) if query.cursor is not None else None
    head = read_head(kv, app_id, channel)
    state = stream_state(head, stall, node_id)
    if state["durable_state"] != HEALTHY:
        raise StreamNotHealthy(state)

    after: int | None = None
    if cursor is not None:
        for name, expected in (
            ("app", app_id),
            ("channel", channel),
            ("direction", query.direction),
            ("bounds", query.bounds()),
        ):
            field_name = "app_id" if name == "app" else name
            if cursor.get(field_name) != expected:
                raise _invalid(f"History cursor {name} does not match the request")
        if head is None or cursor.get("stream_id") != head.stream_id:
            raise _invalid("Expired history cursor: channel stream changed")
        if head.oldest_serial is not None and cursor["serial"] < head.oldest_serial:
            raise _invalid("Expired history cursor: cursor points before retained history")
        after = int(cursor["serial"])

    newest_first = query.direction == NEWEST_FIRST
    rows: list[tuple[bytes, bytes]] = []
    serial_at = 0
    if head is not None and head.retained_count:
        ck = keys.channel_prefix(app_id, channel)
        gen = keys.history_gen_prefix(ck, head.generation)
        serial_at = len(gen)
        lo = query.start_serial or 1
        hi = query.end_serial
        if after is not None:
            if newest_first:
                hi = after - 1 if hi is None else min(hi, after - 1)
            else:
                lo = max(lo, after + 1)
        start_key = gen + keys.u64(lo)
        end_key = gen + keys.u64(hi + 1) if hi is not None else keys.prefix_end(gen)
        # One row past the limit tells whether there is a next page.
        start_ms, end_ms = query.start_time_ms, query.end_time_ms
        window = None
        if newest_first and start_ms is None and end_ms is None:
            window = _newest_window(kv, gen, head, lo, hi, query.limit + 1)
        if window is not None:
            rows = window
        elif start_ms is None and end_ms is None:
            scan = kv.scan(keys.HISTORY, start_key, end_key, reverse=newest_first)
            rows = list(islice(scan, query.limit + 1))
        else:
            scan = kv.scan(keys.HISTORY, start_key, end_key, reverse=newest_first)
            for pair in scan:
                ts = _U64.unpack_from(pair[1])[0]  # a row starts with its published_at_ms
                if start_ms is not None and ts < start_ms:
                    if newest_first:
                        break
                    continue
                if end_ms is not None and ts > end_ms:
                    if newest_first:
                        continue
                    break
                rows.append(pair)
                if len(rows) > query.limit:
                    break
    has_more = len(rows) > query.limit
    if has_more:
        del rows[query.limit :]
    return _Rows(head, state, rows, serial_at, has_more)


def _newest_window(
    kv: KVReader, gen: bytes, head: StreamHead, lo: int, hi: int | None, count: int
) -> list[tuple[bytes, bytes]] | None:
    """The first ``count`` rows of a newest-first scan of ``[lo, hi]``, read forwards.

    Stepping a RocksDB iterator backwards costs a search per row (the memtable is a skip
    list); rows hold consecutive serials, so the page is usually the ``count`` serials below
    the top, read in key order and reversed. ``None`` when that window is not complete (a gap
    left by a purge, say): the caller then scans backwards.
    """
    newest = head.newest_serial
    if newest is None:
        return None
    top = newest if hi is None else min(hi, newest)
    if top < lo:
        return None
    first = max(lo, top - count + 1)
    window = list(kv.scan(keys.HISTORY, gen + keys.u64(first), gen + keys.u64(top + 1)))
    if len(window) != top - first + 1:
        return None
    window.reverse()
    return window


def _envelope(app_id: str, channel: str, query: HistoryQuery, page: _Rows) -> dict[str, Any]:
    """Every field of the page but ``items``, in wire order."""
    head, has_more = page.head, page.has_more
    next_cursor = None
    if has_more and page.rows:
        next_cursor = encode_cursor(
            {
                "version": 1,
                "app_id": app_id,
                "channel": channel,
                "stream_id": head.stream_id if head else None,
                "serial": page.serial(page.rows[-1][0]),
                "direction": query.direction,
                "bounds": query.bounds(),
            }
        )
    truncated = _truncated_by_retention(head, query)
    continuity = {
        "stream_id": head.stream_id if head else None,
        "oldest_available_serial": head.oldest_serial if head else None,
        "newest_available_serial": head.newest_serial if head else None,
        "oldest_available_published_at_ms": head.oldest_ts if head else None,
        "newest_available_published_at_ms": head.newest_ts if head else None,
        "retained_messages": head.retained_count if head else 0,
        "retained_bytes": head.retained_bytes if head else 0,
        "complete": not has_more and not truncated,
        "truncated_by_retention": truncated,
    }
    return {
        "direction": query.direction,
        "limit": query.limit,
        "has_more": has_more,
        "next_cursor": next_cursor,
        "bounds": query.bounds(),
        "continuity": continuity,
        "stream_state": page.state,
    }


def read_page(
    kv: KVReader,
    app_id: str,
    channel: str,
    query: HistoryQuery,
    *,
    stall: Stall | None,
    node_id: str,
) -> dict[str, Any]:
    """One page of ``GET …/history``; raises ``StreamNotHealthy`` or ``ApiError(400)``."""
    page = _select(kv, app_id, channel, query, stall, node_id)
    stream_id = page.head.stream_id if page.head else None
    items = [_item(stream_id, page.serial(key), HistoryRow.decode(raw)) for key, raw in page.rows]
    return {"items": items, **_envelope(app_id, channel, query, page)}


def _item(stream_id: str | None, serial: int, row: HistoryRow) -> dict[str, Any]:
    """One page item decoded from its row (the fold stores the same item rendered)."""
    message = row.message  # parsed once: the property decodes on every access
    return {
        "stream_id": stream_id,
        "serial": serial,
        "published_at_ms": row.published_at_ms,
        "message_id": message.get("message_id"),
        "event_name": message.get("event"),
        "operation_kind": "append",
        "payload_size_bytes": row.size,
        "message": message,
    }


_RESPONSE_ENCODER = json.JSONEncoder(
    ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":")
)


def render_json(value: Any) -> bytes:
    """``value`` as an HTTP JSON body, encoded exactly like Starlette's ``JSONResponse``."""
    return _RESPONSE_ENCODER.encode(value).encode("utf-8")


_U64 = struct.Struct(">Q")


def read_page_json(
    kv: KVReader,
    app_id: str,
    channel: str,
    query: HistoryQuery,
    *,
    stall: Stall | None,
    node_id: str,
) -> bytes:
    """:func:`read_page` as the body of its HTTP response: ``render_json(read_page(...))``.

    Equal byte for byte, without decoding and re-encoding every row: a channel message's row
    stores its whole page item, rendered by the fold with the response's own encoding
    (:class:`HistoryRow`), so the page is the join of the stored items. A row without one
    takes the decode/encode round trip.
    """
    page = _select(kv, app_id, channel, query, stall, node_id)
    stream_id = page.head.stream_id if page.head else None
    items: list[bytes] = []
    append = items.append
    for key, raw in page.rows:
        item = stored_item(raw)
        append(item if item is not None else _round_trip(raw, stream_id, page.serial(key)))
    rest = render_json(_envelope(app_id, channel, query, page))
    return b'{"items":[' + b",".join(items) + b"]," + rest[1:]


def _round_trip(raw: bytes, stream_id: str | None, serial: int) -> bytes:
    """One rendered item by decoding the stored message and encoding it again."""
    return render_json(_item(stream_id, serial, HistoryRow.decode(raw)))


def _truncated_by_retention(head: StreamHead | None, q: HistoryQuery) -> bool:
    if head is None or head.evicted_through_serial is None:
        return False
    if q.start_serial is None and q.start_time_ms is None:
        return True
    if q.start_serial is not None and q.start_serial <= head.evicted_through_serial:
        return True
    return (
        q.start_time_ms is not None
        and head.evicted_through_time_ms is not None
        and q.start_time_ms <= head.evicted_through_time_ms
    )
