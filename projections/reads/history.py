"""Channel history read model: pages, continuity and stream state (spec 03 §2.4, §3.1, §3.2).

Reads only; the fold is the only writer. A stream that is not healthy, or whose partition this
node cannot prove continuity for, fails closed with :class:`StreamNotHealthy`.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import json.encoder
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from itertools import islice
from operator import itemgetter
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


def _c_encoder(
    *, ensure_ascii: bool, sort_keys: bool, allow_nan: bool
) -> Callable[[Any, int], list[str]] | None:
    """The C encoder ``json`` builds afresh on every ``encode``/``dumps``, built once.

    Same settings, so the same text; ``markers=None`` only skips the circular-reference
    check, and these values are trees the read model builds. ``None`` without the C module.
    """
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:
        return None
    escape = (
        json.encoder.encode_basestring_ascii if ensure_ascii else json.encoder.encode_basestring
    )
    encoder: Callable[[Any, int], list[str]] = make(
        None, json.JSONEncoder().default, escape, None, ":", ",", sort_keys, False, allow_nan
    )
    return encoder


_CURSOR_ENCODER = _c_encoder(ensure_ascii=True, sort_keys=True, allow_nan=True)


def encode_cursor(payload: dict[str, Any]) -> str:
    if _CURSOR_ENCODER is not None:
        raw = "".join(_CURSOR_ENCODER(payload, 0)).encode()
    else:
        raw = json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


MAX_BOUND = (1 << 64) - 1
"""The largest serial or time bound a query may give: serials are u64 parts of row keys."""


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
    # ``type(...) is int``: JSON true would pass as 1; serials are u64 key parts.
    serial = data.get("serial") if isinstance(data, dict) else None
    if type(serial) is not int or not 0 <= serial <= MAX_BOUND:
        raise _invalid("Invalid history cursor: malformed payload")
    version = data.get("version")
    if type(version) is not int or version != 1:
        raise _invalid(f"Unsupported history cursor version: {version}")
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
        # Bounds are u64 (the query checks them): a cursor on the last one leaves nothing.
        start_key = gen + keys.u64(lo) if lo <= MAX_BOUND else keys.prefix_end(gen)
        end_key = keys.prefix_end(gen) if hi is None or hi >= MAX_BOUND else gen + keys.u64(hi + 1)
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
    count = top - first + 1
    window = kv.scan_window(keys.HISTORY, gen + keys.u64(first), gen + keys.u64(top + 1), count)
    if len(window) != count:
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


def _scalar(value: Any, string: Callable[[str], str], other: Callable[[Any], str]) -> str:
    """``value`` as JSON: ``null``, ints and strings (by ``string``) directly, the rest by
    ``other``."""
    if value is None:
        return "null"
    kind = type(value)
    if kind is int:
        return int.__repr__(value)
    if kind is str:
        return string(value)
    return other(value)


def _json(value: Any) -> str:
    """``value`` as the response encoder writes it."""
    return _scalar(value, _json_str, _render_other)


def _render_other(value: Any) -> str:
    if value is True or value is False:
        return "true" if value else "false"
    return render_json(value).decode("utf-8")


def _cursor_json(value: Any) -> str:
    """``value`` as :func:`encode_cursor`'s ``json.dumps`` writes it (ASCII-only strings)."""
    return _scalar(value, _json_str_ascii, _dumps_sorted)


