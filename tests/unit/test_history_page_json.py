"""HTTP history pages rendered from stored rows equal the decoded page, byte for byte."""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from typing import Any

import pytest
from starlette.responses import JSONResponse

from projections.folds.channel import ChannelState, RecordContext, fold
from projections.folds.state import HistoryRow, stored_item
from projections.reads import history
from projections.reads.history import HistoryQuery, read_page, read_page_json, render_json
from projections.store import keys
from projections.store.kv import MemoryKV
from sockudo.events.channel import (
    ChannelEvent,
    HistoryPurged,
    MessagePublished,
    Origin,
    Retention,
)
from sockudo.log.partitioning import partition_for

APP = "app"
CHANNEL = "chat"
ORIGIN = Origin(node="n1")


def publish(n: int, channel: str = CHANNEL, **kw: Any) -> MessagePublished:
    base: dict[str, Any] = {
        "event_id": str(uuid.uuid4()),
        "app_id": APP,
        "channel": channel,
        "origin": ORIGIN,
        "message_id": str(uuid.uuid4()),
        "name": "tick",
        "data": json.dumps({"i": n, "pad": "x" * 20}),
    }
    base.update(kw)
    return MessagePublished(**base)


def fold_all(kv: MemoryKV, events: Sequence[ChannelEvent], start_ts: int = 1_000_000) -> None:
    state = ChannelState(kv)
    prev: int | None = None
    for offset, ev in enumerate(events):
        ts = start_ts + offset * 10
        fold(state, RecordContext("t", 0, offset, ts, prev, 1, partition_for), ev)
        prev = ts
    state.flush()


def pages(kv: MemoryKV, query: HistoryQuery, channel: str = CHANNEL) -> tuple[bytes, bytes]:
    """``(fast body, JSONResponse body of the decoded page)`` of one query."""
    fast = read_page_json(kv, APP, channel, query, stall=None, node_id="n")
    decoded = read_page(kv, APP, channel, query, stall=None, node_id="n")
    return fast, bytes(JSONResponse(decoded).body)


def walk(kv: MemoryKV, query: HistoryQuery, channel: str = CHANNEL) -> int:
    """Follow the cursor through every page, checking each; returns the number of items."""
    total = 0
    while True:
        fast, slow = pages(kv, query, channel)
        assert fast == slow
        page = json.loads(fast)
        total += len(page["items"])
        if page["next_cursor"] is None:
            return total
        query = HistoryQuery(
            limit=query.limit,
            direction=query.direction,
            cursor=page["next_cursor"],
            start_serial=query.start_serial,
            end_serial=query.end_serial,
            start_time_ms=query.start_time_ms,
            end_time_ms=query.end_time_ms,
        )


