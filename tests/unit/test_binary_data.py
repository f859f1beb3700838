"""Binary client-event data (spec 02 §2.4, check 54): log flag, fold, stored rows, egress."""

from __future__ import annotations

import json
import uuid

import msgpack
import pytest
from starlette.responses import JSONResponse

from projections.folds.channel import ChannelState, RecordContext, fold
from projections.folds.state import Delivery, HistoryRow
from projections.reads.history import HistoryQuery, read_page, read_page_json
from projections.reads.recovery import delivery_of_row, newest_messages
from projections.store import keys
from projections.store.kv import MemoryKV
from sockudo.events.channel import MessagePublished, Origin
from sockudo.log.partitioning import partition_for
from sockudo.ws import wire
from sockudo.ws.egress import V1, v2
from sockudo.ws.session import encode_client_data

APP = "app"
CHANNEL = "private-bin"
RAW = b"\x00\xff"


def _publish(data: str, *, is_json: bool, binary: bool, **kw: object) -> MessagePublished:
    return MessagePublished(
        event_id=str(uuid.uuid4()),
        app_id=APP,
        channel=CHANNEL,
        origin=Origin(node="n1", socket_id="1.1"),
        message_id=str(uuid.uuid4()),
        name="client-x",
        data=data,
        data_is_json=is_json,
        client_event=True,
        data_is_binary=binary,
        **kw,  # type: ignore[arg-type]
    )


def _fold(kv: MemoryKV, *events: MessagePublished) -> list[Delivery]:
    state = ChannelState(kv)
    out: list[Delivery] = []
    prev: int | None = None
    for offset, ev in enumerate(events):
        ts = 1_000_000 + offset * 10
        result = fold(state, RecordContext("t", 0, offset, ts, prev, 1, partition_for), ev)
        out.extend(result.deliveries)
        prev = ts
    state.flush()
    return out


def _binary_event(**kw: object) -> MessagePublished:
    data, is_json = encode_client_data(RAW)
    assert (data, is_json) == ("[0,255]", True)
    return _publish(data, is_json=True, binary=True, **kw)


def _row(kv: MemoryKV, serial: int) -> HistoryRow:
    raw = kv.get(keys.HISTORY, keys.history_key(keys.channel_prefix(APP, CHANNEL), 1, serial))
    assert raw is not None
    return HistoryRow.decode(raw)


def test_fold_flags_the_delivery_and_marks_the_stored_row() -> None:
    kv = MemoryKV()
    (live,) = _fold(kv, _binary_event())
    assert live.data_is_binary
    assert (live.data, live.data_is_json) == ("[0,255]", True)
    message = _row(kv, 1).message
    assert message["data"] == [0, 255]
    assert message["data_encoding"] == "binary"
    stored = delivery_of_row(APP, CHANNEL, live.stream_id or "", 1, _row(kv, 1))
    assert stored.data_is_binary
    assert json.loads(stored.data) == [0, 255]


def test_non_binary_rows_have_no_marker_and_json_arrays_stay_json() -> None:
    kv = MemoryKV()
    deliveries = _fold(
        kv,
        _publish("[0,255]", is_json=True, binary=False),
        _publish("text", is_json=False, binary=False),
    )
    assert [d.data_is_binary for d in deliveries] == [False, False]
    for serial in (1, 2):
        message = _row(kv, serial).message
        assert "data_encoding" not in message
        assert not delivery_of_row(APP, CHANNEL, "s", serial, _row(kv, serial)).data_is_binary


def test_rewind_read_keeps_binary() -> None:
    kv = MemoryKV()
    _fold(kv, _binary_event(), _publish("plain", is_json=False, binary=False))
    newest = newest_messages(kv, APP, CHANNEL, limit=10, since_ms=None, scan_limit=100)
    assert [d.data_is_binary for d in newest.deliveries] == [True, False]
    frame = v2("msgpack").message(newest.deliveries[0])
    assert isinstance(frame, bytes)
    assert msgpack.unpackb(frame)[2] == ["binary", RAW]


@pytest.mark.parametrize("direction", ["newest_first", "oldest_first"])
def test_http_history_page_carries_the_int_array_and_the_marker(direction: str) -> None:
    kv = MemoryKV()
    _fold(
        kv,
        _publish("a", is_json=False, binary=False),
        _binary_event(extras_json='{"echo":false}'),
        _publish("b", is_json=False, binary=False),
    )
    query = HistoryQuery(limit=10, direction=direction)
    fast = read_page_json(kv, APP, CHANNEL, query, stall=None, node_id="n")
    slow = read_page(kv, APP, CHANNEL, query, stall=None, node_id="n")
    assert fast == bytes(JSONResponse(slow).body)
    binary = [i["message"] for i in json.loads(fast)["items"] if i["message"]["data"] != "a"]
    binary = [m for m in binary if m["data"] != "b"]
    assert binary == [
        {
            "event": "client-x",
            "channel": CHANNEL,
            "data": [0, 255],
            "message_id": binary[0]["message_id"],
            "stream_id": binary[0]["stream_id"],
            "serial": 2,
            "extras": {"echo": False},
            "data_encoding": "binary",
        }
    ]


def _delivery(binary: bool) -> Delivery:
    return Delivery(
        app_id=APP,
        channel=CHANNEL,
        event="client-x",
        data="[0,255]",
        data_is_json=True,
        message_id="m1",
        stream_id="s1",
        serial=1,
        history_serial=1,
        published_at_ms=1,
        exclude_socket_id=None,
        user_id=None,
        client_event=True,
        extras_json=None,
        tags=None,
        data_is_binary=binary,
    )


def test_msgpack_egress_sends_binary_kind() -> None:
    frame = v2("msgpack").message(_delivery(True))
    assert isinstance(frame, bytes)
    assert msgpack.unpackb(frame)[2] == ["binary", RAW]
    assert wire.decode(frame, "msgpack").data == wire.Data("binary", RAW)
    # The same int array published as JSON stays a JSON value.
    plain = v2("msgpack").message(_delivery(False))
    assert msgpack.unpackb(plain)[2] == ["json", "[0,255]"]


def test_protobuf_egress_sends_binary_value() -> None:
    frame = v2("protobuf").message(_delivery(True))
    assert isinstance(frame, bytes)
    assert b"\x22\x02" + RAW in frame  # Data.binary_value (field 4, length-delimited)
    assert wire.decode(frame, "protobuf").data == wire.Data("binary", RAW)
    plain = wire.decode(v2("protobuf").message(_delivery(False)), "protobuf")
    assert plain.data == wire.Data("json", "[0,255]")


def test_json_egress_sends_the_int_array() -> None:
    frame = v2("json").message(_delivery(True))
    assert isinstance(frame, str)
    assert json.loads(frame)["data"] == [0, 255]
    assert frame == v2("json").message(_delivery(False))


def test_v1_egress_sends_the_int_array_as_before() -> None:
    frame = V1.message(_delivery(True))
    assert isinstance(frame, str)
    assert json.loads(frame)["data"] == [0, 255]
    assert frame == V1.message(_delivery(False))
