"""The shared cache of replayed frames: the bytes each socket got before, and bounded."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest

from projections.folds.state import Delivery
from sockudo.ws import egress as egress_mod
from sockudo.ws.egress import V1, ReplayFrames, v2
from sockudo.ws.framing import encode_frame, payload_length


def delivery(serial: int | None, **over: Any) -> Delivery:
    fields: dict[str, Any] = {
        "app_id": "app",
        "channel": "room",
        "event": "e",
        "data": json.dumps({"n": serial, "text": "héllo"}),
        "data_is_json": False,
        "message_id": f"m{serial}",
        "stream_id": "s1",
        "serial": serial,
        "history_serial": serial,
        "published_at_ms": 1_000_000,
        "exclude_socket_id": None,
        "user_id": None,
        "client_event": False,
        "extras_json": json.dumps({"headers": {"k": "v"}}),
        "tags": {"t": "1"},
    }
    fields.update(over)
    return Delivery(**fields)


EGRESSES = [V1, v2("json"), v2("msgpack"), v2("protobuf")]


@pytest.mark.parametrize("egress", EGRESSES, ids=lambda e: e.key)
def test_a_hit_is_exactly_what_the_egress_builds(egress: Any) -> None:
    cache = ReplayFrames()
    d = delivery(7)
    first = cache.get(egress, d)
    again = cache.get(egress, replace(d))  # the durable tier's copy of the same message
    assert again is first
    frame, wire, size = first
    assert frame == egress.message(d)
    assert wire == encode_frame(egress.message(d))
    assert size == payload_length(wire)


def test_each_protocol_and_format_has_its_own_frame() -> None:
    cache = ReplayFrames()
    d = delivery(3)
    frames = [cache.get(e, d)[0] for e in EGRESSES]
    assert frames == [e.message(d) for e in EGRESSES]
    assert len(cache) == len(EGRESSES)


def test_messages_differ_by_position_and_id() -> None:
    cache = ReplayFrames()
    base = delivery(5)
    others = [
        replace(base, serial=6),
        replace(base, stream_id="s2"),  # a new generation reuses serials
        replace(base, message_id="other"),
        replace(base, channel="lobby"),
        replace(base, app_id="app2"),
    ]
    json_v2 = v2("json")
    assert cache.get(json_v2, base)[0] == json_v2.message(base)
    for d in others:
        assert cache.get(json_v2, d)[0] == json_v2.message(d)
    assert len(cache) == 1 + len(others)


def test_ephemeral_messages_are_encoded_but_not_kept() -> None:
    cache = ReplayFrames()
    d = delivery(None)
    frame, wire, _ = cache.get(v2("json"), d)
    assert frame == v2("json").message(d)
    assert wire == encode_frame(frame)
    assert len(cache) == 0
    assert cache.bytes == 0


def test_bounded_by_entries_oldest_first() -> None:
    cache = ReplayFrames(max_entries=3)
    json_v2 = v2("json")
    for serial in range(1, 6):
        cache.get(json_v2, delivery(serial))
    assert len(cache) == 3
    assert sorted(key[4] for key in cache._entries) == [3, 4, 5]
    kept = cache.get(json_v2, delivery(5))
    assert len(cache) == 3
    assert kept[0] == json_v2.message(delivery(5))
    assert cache.bytes == sum(len(w) for _, w, _ in cache._entries.values())


def test_bounded_by_bytes() -> None:
    json_v2 = v2("json")
    one = len(cache_wire(json_v2, delivery(1)))
    cache = ReplayFrames(max_bytes=one * 2 + one // 2)
    for serial in range(1, 10):
        cache.get(json_v2, delivery(serial))
    assert len(cache) == 2
    assert cache.bytes <= cache.max_bytes
    # A single frame larger than the bound is still served (and is all that is kept).
    big = delivery(99, data="x" * (one * 4))
    assert cache.get(json_v2, big)[0] == json_v2.message(big)
    assert len(cache) == 1


def cache_wire(egress: Any, d: Delivery) -> bytes:
    return encode_frame(egress.message(d))


def test_the_node_shares_one_cache() -> None:
    assert isinstance(egress_mod.REPLAY_FRAMES, ReplayFrames)