class _Counting:
    """Counts rows rendered by the decode/encode round trip instead of their stored item."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        original = history._round_trip

        def counted(raw: bytes, stream_id: str | None, serial: int) -> bytes:
            self.calls += 1
            return original(raw, stream_id, serial)

        monkeypatch.setattr(history, "_round_trip", counted)


@pytest.fixture
def round_trips(monkeypatch: pytest.MonkeyPatch) -> _Counting:
    return _Counting(monkeypatch)


def test_folded_rows_render_from_their_stored_items(round_trips: _Counting) -> None:
    kv = MemoryKV()
    fold_all(kv, [publish(i) for i in range(250)])
    for direction in ("newest_first", "oldest_first"):
        assert walk(kv, HistoryQuery(limit=100, direction=direction)) == 250
        assert walk(kv, HistoryQuery(limit=7, direction=direction)) == 250
    assert round_trips.calls == 0


def test_bounds_time_windows_and_retention_pages_are_identical(round_trips: _Counting) -> None:
    kv = MemoryKV()
    events: list[ChannelEvent] = [publish(i, retention=Retention(max_count=40)) for i in range(60)]
    fold_all(kv, events)
    for direction in ("newest_first", "oldest_first"):
        assert walk(kv, HistoryQuery(limit=10, direction=direction)) == 40
        assert walk(kv, HistoryQuery(limit=10, direction=direction, start_serial=30)) == 31
        assert (
            walk(kv, HistoryQuery(limit=4, direction=direction, start_serial=25, end_serial=35))
            == 11
        )
        # Records are 10 ms apart from 1_000_000: serial s was published at 999_990 + 10 s.
        window = HistoryQuery(
            limit=3, direction=direction, start_time_ms=1_000_300, end_time_ms=1_000_400
        )
        assert walk(kv, window) == 11
    assert round_trips.calls == 0


def test_empty_unknown_and_purged_channels() -> None:
    kv = MemoryKV()
    fast, slow = pages(kv, HistoryQuery(limit=10), channel="nothing-here")
    assert fast == slow
    assert json.loads(fast)["items"] == []
    fold_all(
        kv,
        [
            publish(0),
            publish(1),
            HistoryPurged(
                event_id=str(uuid.uuid4()),
                app_id=APP,
                channel=CHANNEL,
                origin=ORIGIN,
                mode="all",
                reason="test",
            ),
        ],
    )
    fast, slow = pages(kv, HistoryQuery(limit=10))
    assert fast == slow
    assert json.loads(fast)["items"] == []


@pytest.mark.parametrize(
    "kw",
    [
        {"data": 'quotes " and \\ backslashes, "message_id":"forged","stream_id":"x"'},
        {"data": "unicode ü € 😀 \u2028 and control \x01\n\t"},
        {"data": '{"message_id":"nested","stream_id":"s","serial":1}', "data_is_json": True},
        {"data": '[1,2.5,-0.0,1e+300,"x",null,true,{"a":{}}]', "data_is_json": True},
        {"data": "null", "data_is_json": True},
        {"data": "12", "data_is_json": True},
        {"data": ""},
        {"name": 'ev"ent\\name'},
        {"name": "évènement ✓"},
        {"name": ""},
        {"message_id": 'id with "quotes"'},
        {"message_id": ""},
        {"message_id": "ü-ünicode"},
        {"channel": 'odd"channel\\name'},
        {"tags": {"message_id": "tag", "k": "v"}},
        {"extras_json": '{"headers":{"a":1},"echo":false,"serial":3}'},
        {"client_event": True, "origin": Origin(node="n1", socket_id="1.2", user_id="u-1")},
    ],
    ids=lambda kw: ",".join(kw),
)
def test_every_message_shape_renders_like_the_decoded_page(kw: dict[str, Any]) -> None:
    channel = kw.get("channel", CHANNEL)
    kv = MemoryKV()
    events: list[ChannelEvent] = [publish(0, channel=channel), publish(1, **kw)]
    events += [publish(i, channel=channel) for i in range(2, 5)]
    fold_all(kv, events)
    for direction in ("newest_first", "oldest_first"):
        assert walk(kv, HistoryQuery(limit=2, direction=direction), channel=channel) == 5
        assert walk(kv, HistoryQuery(limit=100, direction=direction), channel=channel) == 5


def _row(message: bytes, ts: int = 5, offset: int = 1, d: int = 1) -> bytes:
    return HistoryRow(message, ts, offset, d).encode()


_S = b'"message_id":"m","stream_id":"S","serial":1}'


@pytest.mark.parametrize(
    "message",
    [
        # data that is not a string may hold anything, even a forged tail
        b'{"event":"e","channel":"chat","data":{"x":"\\",\\"message_id\\":\\"f\\""},' + _S,
        b'{"event":"e","channel":"chat","data":{"message_id":"f","stream_id":"S"},' + _S,
        # a member between message_id and stream_id (not the fold's layout)
        (
            b'{"event":"e","channel":"chat","data":"d","message_id":"m","o":"p","stream_id":"S",'
            b'"serial":1}'
        ),
        # a message_id that is not a plain string, or none at all
        (b'{"event":"e","channel":"chat","data":"d","message_id":7,"stream_id":"S","serial":1}'),
        (b'{"event":"e","channel":"chat","data":"d","message_id":null,"stream_id":"S","serial":1}'),
        (
            b'{"event":"e","channel":"chat","data":"d","message_id":"a\\"b","stream_id":"S",'
            b'"serial":1}'
        ),
        b'{"event":"e","channel":"chat","data":"d","stream_id":"S","serial":1}',
        # the tail names another stream or serial, or more members follow it
        (b'{"event":"e","channel":"chat","data":"d","message_id":"m","stream_id":"T","serial":1}'),
        (b'{"event":"e","channel":"chat","data":"d","message_id":"m","stream_id":"S","serial":2}'),
        b'{"event":"e","channel":"chat","data":"d",' + _S[:-1] + b',"user_id":"u"}',
        # another channel, another first member, an escaped event name
        b'{"event":"e","channel":"other","data":"d",' + _S,
        b'{"channel":"chat","event":"e","data":"d",' + _S,
        b'{"event":"\\u00e9","channel":"chat","data":"d",' + _S,
        # the fold's plain layout
        b'{"event":"e","channel":"chat","data":"d",' + _S,
        b'{"event":"e","channel":"chat","data":"a\\"b,\\"message_id\\":\\"x\\"",' + _S,
        (b'{"event":"","channel":"chat","data":"","message_id":"","stream_id":"S","serial":1}'),
    ],
)
def test_rows_without_a_stored_item_render_like_their_decoded_message(
    message: bytes, round_trips: _Counting
) -> None:
    kv = MemoryKV()
    fold_all(kv, [publish(0)])  # a head for the channel; its row is replaced below
    head = history.read_head(kv, APP, CHANNEL)
    assert head is not None
    message = message.replace(b'"S"', render_json(head.stream_id))
    ck = keys.channel_prefix(APP, CHANNEL)
    kv.put(keys.HISTORY, keys.history_key(ck, head.generation, 1), _row(message))
    fast, slow = pages(kv, HistoryQuery(limit=10))
    assert fast == slow
    decoded = json.loads(message)
    assert json.loads(fast)["items"] == [
        {
            "stream_id": head.stream_id,
            "serial": 1,
            "published_at_ms": 5,
            "message_id": decoded.get("message_id"),
            "event_name": decoded.get("event"),
            "operation_kind": "append",
            "payload_size_bytes": len(message),
            "message": decoded,
        }
    ]
    # A row without its page item (written by hand here) always takes the round trip.
    assert round_trips.calls == 1


def test_a_non_finite_number_is_refused_like_the_decoded_page() -> None:
    kv = MemoryKV()
    fold_all(kv, [publish(0)])
    head = history.read_head(kv, APP, CHANNEL)
    assert head is not None
    message = (
        b'{"event":"e","channel":"chat","data":{"n":NaN},"message_id":"m","stream_id":'
        + render_json(head.stream_id)
        + b',"serial":1}'
    )
    ck = keys.channel_prefix(APP, CHANNEL)
    kv.put(keys.HISTORY, keys.history_key(ck, head.generation, 1), _row(message))
    with pytest.raises(ValueError, match="JSON compliant"):
        JSONResponse(read_page(kv, APP, CHANNEL, HistoryQuery(limit=10), stall=None, node_id="n"))
    with pytest.raises(ValueError, match="JSON compliant"):
        read_page_json(kv, APP, CHANNEL, HistoryQuery(limit=10), stall=None, node_id="n")


def test_a_folded_non_finite_number_keeps_no_item_and_is_refused(round_trips: _Counting) -> None:
    # Python's JSON parser takes NaN; the fold stores it, but no page item the response would
    # refuse: reading it fails as the decoded page does, through the round trip.
    kv = MemoryKV()
    fold_all(kv, [publish(0, data='{"n":NaN}', data_is_json=True)])
    with pytest.raises(ValueError, match="JSON compliant"):
        read_page_json(kv, APP, CHANNEL, HistoryQuery(limit=10), stall=None, node_id="n")
    assert round_trips.calls == 1


def test_history_rows_round_trip_with_and_without_their_item() -> None:
    message = b'{"event":"e","data":"d"}'
    for prefix in (b"", b'{"stream_id":"s","message":'):
        row = HistoryRow(message, 7, 8, 9, prefix)
        raw = row.encode()
        assert HistoryRow.decode(raw) == row
        assert HistoryRow.decode(raw).size == len(message)
        assert stored_item(raw) == (prefix + message + b"}" if prefix else None)


@pytest.mark.parametrize("missing", [None, 8, 10, 3])
def test_newest_first_pages_read_forwards_match_a_backward_scan(missing: int | None) -> None:
    # Pages are read as a forward window below the top when its serials are all there; a
    # gap (a row deleted under the page) falls back to scanning backwards. Same rows either way.
    kv = MemoryKV()
    fold_all(kv, [publish(i) for i in range(12)])
    head = history.read_head(kv, APP, CHANNEL)
    assert head is not None
    ck = keys.channel_prefix(APP, CHANNEL)
    if missing is not None:
        kv.delete(keys.HISTORY, keys.history_key(ck, head.generation, missing))
    gen = keys.history_gen_prefix(ck, head.generation)
    expected = [
        keys.read_u64(k, len(gen))
        for k, _ in kv.scan(keys.HISTORY, gen, keys.prefix_end(gen), reverse=True)
    ]
    serials: list[int] = []
    cursor = None
    while True:
        page = json.loads(
            read_page_json(
                kv, APP, CHANNEL, HistoryQuery(limit=4, cursor=cursor), stall=None, node_id="n"
            )
        )
        serials += [item["serial"] for item in page["items"]]
        cursor = page["next_cursor"]
        if not page["has_more"]:
            break
    assert serials == expected
    assert len(serials) == (12 if missing is None else 11)
