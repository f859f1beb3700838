"""V2-only subscription targets (spec 02 §5.8): wildcard patterns and ``[meta]`` channels.

Name rules, the session's replies, the hub's indexes and fanout's delivery, without sockets.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from projections.folds.state import MEMBER_ADDED, MEMBER_REMOVED, MEMBER_UPDATED, Delivery
from sockudo.auth import sign_channel_auth
from sockudo.channels import (
    ChannelPattern,
    InvalidChannelName,
    is_v2_only_target,
    validate_channel_name,
    validate_meta_channel,
    validate_pattern,
)
from sockudo.config import AppConfig
from sockudo.node.fanout import Fanout
from sockudo.node.hub import PATTERN_CACHE_CHANNELS, Hub, Outbox
from sockudo.ws import wire
from sockudo.ws.egress import V1
from sockudo.ws.egress import v2 as v2_egress
from sockudo.ws.framing import encode_frame
from sockudo.ws.session import Reply, Session

APP = AppConfig(id="app-id", key="app-key", secret="app-secret")
SID = "123.456"


def delivery(channel: str = "orders", **kw: Any) -> Delivery:
    fields: dict[str, Any] = {
        "app_id": APP.id,
        "channel": channel,
        "event": "order.created",
        "data": '{"id":1}',
        "data_is_json": False,
        "message_id": "m1",
        "stream_id": "s1",
        "serial": 7,
        "history_serial": 7,
        "published_at_ms": 1,
        "exclude_socket_id": None,
        "user_id": None,
        "client_event": False,
        "extras_json": None,
        "tags": None,
    }
    fields.update(kw)
    return Delivery(**fields)


# --- names -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "prefix", "suffix"),
    [("orders-*", "orders-", ""), ("*-eu", "", "-eu"), ("a*z", "a", "z"), ("*", "", "")],
)
def test_valid_patterns_split_at_the_star(pattern: str, prefix: str, suffix: str) -> None:
    assert validate_pattern(pattern, APP) == ChannelPattern(pattern, prefix, suffix)


@pytest.mark.parametrize(
    "pattern",
    [
        "a**",  # two stars
        "a*b*",
        "room#*",  # no `#`
        "a,b*",  # `,` and `;` are channel characters, not pattern characters
        "a;*",
        "a b*",
        "private-*",  # public channels only
        "private-encrypted-x*",
        "presence-room*",
        "x" * 200 + "*",  # over max_channel_name_length
    ],
)
def test_invalid_patterns(pattern: str) -> None:
    with pytest.raises(InvalidChannelName):
        validate_pattern(pattern, APP)


def test_a_pattern_matches_public_channels_only() -> None:
    anything = ChannelPattern.parse("*")
    assert anything.matches("orders")
    assert anything.matches("cache-prices")
    for channel in ("private-a", "private-encrypted-a", "presence-a", "#server-to-user-u1"):
        assert not anything.matches(channel)
    infix = ChannelPattern.parse("ab*ba")
    assert infix.matches("abba")
    assert infix.matches("ab-x-ba")
    assert not infix.matches("aba")  # prefix and suffix may not overlap
    assert not infix.matches("abb")


def test_targets_are_never_channels() -> None:
    # Neither form is a channel name, so HTTP publish and V1 cannot reach them by accident.
    for name in ("orders*", "[meta]orders"):
        assert is_v2_only_target(name)
        with pytest.raises(InvalidChannelName):
            validate_channel_name(name, APP)
    assert not is_v2_only_target("orders")


def test_meta_channel_names() -> None:
    assert validate_meta_channel("[meta]presence-room", APP).is_presence
    assert validate_meta_channel("[meta]orders", APP).name == "orders"
    for bad in ("[meta]", "[meta]a*", "[meta][meta]x", "[meta]#server-to-user-u1"):
        with pytest.raises(InvalidChannelName):
            validate_meta_channel(bad, APP)


# --- session ---------------------------------------------------------------------------------


def v2_session() -> Session:
    return Session(SID, APP, activity_timeout=120, now=0.0, out=v2_egress("json"))


def sub(channel: str, **extra: Any) -> str:
    return json.dumps({"event": "sockudo:subscribe", "data": {"channel": channel, **extra}})


def error_of(reply: Reply, prefix: str = "sockudo") -> tuple[int, str | None]:
    [raw] = reply.frames
    assert isinstance(raw, str)
    frame = json.loads(raw)
    assert frame["event"] == f"{prefix}:error", frame
    assert reply.join is None
    assert reply.effects == []
    return frame["data"]["code"], frame.get("channel")


@pytest.mark.parametrize("name", ["orders-*", "[meta]orders"])
def test_v1_gets_4300_for_v2_only_targets(name: str) -> None:
    s = Session(SID, APP, activity_timeout=120, now=0.0, out=V1)
    reply = s.handle(json.dumps({"event": "pusher:subscribe", "data": {"channel": name}}), 1.0)
    assert error_of(reply, "pusher") == (4300, name)
    assert s.channels == set()


def test_v2_pattern_subscribe_joins_without_a_stream_position() -> None:
    s = v2_session()
    reply = s.handle(sub("orders-*", auth="", filter={"events": ["a"]}), 1.0)
    [raw] = reply.frames
    assert isinstance(raw, str)
    # No serial/stream_id: the pattern has no stream a client could record a position for.
    assert json.loads(raw) == {
        "event": "sockudo_internal:subscription_succeeded",
        "channel": "orders-*",
        "data": "{}",
    }
    assert reply.join == "orders-*"
    assert reply.effects == []  # no Attach: nothing to capture or rewind
    assert "orders-*" in s.predicates
    assert "orders-*" not in s.attached
    # A repeated subscribe answers again and replaces the predicate, without a second join.
    again = s.handle(sub("orders-*"), 2.0)
    assert again.join is None
    assert len(again.frames) == 1
    assert "orders-*" not in s.predicates
    left = s.handle(
        json.dumps({"event": "sockudo:unsubscribe", "data": {"channel": "orders-*"}}), 3
    )
    assert left.leave == "orders-*"
    assert s.channels == set()


@pytest.mark.parametrize(
    ("extra", "code"),
    [
        ({"rewind": 5}, 4300),  # no rewind on a pattern
        ({"rewind": {"seconds": 30}}, 4300),
        ({"rewind": 0}, 4000),  # a malformed rewind is 4000 first (spec 02 §5.2 order)
        ({"modes": "SUBSCRIBE"}, 4000),
        ({"modes": ["ANNOTATION_SUBSCRIBE"]}, 4300),
        ({"filter": {"events": "x"}}, 4000),
        ({"tags_filter": {"op": "nope", "nodes": []}}, 4000),
    ],
)
@pytest.mark.parametrize("name", ["orders-*", "[meta]orders"])
def test_target_option_errors(name: str, extra: dict[str, Any], code: int) -> None:
    s = v2_session()
    assert error_of(s.handle(sub(name, **extra), 1.0)) == (code, name)
    assert s.channels == set()


@pytest.mark.parametrize("name", ["a**", "private-*", "x#*", "[meta]bad name", "[meta]x*"])
def test_invalid_v2_targets_are_4300(name: str) -> None:
    assert error_of(v2_session().handle(sub(name), 1.0)) == (4300, name)


def test_meta_of_a_private_channel_needs_the_signature_of_the_meta_name() -> None:
    s = v2_session()
    name = "[meta]presence-room"
    assert error_of(s.handle(sub(name), 1.0)) == (4009, name)
    wrong = sign_channel_auth("app-key", "app-secret", SID, "presence-room")
    assert error_of(s.handle(sub(name, auth=wrong), 1.0)) == (4009, name)
    right = sign_channel_auth("app-key", "app-secret", SID, name)
    reply = s.handle(sub(name, auth=right), 1.0)
    assert reply.join == name
    assert json.loads(reply.frames[0])["event"] == "sockudo_internal:subscription_succeeded"
    # A public channel's meta needs no auth; filters never apply to meta frames.
    public = s.handle(sub("[meta]orders", filter={"events": ["x"]}), 1.0)
    assert public.join == "[meta]orders"
    assert "[meta]orders" not in s.predicates


def test_no_history_or_recovery_position_on_a_target() -> None:
    s = v2_session()
    s.handle(sub("orders-*"), 1.0)
    history = json.dumps({"event": "sockudo:channel_history", "data": {"channel": "orders-*"}})
    assert error_of(s.handle(history, 2.0)) == (4300, "orders-*")


# --- hub -------------------------------------------------------------------------------------


def hub_with(*subs: tuple[str, str], egress: Any = None) -> tuple[Hub, dict[str, Outbox]]:
    hub = Hub()
    boxes: dict[str, Outbox] = {}
    for sid, channel in subs:
        if sid not in boxes:
            boxes[sid] = Outbox(sid, APP.id, egress=egress or v2_egress("json"))
            hub.add(boxes[sid])
        hub.subscribe(sid, channel)
    return hub, boxes


def test_targets_do_not_count_as_channel_subscriptions() -> None:
    hub, _ = hub_with(("1.1", "orders-*"), ("1.2", "[meta]orders"), ("1.3", "orders"))
    assert hub.channels(APP.id) == {"orders": 1}
    assert hub.subscription_count(APP.id, "orders") == 1
    assert hub.subscription_count(APP.id, "orders-*") == 0
    assert not hub.subscribe("1.1", "orders-*")
    assert hub.channels_of("1.1") == frozenset({"orders-*"})


def test_pattern_lookup_is_cached_until_the_pattern_set_changes() -> None:
    hub, _ = hub_with(("1.1", "orders-*"))
    assert hub.pattern_subscribers("other-app", "orders-eu") == ()
    [(name, subs)] = hub.pattern_subscribers(APP.id, "orders-eu")
    assert name == "orders-*"
    assert list(subs) == ["1.1"]
    assert hub.pattern_subscribers(APP.id, "orders-eu") is hub.pattern_subscribers(
        APP.id, "orders-eu"
    )
    assert hub.pattern_subscribers(APP.id, "invoices") == ()
    # A new pattern invalidates the cache, so a channel seen before now matches it too.
    hub.add(Outbox("1.2", APP.id))
    hub.subscribe("1.2", "*-eu")
    assert {n for n, _ in hub.pattern_subscribers(APP.id, "orders-eu")} == {"orders-*", "*-eu"}
    # Another socket on an existing pattern changes no match: the live dict has it.
    hub.add(Outbox("1.3", APP.id))
    hub.subscribe("1.3", "*-eu")
    hits = dict(hub.pattern_subscribers(APP.id, "orders-eu"))
    assert set(hits["*-eu"]) == {"1.2", "1.3"}
    # The last subscriber of a pattern leaving removes the pattern.
    hub.unsubscribe("1.1", "orders-*")
    assert [n for n, _ in hub.pattern_subscribers(APP.id, "orders-eu")] == ["*-eu"]
    hub.remove("1.2")
    hub.remove("1.3")
    assert hub.pattern_subscribers(APP.id, "orders-eu") == ()


def test_pattern_cache_is_bounded() -> None:
    hub, _ = hub_with(("1.1", "*"))
    for i in range(PATTERN_CACHE_CHANNELS + 10):
        assert hub.pattern_subscribers(APP.id, f"c{i}")
    assert len(hub._pattern_hits[APP.id]) <= PATTERN_CACHE_CHANNELS


# --- fanout: wildcard deliveries ----------------------------------------------------------------


def frames_of(box: Outbox) -> list[dict[str, Any]]:
    return [json.loads(f) for f in box.take()]


def test_pattern_subscriber_gets_the_concrete_message_with_its_v2_metadata() -> None:
    hub, boxes = hub_with(("1.1", "orders-*"), ("1.2", "orders-eu"))
    Fanout(hub).deliver([delivery("orders-eu"), delivery("invoices"), delivery("orders-us")])
    via_pattern = boxes["1.1"].take()
    direct = boxes["1.2"].take()
    assert via_pattern[0] is direct[0]  # one encoding per (protocol, format), shared
    eu, us = (json.loads(f) for f in via_pattern)
    assert eu["channel"] == "orders-eu"
    assert us["channel"] == "orders-us"
    assert (eu["message_id"], eu["stream_id"], eu["serial"]) == ("m1", "s1", 7)
    assert len(direct) == 1


def test_a_pattern_never_reaches_private_channels() -> None:
    hub, boxes = hub_with(("1.1", "*"))
    Fanout(hub).deliver([delivery("private-x"), delivery("presence-x"), delivery("x")])
    assert [f["channel"] for f in frames_of(boxes["1.1"])] == ["x"]


def test_overlapping_subscriptions_deliver_once() -> None:
    hub, boxes = hub_with(
        ("1.1", "orders-eu"), ("1.1", "orders-*"), ("1.1", "*-eu"), ("1.2", "orders-*")
    )
    hub.subscribe("1.2", "*-eu")
    Fanout(hub).deliver([delivery("orders-eu"), delivery("orders-us")])
    assert [f["channel"] for f in frames_of(boxes["1.1"])] == ["orders-eu", "orders-us"]
    assert [f["channel"] for f in frames_of(boxes["1.2"])] == ["orders-eu", "orders-us"]


def test_predicates_apply_per_subscription_and_any_accepting_one_delivers() -> None:
    s = Session(SID, APP, activity_timeout=120, now=0.0, out=v2_egress("json"))
    hub = Hub()
    box = Outbox(SID, APP.id, egress=s.out)
    box.predicates = s.predicates
    hub.add(box)
    for name, events in (("orders-eu", ["a"]), ("orders-*", ["b"])):
        reply = s.handle(sub(name, filter={"events": events}), 0.0)
        assert reply.join is not None
        hub.subscribe(SID, reply.join)
    fanout = Fanout(hub)
    fanout.deliver([delivery("orders-eu", event=e, message_id=e) for e in ("a", "b", "c")])
    # `a` through the channel, `b` through the pattern, `c` through neither.
    assert [f["event"] for f in frames_of(box)] == ["a", "b"]
    fanout.deliver([delivery("orders-us", event=e, message_id=e) for e in ("a", "b")])
    assert [f["event"] for f in frames_of(box)] == ["b"]


def test_pattern_deliveries_follow_the_echo_rules() -> None:
    hub, boxes = hub_with(("1.1", "orders-*"), ("1.2", "orders-*"))
    boxes["1.1"].echo = False
    Fanout(hub).deliver([delivery("orders-eu", exclude_socket_id="1.1")])
    assert frames_of(boxes["1.1"]) == []
    assert len(frames_of(boxes["1.2"])) == 1
    # An HTTP publish naming the socket is never echoed, whatever the echo setting.
    boxes["1.1"].echo = True
    Fanout(hub).deliver([delivery("orders-eu", exclude_socket_id="1.1")])
    assert frames_of(boxes["1.1"]) == []


class FakeTransport:
    def __init__(self) -> None:
        self.written: list[bytes] = []

    def is_closing(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        return 0

    def write(self, data: bytes) -> None:
        self.written.append(data)


def test_direct_sockets_share_one_wire_encoding_across_channel_and_pattern(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[object] = []

    def counting(frame: str | bytes) -> bytes:
        calls.append(frame)
        return encode_frame(frame)

    monkeypatch.setattr("sockudo.node.fanout.encode_frame", counting)
    hub = Hub()
    transports = []
    for sid, channel in (("1.1", "orders-eu"), ("1.2", "orders-*"), ("1.3", "*-eu")):
        box = Outbox(sid, APP.id, egress=v2_egress("json"))
        transport = FakeTransport()
        box.attach(transport)
        transports.append(transport)
        hub.add(box)
        hub.subscribe(sid, channel)
    Fanout(hub).deliver([delivery("orders-eu")])
    assert len(calls) == 1
    assert transports[0].written == transports[1].written == transports[2].written


def test_no_patterns_means_no_pattern_work(monkeypatch: pytest.MonkeyPatch) -> None:
    hub, boxes = hub_with(("1.1", "orders"))

    def boom(self: Any, channel: str) -> bool:
        raise AssertionError("a pattern was tested without any pattern subscription")

    monkeypatch.setattr(ChannelPattern, "matches", boom)
    Fanout(hub).deliver([delivery("orders")])
    assert len(frames_of(boxes["1.1"])) == 1


# --- fanout: meta channels ----------------------------------------------------------------------


def internal(frames: list[dict[str, Any]]) -> list[tuple[str, str, Any]]:
    return [(f["event"], f["channel"], f["data"]) for f in frames]


def test_meta_subscribers_see_occupancy_and_counts_of_the_channel() -> None:
    hub, boxes = hub_with(("m.1", "[meta]orders"), ("m.2", "[meta]orders"))
    Fanout(hub)
    for sid in ("1.1", "1.2"):
        hub.add(Outbox(sid, APP.id))  # a V1 subscriber counts like any other
        hub.subscribe(sid, "orders")
    hub.subscribe("1.1", "orders")  # already in: no change, nothing sent
    hub.subscribe("1.1", "invoices")  # another channel: nothing sent
    hub.unsubscribe("1.1", "orders")
    hub.remove("1.2")  # a disconnect ends the subscription too
    meta = "[meta]orders"
    expected = [
        ("sockudo_internal:channel_occupied", meta, {"channel": "orders"}),
        (
            "sockudo_internal:subscription_count",
            meta,
            {"channel": "orders", "subscription_count": 1},
        ),
        (
            "sockudo_internal:subscription_count",
            meta,
            {"channel": "orders", "subscription_count": 2},
        ),
        (
            "sockudo_internal:subscription_count",
            meta,
            {"channel": "orders", "subscription_count": 1},
        ),
        (
            "sockudo_internal:subscription_count",
            meta,
            {"channel": "orders", "subscription_count": 0},
        ),
        ("sockudo_internal:channel_vacated", meta, {"channel": "orders"}),
    ]
    first, second = boxes["m.1"].take(), boxes["m.2"].take()
    assert internal([json.loads(f) for f in first]) == expected
    assert all(a is b for a, b in zip(first, second, strict=True))  # built once per format


def test_meta_subscription_ends_with_unsubscribe_and_disconnect() -> None:
    hub, boxes = hub_with(("m.1", "[meta]orders"), ("m.2", "[meta]orders"), ("1.1", "x"))
    Fanout(hub)
    hub.unsubscribe("m.1", "[meta]orders")
    hub.remove("m.2")
    assert hub.meta_subscribers(APP.id, "orders") == []
    hub.subscribe("1.1", "orders")
    assert frames_of(boxes["m.1"]) == []
    assert frames_of(boxes["m.2"]) == []
    assert hub._meta == {}


def test_a_socket_leaving_is_not_told_about_its_own_channels() -> None:
    hub, boxes = hub_with(("1.1", "[meta]orders"), ("1.1", "orders"), ("m.2", "[meta]orders"))
    Fanout(hub)
    boxes["1.1"].take()
    boxes["m.2"].take()
    hub.remove("1.1")
    assert frames_of(boxes["1.1"]) == []
    assert [f["event"] for f in frames_of(boxes["m.2"])] == [
        "sockudo_internal:subscription_count",
        "sockudo_internal:channel_vacated",
    ]


def presence(kind: str, user_id: str = "u1") -> Delivery:
    data = json.dumps({"user_id": user_id})
    return delivery(
        "presence-room",
        kind=kind,
        event=f"pusher_internal:{kind}",
        data=data,
        data_is_json=True,
        stream_id=None,
        serial=None,
        user_id=user_id,
    )


@pytest.mark.parametrize("fmt", ["json", "msgpack", "protobuf"])
def test_meta_presence_updates(fmt: wire.WireFormat) -> None:
    hub, boxes = hub_with(("m.1", "[meta]presence-room"), egress=v2_egress(fmt))
    Fanout(hub).deliver(
        [presence(MEMBER_ADDED), presence(MEMBER_UPDATED), presence(MEMBER_REMOVED)]
    )
    envs = [wire.decode(f, fmt) for f in boxes["m.1"].take()]
    assert [e.event for e in envs] == ["sockudo_internal:presence_update"] * 3
    assert {e.channel for e in envs} == {"[meta]presence-room"}
    assert [e.data.to_value() if e.data else None for e in envs] == [
        {"channel": "presence-room", "user_id": "u1", "action": action}
        for action in ("member_added", "member_updated", "member_removed")
    ]
    assert all(e.serial is None and e.stream_id is None for e in envs)


def test_meta_frames_are_not_built_without_meta_subscribers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    hub, boxes = hub_with(("1.1", "presence-room"), ("m.1", "[meta]other"))
    fanout = Fanout(hub)

    def boom(*_args: Any) -> str:
        raise AssertionError("a meta frame was built for a channel nobody watches")

    monkeypatch.setattr(type(v2_egress("json")), "internal", boom)
    fanout.deliver([presence(MEMBER_ADDED, "u2")])
    hub.subscribe("m.1", "orders")
    hub.unsubscribe("m.1", "orders")
    [frame] = frames_of(boxes["1.1"])
    assert frame["event"] == "sockudo_internal:member_added"
    assert frames_of(boxes["m.1"]) == []
