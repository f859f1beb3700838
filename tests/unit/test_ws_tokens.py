"""Capability tokens in the session, at the edge and in fanout (spec 02 §11), without sockets."""

from __future__ import annotations

import json
import time
from types import SimpleNamespace
from typing import Any

import pytest

from projections.folds.revocations import CLOSE_REVOKED
from projections.folds.state import Delivery
from projections.store.kv import MemoryKV
from sockudo.auth import sign_channel_auth, sign_user_auth
from sockudo.capabilities import TokenGrant, parse_capabilities
from sockudo.config import AppConfig, AppFeatures
from sockudo.errors import ApiError
from sockudo.http.revocations import DEFAULT_TTL_S, MAX_TTL_S, parse_revocation
from sockudo.node.fanout import Fanout
from sockudo.node.hub import Hub, Outbox
from sockudo.node.revocations import RevocationRequest
from sockudo.ws import token_auth
from sockudo.ws.egress import V1
from sockudo.ws.egress import v2 as v2_egress
from sockudo.ws.session import PresenceJoin, PublishClientEvent, Reply, Session
from sockudo.ws.tokens import GRACE_S, RefreshToken
from tests.support import tokens

APP = AppConfig(
    id="app-id",
    key="app-key",
    secret="app-secret",
    features=AppFeatures(enable_client_messages=True, enable_user_authentication=True),
)
SID = "123.456"
WALL = 1_800_000_000.0


def grant(
    capability: dict[str, list[str]], *, client_id: str = "c1", exp_in: int = 600
) -> TokenGrant:
    return TokenGrant(
        client_id, "jti-1", int(WALL), int(WALL) + exp_in, parse_capabilities(capability)
    )


def v2_session(capability: dict[str, list[str]] | None = None, **kw: Any) -> Session:
    s = Session(
        SID,
        APP,
        activity_timeout=1000,
        now=0.0,
        out=v2_egress("json"),
        annotations_enabled=lambda _c: True,
    )
    if capability is not None:
        s.accept_token(grant(capability, **kw), 0.0, WALL)
    return s


def frame(event: str, data: Any, channel: str | None = None) -> str:
    out: dict[str, Any] = {"event": event, "data": data}
    if channel is not None:
        out["channel"] = channel
    return json.dumps(out)


def sub(channel: str, **extra: Any) -> str:
    return frame("sockudo:subscribe", {"channel": channel, "auth": "", **extra})


def error(reply: Reply) -> dict[str, Any]:
    [raw] = reply.frames
    out = json.loads(raw)
    assert out["event"] == "sockudo:error", out
    assert reply.effects == []
    assert reply.join is None
    return {**out["data"], "channel": out.get("channel")}


def denied(action: str, channel: str) -> dict[str, Any]:
    return {
        "code": 4009,
        "message": "Authentication error: Connection is not allowed to "
        f"{action} channel '{channel}'",
        "channel": channel,
    }


# --- operation checks --------------------------------------------------------------------------


def test_subscribe_needs_a_matching_subscribe_grant() -> None:
    s = v2_session({"orders-*": ["subscribe"]})
    assert s.handle(sub("orders-eu"), 1.0).join == "orders-eu"
    assert error(s.handle(sub("invoices"), 1.0)) == denied("subscribe", "invoices")
    assert "invoices" not in s.channels


def test_without_a_token_everything_is_allowed() -> None:
    s = v2_session()
    assert s.handle(sub("invoices"), 1.0).join == "invoices"


def test_presence_needs_subscribe_and_presence() -> None:
    channel = "presence-room"
    data = json.dumps({"user_id": "c1"})
    auth = sign_channel_auth(APP.key, APP.secret, SID, channel, data)
    body = {"auth": auth, "channel_data": data}
    only_presence = v2_session({channel: ["presence"]})
    assert error(only_presence.handle(sub(channel, **body), 1.0)) == denied("subscribe", channel)
    only_subscribe = v2_session({channel: ["subscribe"]})
    assert error(only_subscribe.handle(sub(channel, **body), 1.0)) == denied("presence", channel)
    both = v2_session({channel: ["subscribe", "presence"]})
    reply = both.handle(sub(channel, **body), 1.0)
    assert [type(e) for e in reply.effects] == [PresenceJoin]


