"""Protocol V1 without sockets: frame codec, session state machine, hub, fanout, admission."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from projections.folds.state import Delivery
from sockudo.auth import sign_channel_auth
from sockudo.config import AppConfig, AppLimits, Settings
from sockudo.node.fanout import Fanout
from sockudo.node.hub import Hub, Outbox
from sockudo.ws import v1
from sockudo.ws.endpoint import admission_error, check_query, new_socket_id, origin_allowed
from sockudo.ws.session import SendCache, Session

APP = AppConfig(id="app-id", key="app-key", secret="app-secret")
SID = "123.456"


def session(now: float = 0.0, activity_timeout: int = 120) -> Session:
    return Session(SID, APP, activity_timeout=activity_timeout, now=now)


def frames(reply_frames: list[str]) -> list[dict[str, Any]]:
    return [json.loads(f) for f in reply_frames]


def sub(channel: str, **data: str) -> str:
    return json.dumps({"event": "pusher:subscribe", "data": {"channel": channel, **data}})


def delivery(channel: str = "orders", exclude: str | None = None, **kw: Any) -> Delivery:
    fields: dict[str, Any] = {
        "app_id": APP.id,
        "channel": channel,
        "event": "order.created",
        "data": '{"id":1}',
        "data_is_json": False,
        "message_id": "m1",
        "stream_id": "s1",
        "serial": 1,
        "history_serial": 1,
        "published_at_ms": 1,
        "exclude_socket_id": exclude,
        "user_id": None,
        "client_event": False,
        "extras_json": None,
        "tags": None,
    }
    fields.update(kw)
    return Delivery(**fields)


# --- frame codec -----------------------------------------------------------------------------


def test_parse_accepts_both_prefix_families_and_string_data() -> None:
    assert v1.parse_frame('{"event":"sockudo:ping"}') == v1.Ping()
    assert v1.parse_frame(b'{"event":"pusher:pong","data":{}}') == v1.Pong()
    inner = json.dumps({"channel": "orders", "auth": ""})
    assert v1.parse_frame(json.dumps({"event": "pusher:subscribe", "data": inner})) == (
        v1.Subscribe("orders", "", None)
    )
    assert v1.parse_frame('{"event":"pusher:unsubscribe","data":"orders"}') == v1.Unsubscribe(
        "orders"
    )
    assert v1.parse_frame('{"event":"pusher:nope"}') == v1.IgnoredSystemEvent("pusher:nope")
    assert v1.parse_frame('{"event":"foo"}') == v1.UnknownEvent("foo")


@pytest.mark.parametrize(
    "raw",
    [
        "not json",
        "[1]",
        "{}",
        '{"event":""}',
        '{"event":"pusher:subscribe","data":{}}',
        '{"event":"pusher:subscribe","data":5}',
        '{"event":"pusher:subscribe","data":{"channel":"x","auth":5}}',
        b"\xff\xfe",
    ],
)
def test_malformed_frames_are_4000(raw: str | bytes) -> None:
    with pytest.raises(v1.FrameError) as err:
        v1.parse_frame(raw)
    assert err.value.code == 4000


def test_builders_emit_the_exact_pusher_shapes() -> None:
    est = json.loads(v1.connection_established("1.2", 120))
    assert json.loads(est["data"]) == {"socket_id": "1.2", "activity_timeout": 120}
    assert json.loads(v1.error(4009, "no", "c")) == {
        "event": "pusher:error",
        "data": {"code": 4009, "message": "no"},
        "channel": "c",
    }
    assert v1.message("e", "c", '{"a":1}') == '{"event":"e","channel":"c","data":"{\\"a\\":1}"}'


# --- session ---------------------------------------------------------------------------------


def test_subscribe_public_private_and_idempotent_resubscribe() -> None:
    s = session()
    reply = s.handle(sub("orders", auth=""), 1.0)
    assert reply.join == "orders"
    assert frames(reply.frames) == [
        {"event": "pusher_internal:subscription_succeeded", "channel": "orders", "data": "{}"}
    ]
    again = s.handle(sub("orders"), 2.0)
    assert again.join is None
    assert len(again.frames) == 1
    auth = sign_channel_auth(APP.key, APP.secret, SID, "private-orders")
    assert auth.endswith("fa24923d1d5972f2c827aceb385f438a659796cd37cc4edc043128f78f18790a")
    assert s.handle(sub("private-orders", auth=auth), 3.0).join == "private-orders"


@pytest.mark.parametrize(
    ("channel", "auth", "code"),
    [
        ("private-orders", None, 4009),
        ("private-orders", "app-key:" + "0" * 64, 4009),
        ("private-cache-x", "app-key:bad", 4009),
        ("private-encrypted-x", "other-key:bad", 4009),
        ("presence-room", "app-key:bad", 4000),  # no channel_data: malformed first
        ("#server-to-user-u1", None, 4009),
        ("bad channel!", None, 4300),
        ("foo:bar", None, 4300),
        ("x" * 201, None, 4300),
        ("[meta]orders", None, 4300),
    ],
)
def test_subscribe_failures_are_in_band_with_channel(
    channel: str, auth: str | None, code: int
) -> None:
    s = session()
    reply = s.handle(sub(channel, **({"auth": auth} if auth is not None else {})), 1.0)
    assert reply.join is None
    assert reply.close is None
    [frame] = frames(reply.frames)
    assert (frame["event"], frame["data"]["code"], frame["channel"]) == (
        "pusher:error",
        code,
        channel,
    )
    assert channel not in s.channels


def test_cache_channel_subscribe_is_followed_by_a_cache_lookup() -> None:
    reply = session().handle(sub("cache-prices"), 1.0)
    assert [f["event"] for f in frames(reply.frames)] == ["pusher_internal:subscription_succeeded"]
    assert reply.effects == [SendCache("cache-prices")]
    assert reply.join == "cache-prices"


def test_unsubscribe_only_leaves_joined_channels() -> None:
    s = session()
    assert s.handle('{"event":"pusher:unsubscribe","data":{"channel":"x"}}', 1.0).leave is None
    s.handle(sub("x"), 1.0)
    assert s.handle('{"event":"pusher:unsubscribe","data":{"channel":"x"}}', 1.0).leave == "x"


def test_unknown_and_client_events_are_4301_without_close() -> None:
    s = session()
    for raw in ('{"event":"foo"}', '{"event":"client-typing","channel":"private-c","data":{}}'):
        reply = s.handle(raw, 1.0)
        assert reply.close is None
        assert frames(reply.frames)[0]["data"]["code"] == 4301
    assert s.handle('{"event":"pusher:whatever"}', 1.0).frames == []


def test_heartbeat_ping_after_inactivity_then_pong_timeout_4201() -> None:
    s = session(now=0.0, activity_timeout=120)
    assert s.next_deadline() == 120.0
    assert s.tick(100.0).frames == []
    s.handle(sub("x"), 100.0)  # any frame resets the inactivity clock
    assert s.tick(200.0).frames == []
    assert frames(s.tick(220.0).frames) == [{"event": "pusher:ping", "data": {}}]
    s.handle(sub("y"), 230.0)  # an ordinary frame does not answer the pending ping
    assert s.tick(249.0).close is None
    assert s.tick(250.0).close == (4201, "Pong reply not received in time")


def test_pong_or_client_ping_answers_the_server_ping() -> None:
    s = session(now=0.0, activity_timeout=10)
    s.tick(10.0)
    assert s.handle('{"event":"pusher:pong","data":{}}', 11.0).frames == []
    assert s.ping_sent_at is None
    assert s.next_deadline() == 21.0
    s.tick(21.0)
    assert frames(s.handle('{"event":"pusher:ping"}', 22.0).frames) == [
        {"event": "pusher:pong", "data": {}}
    ]
    assert s.ping_sent_at is None


# --- hub and fanout --------------------------------------------------------------------------


def test_hub_tracks_subscriptions_and_counts() -> None:
    hub = Hub()
    for sid in ("1.1", "1.2"):
        hub.add(Outbox(sid, APP.id))
    hub.add(Outbox("2.1", "other"))
    assert hub.subscribe("1.1", "c")
    assert not hub.subscribe("1.1", "c")
    hub.subscribe("1.2", "c")
    assert hub.subscription_count(APP.id, "c") == 2
    assert hub.subscription_count("other", "c") == 0
    assert hub.counts_per_app() == {APP.id: 2, "other": 1}
    assert hub.unsubscribe("1.2", "c")
    assert not hub.unsubscribe("1.2", "c")
    assert hub.remove("1.1") == ["c"]
    assert hub.subscription_count(APP.id, "c") == 0
    assert hub.connection_count() == 2
    assert hub.connection_count(APP.id) == 1


def test_fanout_serialises_once_and_skips_the_excluded_socket() -> None:
    hub = Hub()
    boxes = [Outbox(f"1.{i}", APP.id) for i in range(3)]
    for box in boxes:
        hub.add(box)
        hub.subscribe(box.socket_id, "orders")
    Fanout(hub).deliver([delivery(exclude="1.0"), delivery(channel="nobody")])
    assert len(boxes[0]) == 0
    [a], [b] = boxes[1].take(), boxes[2].take()
    assert a is b  # the same str object: built once per message
    assert json.loads(a) == {"event": "order.created", "channel": "orders", "data": '{"id":1}'}


def test_fanout_closes_a_slow_socket_with_4100_instead_of_growing() -> None:
    hub = Hub()
    slow, fast = Outbox("1.1", APP.id, capacity=2), Outbox("1.2", APP.id, capacity=10)
    for box in (slow, fast):
        hub.add(box)
        hub.subscribe(box.socket_id, "orders")
    fanout = Fanout(hub)
    fanout.deliver([delivery(), delivery(), delivery()])
    assert slow.close_request == (4100, "Over capacity")
    assert len(slow) == 0
    assert len(fast) == 3
    assert fanout.slow_closed == 1


# --- admission and query -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "ok"),
    [
        ({}, True),
        ({"protocol": "7"}, True),
        ({"protocol": "2", "format": " MsgPack "}, True),
        ({"protocol": "7", "format": "xml"}, True),
        ({"protocol": "abc"}, False),
        ({"protocol": "-1"}, False),
        ({"protocol": "7.0"}, False),
        ({"protocol": "300"}, False),
        ({"echo_messages": "yes"}, False),
        ({"protocol": "2", "format": "xml"}, False),
    ],
)
def test_query_checks_before_upgrade(query: dict[str, str], ok: bool) -> None:
    assert (check_query(query)[1] is None) is ok


def test_origin_rules() -> None:
    assert origin_allowed(APP, "")
    strict = AppConfig(id="s", key="s", secret="s", allowed_origins=("https://ok.example",))
    assert origin_allowed(strict, "HTTPS://OK.example")
    assert not origin_allowed(strict, "https://bad.example")
    assert not origin_allowed(strict, "")
    anyone = AppConfig(id="a", key="a", secret="a", allowed_origins=("*",))
    assert origin_allowed(anyone, "https://x.example")


def test_admission_order_and_quotas() -> None:
    disabled = AppConfig(id="d", key="d", secret="d", enabled=False)
    quota = AppConfig(id="q", key="q", secret="q", limits=AppLimits(max_connections=1))
    settings = Settings(apps=(APP, disabled, quota))
    hub = Hub()
    assert admission_error(settings, hub, None, "") == (4001, "Application does not exist")
    assert admission_error(settings, hub, disabled, "")[0] == 4003  # type: ignore[index]
    assert admission_error(settings, hub, quota, "") is None
    hub.add(Outbox("1.1", "q"))
    assert admission_error(settings, hub, quota, "")[0] == 4004  # type: ignore[index]
    capped = Settings(apps=(APP,), max_connections=1)
    assert admission_error(capped, hub, APP, "")[0] == 4100  # type: ignore[index]


def test_socket_ids_have_the_pusher_shape_and_are_unique() -> None:
    taken = {"1.1"}
    sid = new_socket_id(taken.__contains__)
    assert re.fullmatch(r"\d+\.\d+", sid)
    assert sid not in taken


def test_outbox_is_bounded_by_characters_too() -> None:
    box = Outbox("1.1", APP.id, capacity=100, max_chars=10)
    assert box.offer("x" * 50)  # an empty queue always takes one frame
    assert not box.offer("y")
    assert box.take() == ["x" * 50]
    assert box.offer("12345")
    assert box.offer("67890")
    assert not box.offer("!")
