"""The fold's hand-written encoders give exactly the bytes of the generic ones they replace."""

from __future__ import annotations

import json
import random
import struct
from typing import Any

import pytest

from projections.folds.channel import _message_json
from projections.folds.state import (
    Delivery,
    Outcome,
    StreamHead,
    dumps,
    new_delivery,
    new_outcome,
)
from projections.store import keys
from sockudo.events.channel import MessagePublished, Origin
from sockudo.fastclass import fast_constructor

_REFERENCE = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
_TEXT = [
    "",
    "a",
    "room-1",
    'q"uote\\back',
    "tab\tnl\n\x00\x1f",
    "é✓中😀",
    "\u2028\u2029",
    "x" * 300,
]


def _reference_outcome(o: Outcome) -> bytes:
    out: dict[str, Any] = {"kind": o.kind}
    for name in (
        "app_id",
        "channel",
        "message_id",
        "stream_id",
        "delivery_serial",
        "history_serial",
        "published_at_ms",
        "duplicate_of",
    ):
        value = getattr(o, name)
        if value is not None:
            out[name] = value
    if o.details:
        out["details"] = o.details
    return _REFERENCE.encode(out).encode()


def test_outcome_encode_is_the_dict_encoding() -> None:
    rng = random.Random(7)
    ints = [None, 0, 1, 2**63 - 1, 1_700_000_000_000]
    for _ in range(500):
        o = Outcome(
            kind=rng.choice(["applied", "duplicate", "reset", *_TEXT]),
            app_id=rng.choice([None, *_TEXT]),
            channel=rng.choice([None, *_TEXT]),
            message_id=rng.choice([None, *_TEXT]),
            stream_id=rng.choice([None, *_TEXT]),
            delivery_serial=rng.choice(ints),
            history_serial=rng.choice(ints),
            published_at_ms=rng.choice(ints),
            duplicate_of=rng.choice(ints),
            details=rng.choice([{}, {"a": 1}, {"previous_stream_id": None, "n": [1, "é"]}]),
        )
        assert o.encode() == _reference_outcome(o)
        assert Outcome.decode(o.encode()) == o
    # The applied-publish shortcut, with and without a history serial.
    for text in _TEXT:
        for h in (None, 0, 7):
            o = Outcome("applied", text, text, text, text, 3, h, 1_700_000_000_000)
            assert o.encode() == _reference_outcome(o)


@pytest.mark.parametrize(
    "obj",
    [
        {"a": 1, "b": [1, 2.5, None, True, False], "c": {"d": "é\n"}},
        [1, "x", {"k": -0.0}],
        {"f": float("inf"), "g": 1e300, "h": 0.1},
        {"event": "x", "data": {"nested": ["😀", "\u2028"]}, "serial": 12},
        "plain string",
        12,
    ],
)
def test_dumps_is_the_json_encoder(obj: Any) -> None:
    assert dumps(obj) == _REFERENCE.encode(obj).encode()


def test_fast_constructors_build_equal_objects() -> None:
    kwargs: dict[str, Any] = {
        "kind": "applied",
        "app_id": "a",
        "channel": "c",
        "message_id": "m",
        "stream_id": "s",
        "delivery_serial": 1,
        "history_serial": 2,
        "published_at_ms": 3,
        "duplicate_of": None,
        "details": {},
    }
    assert new_outcome(*kwargs.values()) == Outcome(**kwargs)
    d: dict[str, Any] = {
        "app_id": "a",
        "channel": "c",
        "event": "e",
        "data": "d",
        "data_is_json": False,
        "message_id": "m",
        "stream_id": None,
        "serial": None,
        "history_serial": None,
        "published_at_ms": 1,
        "exclude_socket_id": None,
        "user_id": None,
        "client_event": False,
        "extras_json": None,
        "tags": None,
        "kind": "message",
        "data_is_binary": False,
    }
    assert new_delivery(*d.values()) == Delivery(**d)
    assert fast_constructor(Outcome) is not new_outcome