def _dumps_sorted(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


_json_str: Callable[[str], str] = json.encoder.encode_basestring
_json_str_ascii: Callable[[str], str] = json.encoder.encode_basestring_ascii

_CURSOR = (
    '{"app_id":%s,"bounds":{"end_serial":%s,"end_time_ms":%s,"start_serial":%s,'
    '"start_time_ms":%s},"channel":%s,"direction":%s,"serial":%s,"stream_id":%s,"version":1}'
)
"""The payload of :func:`encode_cursor` for a next page, keys sorted as ``sort_keys`` does."""

_ENVELOPE = (
    '"direction":%s,"limit":%s,"has_more":%s,"next_cursor":%s,"bounds":{"start_serial":%s,'
    '"end_serial":%s,"start_time_ms":%s,"end_time_ms":%s},"continuity":{"stream_id":%s,'
    '"oldest_available_serial":%s,"newest_available_serial":%s,'
    '"oldest_available_published_at_ms":%s,"newest_available_published_at_ms":%s,'
    '"retained_messages":%s,"retained_bytes":%s,"complete":%s,"truncated_by_retention":%s},'
    '"stream_state":%s}'
)
"""``render_json(_envelope(...))`` after its opening brace."""


def _envelope_json(app_id: str, channel: str, query: HistoryQuery, page: _Rows) -> bytes:
    """``render_json(_envelope(...))[1:]``, byte for byte, formatted instead of built as dicts
    and encoded: it is the same for every page but its numbers and a few strings."""
    head, has_more = page.head, page.has_more
    bounds = (query.start_serial, query.end_serial, query.start_time_ms, query.end_time_ms)
    stream_id = head.stream_id if head else None
    next_cursor = "null"
    if has_more and page.rows:
        payload = _CURSOR % (
            _cursor_json(app_id),
            _cursor_json(bounds[1]),
            _cursor_json(bounds[3]),
            _cursor_json(bounds[0]),
            _cursor_json(bounds[2]),
            _cursor_json(channel),
            _cursor_json(query.direction),
            _cursor_json(page.serial(page.rows[-1][0])),
            _cursor_json(stream_id),
        )
        cursor = base64.urlsafe_b64encode(payload.encode()).rstrip(b"=").decode()
        next_cursor = _json_str(cursor)
    truncated = _truncated_by_retention(head, query)
    text = _ENVELOPE % (
        _json(query.direction),
        _json(query.limit),
        _json(has_more),
        next_cursor,
        *map(_json, bounds),
        _json(stream_id),
        _json(head.oldest_serial if head else None),
        _json(head.newest_serial if head else None),
        _json(head.oldest_ts if head else None),
        _json(head.newest_ts if head else None),
        _json(head.retained_count if head else 0),
        _json(head.retained_bytes if head else 0),
        _json(not has_more and not truncated),
        _json(truncated),
        _json(page.state),
    )
    return text.encode("utf-8")


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
_RESPONSE_C_ENCODER = _c_encoder(ensure_ascii=False, sort_keys=False, allow_nan=False)


def render_json(value: Any) -> bytes:
    """``value`` as an HTTP JSON body, encoded exactly like Starlette's ``JSONResponse``."""
    if _RESPONSE_C_ENCODER is None or isinstance(value, str):
        return _RESPONSE_ENCODER.encode(value).encode("utf-8")
    return "".join(_RESPONSE_C_ENCODER(value, 0)).encode("utf-8")


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
    raws = list(map(_ROW_VALUE, page.rows))
    if _NO_ITEM not in map(_ITEM_LENGTH, raws):
        # Every row carries its item (the usual page): cut them out without a Python-level
        # step per row.
        items = list(map(_ITEM, raws))
    else:
        stream_id = page.head.stream_id if page.head else None
        items = []
        for key, raw in page.rows:
            item = stored_item(raw)
            items.append(
                item if item is not None else _round_trip(raw, stream_id, page.serial(key))
            )
    rest = _envelope_json(app_id, channel, query, page)
    if not items:
        return b'{"items":[],' + rest
    # The body is the one large allocation: the envelope's text rides on the items at either
    # end instead of being concatenated to the joined page (each concatenation copies it).
    items[0] = b'{"items":[' + items[0]
    items[-1] = items[-1] + b"]," + rest
    return b",".join(items)


# :class:`HistoryRow`'s layout (``u64 ‖ u64 ‖ u64 ‖ u32 item length ‖ item``), which
# :func:`stored_item` reads, as C getters over a page's rows; a test holds them to it.
_ROW_VALUE = itemgetter(1)
_ITEM_LENGTH = itemgetter(slice(24, 28))
_NO_ITEM = bytes(4)
_ITEM = itemgetter(slice(28, None))


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