def test_private_channels_still_need_their_signature() -> None:
    s = v2_session({"private-x": ["subscribe"]})
    reply = s.handle(sub("private-x", auth="app-key:bad"), 1.0)
    assert error(reply)["code"] == 4009
    assert "signature" in error(reply)["message"]
    good = sign_channel_auth(APP.key, APP.secret, SID, "private-x")
    assert s.handle(sub("private-x", auth=good), 1.0).join == "private-x"


def test_rewind_needs_history_and_annotation_mode_needs_annotation_subscribe() -> None:
    s = v2_session({"feed": ["subscribe"]})
    assert error(s.handle(sub("feed", rewind=5), 1.0)) == denied("history", "feed")
    modes = {"modes": ["ANNOTATION_SUBSCRIBE"]}
    assert error(s.handle(sub("feed", **modes), 1.0)) == denied("annotation_subscribe", "feed")
    ok = v2_session({"feed": ["subscribe", "history", "annotation-subscribe"]})
    assert ok.handle(sub("feed", rewind=5, **modes), 1.0).join == "feed"


def test_client_events_need_publish() -> None:
    channel = "private-chat"
    auth = sign_channel_auth(APP.key, APP.secret, SID, channel)
    reader = v2_session({channel: ["subscribe"]})
    assert reader.handle(sub(channel, auth=auth), 1.0).join == channel
    assert error(reader.handle(frame("client-hi", {"a": 1}, channel), 2.0)) == denied(
        "publish", channel
    )
    writer = v2_session({channel: ["subscribe", "publish"]})
    writer.handle(sub(channel, auth=auth), 1.0)
    assert [type(e) for e in writer.handle(frame("client-hi", {"a": 1}, channel), 2.0).effects] == [
        PublishClientEvent
    ]


def test_channel_history_needs_history() -> None:
    s = v2_session({"feed": ["subscribe"]})
    s.handle(sub("feed"), 1.0)
    reply = s.handle(frame("sockudo:channel_history", {"channel": "feed", "limit": 5}), 2.0)
    assert error(reply) == denied("history", "feed")


def test_presence_update_needs_presence() -> None:
    s = v2_session({"presence-room": ["subscribe"]})
    reply = s.handle(
        frame("sockudo:presence_update", {"user_info": {"a": 1}}, "presence-room"), 1.0
    )
    assert error(reply) == denied("presence", "presence-room")


def test_signin_is_refused_on_a_token_connection() -> None:
    s = v2_session({"*": ["subscribe"]})
    user_data = json.dumps({"id": "c1"})
    auth = sign_user_auth(APP.key, APP.secret, SID, user_data)
    reply = s.handle(frame("sockudo:signin", {"auth": auth, "user_data": user_data}), 1.0)
    assert error(reply) == {
        "code": 4009,
        "message": "Authentication error: signin is not allowed on capability-token "
        "authenticated connections",
        "channel": None,
    }


def test_the_token_is_the_identity_for_user_channels() -> None:
    s = v2_session({"#server-to-user-c1": ["subscribe"]})
    assert s.user_id == "c1"
    assert s.authorize_by is None  # a token connection is authenticated
    ok = s.handle(sub("#server-to-user-c1"), 1.0)
    assert json.loads(ok.frames[0])["event"] == "sockudo_internal:subscription_succeeded"


# --- sockudo:auth ------------------------------------------------------------------------------


@pytest.mark.parametrize("data", [{"token": "abc"}, json.dumps({"token": "abc"})])
def test_sockudo_auth_asks_for_a_refresh(data: Any) -> None:
    assert v2_session().handle(frame("sockudo:auth", data), 1.0).effects == [RefreshToken("abc")]


@pytest.mark.parametrize("data", [{}, {"token": 5}, "nope", None])
def test_sockudo_auth_without_a_token_string_is_malformed(data: Any) -> None:
    assert error(v2_session().handle(frame("sockudo:auth", data), 1.0))["code"] == 4000


def test_pusher_auth_on_v1_is_a_4009() -> None:
    s = Session(SID, APP, activity_timeout=120, now=0.0, out=V1)
    [raw] = s.handle(frame("pusher:auth", {"token": "abc"}), 1.0).frames
    out = json.loads(raw)
    assert out["event"] == "pusher:error"
    assert out["data"]["code"] == 4009


# --- expiry --------------------------------------------------------------------------------------


