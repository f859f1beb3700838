"""The native V2 heartbeat schedule (spec 02 §10.1) and the session's side of it."""

from __future__ import annotations

import math

from sockudo.config import AppConfig
from sockudo.ws import direct
from sockudo.ws.egress import v2
from sockudo.ws.framing import PING_FRAME
from sockudo.ws.heartbeat import Beat, NativeHeartbeat, ping_interval
from sockudo.ws.session import Session

APP = AppConfig(id="app-id", key="app-key", secret="app-secret")
NEVER = direct.NEVER


def test_interval_is_the_larger_of_ping_interval_and_half_the_activity_timeout() -> None:
    assert ping_interval(30, 120) == 60  # the defaults
    assert ping_interval(30, 20) == 30
    assert ping_interval(1, 3) == 1.5


def test_ping_frame_is_a_final_empty_ping() -> None:
    assert PING_FRAME == b"\x89\x00"


def test_pings_every_interval_while_frames_answer_them() -> None:
    hb = NativeHeartbeat(60, 30, now=0.0)
    assert hb.next_deadline() == 60
    assert hb.tick(59.9, NEVER) is Beat.NOTHING
    assert hb.tick(60.0, NEVER) is Beat.PING
    assert hb.next_deadline() == 90  # the pong deadline comes first
    assert hb.tick(90.0, 60.5) is Beat.NOTHING  # the pong came at 60.5
    assert hb.next_deadline() == 120
    assert hb.tick(120.0, 60.5) is Beat.PING
    assert hb.tick(130.0, 125.0) is Beat.NOTHING  # any frame after the ping answers it
    assert hb.tick(180.0, 125.0) is Beat.PING


def test_unanswered_ping_times_out_after_pong_timeout() -> None:
    hb = NativeHeartbeat(60, 30, now=0.0)
    assert hb.tick(60.0, 10.0) is Beat.PING  # a frame before the ping does not answer it
    assert hb.tick(89.9, 59.0) is Beat.NOTHING
    assert hb.tick(90.0, 59.0) is Beat.TIMEOUT
    # The socket closes: nothing is scheduled any more (the endpoint then waits without timeout).
    assert hb.next_deadline() == math.inf
    assert hb.tick(200.0, 59.0) is Beat.NOTHING


def test_a_short_interval_never_postpones_the_oldest_deadline() -> None:
    hb = NativeHeartbeat(1, 3, now=0.0)
    assert hb.tick(1.0, NEVER) is Beat.PING
    assert hb.tick(2.0, NEVER) is Beat.PING
    assert hb.tick(3.0, NEVER) is Beat.PING
    assert hb.next_deadline() == 4.0  # ping at 1 + 3 s
    assert hb.tick(4.0, NEVER) is Beat.TIMEOUT


def test_a_stalled_loop_sends_one_ping_not_a_burst() -> None:
    hb = NativeHeartbeat(10, 30, now=0.0)
    assert hb.tick(55.0, NEVER) is Beat.PING
    assert hb.next_deadline() == 65.0


def test_session_without_app_heartbeat_never_sends_sockudo_ping() -> None:
    s = Session("1.2", APP, activity_timeout=2, now=0.0, out=v2("json"), app_heartbeat=False)
    assert s.next_deadline() == math.inf
    assert s.tick(100.0).frames == []
    assert s.tick(100.0).close is None


def test_session_fallback_is_unchanged_by_default() -> None:
    s = Session("1.2", APP, activity_timeout=2, now=0.0, out=v2("json"), pong_timeout=5)
    assert s.next_deadline() == 2.0
    assert s.tick(2.0).frames == ['{"event":"sockudo:ping","data":{}}']
    assert s.next_deadline() == 7.0
    assert s.tick(7.0).close == (4201, "Pong reply not received in time")


def test_websocket_ping_answers_a_pending_pusher_ping() -> None:
    # Spec 01 §3.2: a WebSocket protocol Ping answers a pending server ping, like pusher:pong.
    s = Session("1.2", APP, activity_timeout=10, now=0.0)
    assert s.tick(10.0).frames  # pusher:ping
    s.saw_frames(last_frame=12.0, last_ping=NEVER)  # a Pong control frame: activity only
    assert s.ping_sent_at == 10.0
    assert s.last_activity == 12.0
    s.saw_frames(last_frame=13.0, last_ping=13.0)
    assert s.ping_sent_at is None
    assert s.next_deadline() == 23.0
