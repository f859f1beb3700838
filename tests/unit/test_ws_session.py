"""The V1 session state machine: presence, signin, user channels and client events (no sockets)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from sockudo.auth import sign_channel_auth, sign_user_auth
from sockudo.config import AppConfig, AppFeatures, AppLimits
from sockudo.ws.session import (
    PresenceJoin,
    PresenceLeave,
    PublishClientEvent,
    Reply,
    Session,
    SignedIn,
)

SID = "123.456"
ALL_ON = AppFeatures(
    enable_client_messages=True, enable_user_authentication=True, enable_watchlist_events=True
)


def app(limits: AppLimits | None = None, features: AppFeatures = ALL_ON) -> AppConfig:
    return AppConfig(
        id="app-id",
        key="app-key",
        secret="app-secret",
        limits=limits or AppLimits(),
        features=features,
    )


def session(a: AppConfig | None = None, now: float = 0.0) -> Session:
    return Session(SID, a or app(), activity_timeout=120, now=now, user_authentication_timeout=30)


def only_error(reply: Reply) -> dict[str, Any]:
    [raw] = reply.frames
    frame = json.loads(raw)
    assert frame["event"] == "pusher:error"
    assert reply.effects == []
    assert reply.join is None
    data: dict[str, Any] = frame["data"]
    return {**data, "channel": frame.get("channel")}


def presence_sub(channel: str, channel_data: str | None, auth: str | None = None) -> str:
    data: dict[str, str] = {"channel": channel}
    if channel_data is not None:
        data["channel_data"] = channel_data
        data["auth"] = auth or sign_channel_auth(
            "app-key", "app-secret", SID, channel, channel_data
        )
    elif auth is not None:
        data["auth"] = auth
    return json.dumps({"event": "pusher:subscribe", "data": data})


def private_sub(channel: str) -> str:
    auth = sign_channel_auth("app-key", "app-secret", SID, channel)
    return json.dumps({"event": "pusher:subscribe", "data": {"channel": channel, "auth": auth}})


def client_event(channel: str | None, data: Any = None, name: str = "client-typing") -> str:
    frame: dict[str, Any] = {"event": name, "data": data if data is not None else {"t": 1}}
    if channel is not None:
        frame["channel"] = channel
    return json.dumps(frame)


def signin(user_data: str, auth: str | None = None) -> str:
    auth = auth or sign_user_auth("app-key", "app-secret", SID, user_data)
    return json.dumps({"event": "pusher:signin", "data": {"auth": auth, "user_data": user_data}})


# --- presence --------------------------------------------------------------------------------


def test_presence_join_is_an_effect_carrying_the_compact_user_info() -> None:
    s = session()
    raw = '{"user_id": "u1", "user_info": {"name": "Ann"}}'
    reply = s.handle(presence_sub("presence-room", raw), 1.0)
    assert reply.frames == []
    assert reply.join is None  # the hub join waits for the fold (effects.py)
    assert reply.effects == [PresenceJoin("presence-room", "u1", '{"name":"Ann"}')]
    assert s.presence == {"presence-room": "u1"}
    again = s.handle(presence_sub("presence-room", raw), 2.0)
    assert again.effects == [PresenceJoin("presence-room", "u1", None, rejoin=True)]


def test_presence_signature_covers_the_exact_channel_data_string() -> None:
    sent = '{"user_id": "u1", "user_info": {"name": "Ann"}}'
    compact = '{"user_id":"u1","user_info":{"name":"Ann"}}'
    auth_over_compact = sign_channel_auth("app-key", "app-secret", SID, "presence-room", compact)
    error = only_error(session().handle(presence_sub("presence-room", sent, auth_over_compact), 1))
    assert (error["code"], error["channel"]) == (4009, "presence-room")


@pytest.mark.parametrize(
    ("channel_data", "code"),
    [
        (None, 4000),
        ("not json", 4000),
        ("[1]", 4000),
        ('{"user_info":{}}', 4000),
        ('{"user_id":""}', 4000),
        ('{"user_id":true}', 4000),
    ],
)
def test_presence_channel_data_problems(channel_data: str | None, code: int) -> None:
    s = session()
    # Correctly signed (over whatever was sent): the content itself is the problem.
    auth = "app-key:x" if channel_data is None else None
    reply = s.handle(presence_sub("presence-room", channel_data, auth=auth), 1.0)
    assert only_error(reply)["code"] == code
    assert s.presence == {}


def test_integer_user_id_becomes_its_decimal_string() -> None:
    reply = session().handle(presence_sub("presence-room", '{"user_id": 42}'), 1.0)
    assert reply.effects == [PresenceJoin("presence-room", "42", None)]


def test_user_info_limit_counts_compact_utf8_bytes() -> None:
    limits = AppLimits(max_presence_member_size_in_kb=2)
    overhead = len('{"n":""}')
    fits = json.dumps({"user_id": "u", "user_info": {"n": "x" * (2048 - overhead)}})
    too_big = json.dumps({"user_id": "u", "user_info": {"n": "x" * (2049 - overhead)}})
    assert session(app(limits)).handle(presence_sub("presence-a", fits), 1.0).effects
    error = only_error(session(app(limits)).handle(presence_sub("presence-a", too_big), 1.0))
    assert error["code"] == 4300


def test_unsubscribing_a_presence_channel_appends_a_leave() -> None:
    s = session()
    s.handle(presence_sub("presence-room", '{"user_id":"u1"}'), 1.0)
    reply = s.handle('{"event":"pusher:unsubscribe","data":{"channel":"presence-room"}}', 2.0)
    assert reply.leave == "presence-room"
    assert reply.effects == [PresenceLeave("presence-room", "u1", "unsubscribe")]
    assert s.presence == {}


# --- signin and user channels ----------------------------------------------------------------


def test_signin_echoes_user_data_and_sets_the_identity() -> None:
    s = session()
    user_data = '{"id": "u1", "user_info": {"name": "Ann"}, "watchlist": ["u2"]}'
    reply = s.handle(signin(user_data), 1.0)
    [frame] = [json.loads(f) for f in reply.frames]
    assert frame == {"event": "pusher:signin_success", "data": {"user_data": user_data}}
    assert reply.effects == [SignedIn("u1", ("u2",))]
    assert s.user_id == "u1"


@pytest.mark.parametrize(
    ("features", "user_data", "auth"),
    [
        (AppFeatures(enable_user_authentication=False), '{"id":"u1"}', None),
        (ALL_ON, '{"id":"u1"}', "app-key:" + "0" * 64),
        (ALL_ON, '{"name":"no id"}', None),
        (ALL_ON, "not json", None),
        (ALL_ON, '{"id":"u1","watchlist":"u2"}', None),
    ],
)
def test_signin_failures_are_4009_and_keep_the_socket(
    features: AppFeatures, user_data: str, auth: str | None
) -> None:
    s = session(app(features=features))
    reply = s.handle(signin(user_data, auth), 1.0)
    assert only_error(reply)["code"] == 4009
    assert reply.close is None
    assert s.user_id is None


def test_watchlist_over_100_is_4302_and_signin_keeps_the_first_100() -> None:
    watchlist = [f"w{i}" for i in range(101)]
    reply = session().handle(signin(json.dumps({"id": "u1", "watchlist": watchlist})), 1.0)
    events = [json.loads(f)["event"] for f in reply.frames]
    assert events == ["pusher:signin_success", "pusher:error"]
    assert json.loads(reply.frames[1])["data"]["code"] == 4302
    assert reply.effects == [SignedIn("u1", tuple(watchlist[:100]))]


def test_user_channel_subscribe_needs_that_identity() -> None:
    s = session()
    assert only_error(s.handle(private_sub("#server-to-user-u1"), 1.0))["code"] == 4009
    s.handle(signin('{"id":"u1"}'), 1.0)
    ok = s.handle(private_sub("#server-to-user-u1"), 1.0)
    assert json.loads(ok.frames[0])["event"] == "pusher_internal:subscription_succeeded"
    assert only_error(s.handle(private_sub("#server-to-user-u2"), 1.0))["code"] == 4009


def test_unauthorized_connection_is_closed_4009_after_the_timeout() -> None:
    s = session(now=0.0)
    assert s.next_deadline() == 30.0
    assert s.tick(30.0).close == (4009, "Connection not authorized within timeout.")
    signed = session(now=0.0)
    signed.handle(signin('{"id":"u1"}'), 1.0)
    assert signed.tick(30.0).close is None
    private = session(now=0.0)
    private.handle(private_sub("private-x"), 1.0)
    assert private.tick(30.0).close is None
    off = session(app(features=AppFeatures()), now=0.0)
    assert off.tick(30.0).close is None


# --- client events ---------------------------------------------------------------------------


def test_client_event_on_a_subscribed_private_channel_is_published() -> None:
    s = session()
    s.handle(private_sub("private-chat"), 1.0)
    reply = s.handle(client_event("private-chat", {"typing": True}), 1.0)
    assert reply.frames == []
    assert reply.effects == [
        PublishClientEvent("private-chat", "client-typing", '{"typing":true}', True, None)
    ]
    as_string = s.handle(client_event("private-chat", "raw text"), 1.0)
    assert as_string.effects == [
        PublishClientEvent("private-chat", "client-typing", "raw text", False, None)
    ]


def test_presence_client_events_carry_the_senders_user_id() -> None:
    s = session()
    s.handle(presence_sub("presence-room", '{"user_id":"u1"}'), 1.0)
    [effect] = s.handle(client_event("presence-room"), 1.0).effects
    assert isinstance(effect, PublishClientEvent)
    assert effect.user_id == "u1"


@pytest.mark.parametrize(
    ("features", "channel", "name", "data"),
    [
        (AppFeatures(), "private-chat", "client-x", {}),
        (ALL_ON, "orders", "client-x", {}),
        (ALL_ON, "private-encrypted-x", "client-x", {}),
        (ALL_ON, "private-other", "client-x", {}),  # not subscribed
        (ALL_ON, None, "client-x", {}),
        (ALL_ON, "bad channel!", "client-x", {}),
        (ALL_ON, "private-chat", "client-" + "x" * 200, {}),
        (ALL_ON, "private-chat", "client-x", "y" * (100 * 1024 + 1)),
    ],
)
def test_client_event_rejections_are_4301_and_publish_nothing(
    features: AppFeatures, channel: str | None, name: str, data: Any
) -> None:
    s = session(app(features=features))
    s.handle(private_sub("private-chat"), 1.0)
    s.handle(private_sub("private-encrypted-x"), 1.0)
    reply = s.handle(client_event(channel, data, name), 1.0)
    error = only_error(reply)
    assert error["code"] == 4301
    assert reply.close is None


def test_payload_of_exactly_the_limit_is_accepted() -> None:
    s = session()
    s.handle(private_sub("private-chat"), 1.0)
    assert s.handle(client_event("private-chat", "y" * (100 * 1024)), 1.0).effects


@pytest.mark.parametrize("terminate", [False, True])
def test_client_event_rate_limit(terminate: bool) -> None:
    limits = AppLimits(max_client_events_per_second=2, terminate_on_limit=terminate)
    s = session(app(limits))
    s.handle(private_sub("private-chat"), 1.0)
    assert s.handle(client_event("private-chat"), 1.0).effects
    assert s.handle(client_event("private-chat"), 1.1).effects
    third = s.handle(client_event("private-chat"), 1.2)
    assert third.effects == []
    assert json.loads(third.frames[0])["data"]["code"] == 4301
    assert third.close == ((4301, "Client event rate limit exceeded") if terminate else None)
    assert s.handle(client_event("private-chat"), 2.05).effects  # the window moved on