def test_expiry_sends_token_expired_then_closes_after_the_grace() -> None:
    s = v2_session({"*": ["subscribe"]}, exp_in=100)
    assert s.next_deadline() == 100.0
    assert s.tick(99.9).frames == []
    at_exp = s.tick(100.0)
    [raw] = at_exp.frames
    assert json.loads(raw) == {
        "event": "sockudo:token_expired",
        "data": {"code": 40142, "reason": "expired"},
    }
    assert at_exp.close is None
    assert s.next_deadline() == 100.0 + GRACE_S
    assert s.tick(100.0 + GRACE_S - 0.1).close is None
    assert s.tick(100.0 + GRACE_S).close == (4009, "capability token expired")


def test_a_refresh_restarts_the_expiry_clock() -> None:
    s = v2_session({"*": ["subscribe"]}, exp_in=100)
    s.tick(100.0)  # token_expired sent
    s.accept_token(grant({"*": ["subscribe"]}, exp_in=300), 110.0, WALL + 110)
    assert s.next_deadline() == 300.0
    assert s.tick(100.0 + GRACE_S).close is None


# --- the edge: verification, refresh, revocation index ------------------------------------------


class Channels:
    """What token_auth reads of a ChannelService: the revocation projection."""

    def __init__(self) -> None:
        self.runtime = SimpleNamespace(store=MemoryKV())


def connected(
    capability: dict[str, list[str]] | None, client_id: str = "client-1"
) -> tuple[Session, Outbox, Hub]:
    hub = Hub()
    s = v2_session()
    box = Outbox(SID, APP.id, egress=s.out)
    hub.add(box)
    if capability is not None:
        token = tokens.capability_token(
            capability, client_id=client_id, jti="j-1", kid=APP.key, secret=APP.secret
        )
        g = token_auth.authenticate(token, APP, Channels(), time.time())  # type: ignore[arg-type]
        token_auth.attach(s, box, hub, g)
    return s, box, hub


def sent(box: Outbox) -> list[dict[str, Any]]:
    return [json.loads(f) for f in box.take()]


def test_attach_sets_identity_and_indexes_the_socket() -> None:
    _s, box, hub = connected({"*": ["subscribe"]})
    assert hub.user_of(SID) == "client-1"
    assert hub.sockets_of_user(APP.id, "client-1") == [box]
    assert hub.tokens.matching(APP.id, "j-1", None) == [box]
    assert hub.tokens.matching(APP.id, None, "client-1") == [box]
    hub.remove(SID)
    assert hub.tokens.matching(APP.id, "j-1", "client-1") == []
    assert len(hub.tokens) == 0


def test_refresh_answers_auth_success_and_keeps_the_old_token_on_failure() -> None:
    s, box, hub = connected({"a": ["subscribe"]})
    channels = Channels()
    good = tokens.capability_token(
        {"b": ["subscribe"]}, client_id="client-1", jti="j-2", kid=APP.key, secret=APP.secret
    )
    token_auth.refresh(RefreshToken(good), s, box, hub, APP, channels)  # type: ignore[arg-type]
    [ok] = sent(box)
    assert ok["event"] == "sockudo:auth_success"
    assert ok["data"]["client_id"] == "client-1"
    assert ok["data"]["jti"] == "j-2"
    assert isinstance(ok["data"]["exp"], int)
    assert hub.tokens.matching(APP.id, "j-1", None) == []
    assert hub.tokens.matching(APP.id, "j-2", None) == [box]
    assert s.handle(sub("b"), 1.0).join == "b"
    assert error(s.handle(sub("a"), 1.0)) == denied("subscribe", "a")

    other = tokens.capability_token(
        {"*": ["subscribe"]}, client_id="mallory", kid=APP.key, secret=APP.secret
    )
    token_auth.refresh(RefreshToken(other), s, box, hub, APP, channels)  # type: ignore[arg-type]
    token_auth.refresh(RefreshToken("garbage"), s, box, hub, APP, channels)  # type: ignore[arg-type]
    first, second = sent(box)
    assert first["data"] == {
        "code": 4009,
        "message": "Authentication error: capability token refresh cannot change client_id",
    }
    assert second["data"]["code"] == 4009
    assert second["data"]["message"].startswith("Authentication error: capability token")
    # The connection keeps the token it had.
    assert s.token is not None
    assert s.token.grant.jti == "j-2"
    assert s.handle(sub("b2"), 1.0).join is None