def test_key_layouts_are_unchanged() -> None:
    ck = keys.channel_prefix("app-é", "room-1")
    assert ck == "app-é".encode() + b"\x00" + b"room-1" + b"\x00"
    assert keys.history_key(ck, 3, 9) == ck + (3).to_bytes(4, "big") + (9).to_bytes(8, "big")


def _reference_head(head: StreamHead) -> bytes:
    def opt(n: int | None) -> int:
        return -1 if n is None else n

    def pack_str(s: str | None) -> bytes:
        if s is None:
            return struct.pack(">H", 0xFFFF)
        b = s.encode()
        return struct.pack(">H", len(b)) + b

    return (
        struct.pack(
            ">I12q",
            head.generation,
            head.next_h,
            head.next_d,
            opt(head.last_transition_at_ms),
            opt(head.evicted_through_serial),
            opt(head.evicted_through_time_ms),
            head.retained_count,
            head.retained_bytes,
            opt(head.oldest_serial),
            opt(head.oldest_ts),
            opt(head.newest_serial),
            opt(head.newest_ts),
            0,
        )
        + pack_str(head.stream_id)
        + pack_str(head.durable_state)
        + pack_str(head.reason)
    )


@pytest.mark.parametrize(
    "head",
    [
        StreamHead(stream_id="s", generation=1),
        StreamHead(
            stream_id="0c6f2a52-ü",
            generation=3,
            next_h=9,
            next_d=12,
            durable_state="degraded",
            reason="why ✓",
            last_transition_at_ms=5,
            evicted_through_serial=2,
            evicted_through_time_ms=4,
            retained_count=6,
            retained_bytes=700,
            oldest_serial=3,
            oldest_ts=8,
            newest_serial=8,
            newest_ts=10,
        ),
    ],
)
def test_stream_head_bytes_are_unchanged(head: StreamHead) -> None:
    assert head.encode() == _reference_head(head)


def _reference_message_json(ev: MessagePublished, stream_id: str, serial: int) -> bytes:
    message: dict[str, object] = {
        "event": ev.name,
        "channel": ev.channel,
        "data": json.loads(ev.data) if ev.data_is_json else ev.data,
        "message_id": ev.message_id,
        "stream_id": stream_id,
        "serial": serial,
    }
    if ev.client_event and ev.origin.user_id is not None:
        message["user_id"] = ev.origin.user_id
    if ev.tags:
        message["tags"] = dict(ev.tags)
    if ev.extras_json is not None:
        message["extras"] = json.loads(ev.extras_json)
    return _REFERENCE.encode(message).encode()


_JSON_DATA = [
    '{"text": "hello", "n": [1, 2.50, -0.0, 1e400, null, true]}',
    '"just a string with \\u00e9 and \\ud83d\\ude00"',
    "12345678901234567890123",
    "3.14159",
    "NaN",
    '{"nested": {"deep": ["\\u2028", {"x": {}}]}, "empty": []}',
    "null",
]


def test_history_message_bytes_are_the_dict_encoding() -> None:
    rng = random.Random(11)
    for i in range(400):
        is_json = rng.random() < 0.5
        ev = MessagePublished(
            event_id=f"e{i}",
            app_id="app",
            channel=rng.choice(_TEXT[1:]),
            origin=Origin("n", user_id=rng.choice([None, "u-é", 'q"'])),
            message_id=rng.choice(_TEXT),
            name=rng.choice(_TEXT),
            data=rng.choice(_JSON_DATA) if is_json else rng.choice(_TEXT),
            data_is_json=is_json,
            extras_json=rng.choice([None, "{}", '{"headers": {"a": 1.0}, "echo": false}']),
            tags=rng.choice([None, {}, {"k": "v", "é": "✓"}]),
            client_event=rng.random() < 0.5,
        )
        stream_id = rng.choice(["s-1", "0c6f2a52-8a1e-4c61-9f3e-5b1d2f7a9e10"])
        serial = rng.choice([1, 2**40])
        assert _message_json(ev, stream_id, serial) == _reference_message_json(
            ev, stream_id, serial
        )