def test_a_revoked_token_is_refused() -> None:
    from projections.folds.channel import ChannelState, RecordContext
    from projections.folds.revocations import fold_revocation
    from projections.store.kv import Overlay
    from sockudo.events.channel import Origin
    from sockudo.events.users import CapabilityRevoked
    from sockudo.log.partitioning import partition_for

    channels = Channels()
    overlay = Overlay(channels.runtime.store)
    state = ChannelState(overlay)
    now_ms = int(time.time() * 1000)
    ctx = RecordContext("t", 0, 0, now_ms, None, 1, partition_for, False)
    ev = CapabilityRevoked(
        event_id="e1", app_id=APP.id, origin=Origin(node="n"), ttl_ms=60_000, client_id="client-1"
    )
    fold_revocation(state, ctx, ev)
    for cf, pairs in overlay.changes().items():
        for k, v in pairs.items():
            assert v is not None
            channels.runtime.store.put(cf, k, v)
    token = tokens.capability_token(
        {"*": ["subscribe"]}, client_id="client-1", kid=APP.key, secret=APP.secret
    )
    with pytest.raises(Exception, match="capability token has been revoked"):
        token_auth.authenticate(token, APP, channels, time.time())  # type: ignore[arg-type]
    other = tokens.capability_token(
        {"*": ["subscribe"]}, client_id="client-2", kid=APP.key, secret=APP.secret
    )
    assert token_auth.authenticate(other, APP, channels, time.time()).client_id == "client-2"  # type: ignore[arg-type]


def test_close_reasons_fit_a_close_frame() -> None:
    reason = token_auth.close_reason("Authentication error: " + "é" * 100)
    assert len(reason.encode()) <= 123
    assert reason.startswith("Authentication error: é")


def test_fanout_closes_the_revoked_sockets_with_a_farewell_frame() -> None:
    _s, box, hub = connected({"*": ["subscribe"]})
    bystander = Outbox("9.9", APP.id, egress=v2_egress("json"))
    hub.add(bystander)
    hub.set_user("9.9", "client-1")  # same user id, but signed in without a token
    fanout = Fanout(hub)
    d = Delivery(
        app_id=APP.id,
        channel="#capability-revocations",
        event="sockudo:token_expired",
        data=json.dumps({"jti": None, "client_id": "client-1"}),
        data_is_json=True,
        message_id="e1",
        stream_id=None,
        serial=None,
        history_serial=None,
        published_at_ms=1,
        exclude_socket_id=None,
        user_id="client-1",
        client_event=False,
        extras_json=None,
        tags=None,
        kind=CLOSE_REVOKED,
    )
    fanout.deliver([d])
    assert box.close_request == (4009, "capability token revoked")
    assert sent(box) == [
        {"event": "sockudo:token_expired", "data": {"code": 40160, "reason": "revoked"}}
    ]
    assert bystander.close_request is None
    assert hub.tokens.matching(APP.id, "j-1", "client-1") == []


# --- the revocation request ----------------------------------------------------------------------


def test_revocation_bodies() -> None:
    now = 1_000_000.0
    assert parse_revocation(b'{"jti":"j"}', now) == RevocationRequest("j", None, DEFAULT_TTL_S)
    assert parse_revocation(b'{"client_id":"c","ttl_seconds":0}', now) == RevocationRequest(
        None, "c", 1
    )
    assert parse_revocation(
        b'{"jti":"j","client_id":"c","expires_at":1000100,"reason":"leak"}', now
    ) == RevocationRequest("j", "c", 100, "leak")
    assert parse_revocation(b'{"jti":"j","expires_at":5}', now).ttl_s == 1
    assert parse_revocation(b'{"jti":"j","ttl_seconds":99999999999}', now).ttl_s == MAX_TTL_S


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"{}",
        b'{"reason":"x"}',
        b"[1]",
        b"not json",
        b'{"jti":""}',
        b'{"jti":5}',
        b'{"client_id":"' + b"c" * 129 + b'"}',
        b'{"jti":"j","ttl_seconds":-1}',
        b'{"jti":"j","ttl_seconds":1.5}',
        b'{"jti":"j","expires_at":"soon"}',
        b'{"jti":"j","reason":7}',
    ],
)
def test_bad_revocation_bodies_are_400(body: bytes) -> None:
    with pytest.raises(ApiError) as info:
        parse_revocation(body, 0.0)
    assert (info.value.status, info.value.code) == (400, "invalid_input")
