"""``FastHandshake`` does what wsproto's ``H11Handshake`` does, event for event, byte for byte."""

from __future__ import annotations

from typing import Any

import pytest
from wsproto.connection import ConnectionState, ConnectionType
from wsproto.events import (
    AcceptConnection,
    CloseConnection,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)
from wsproto.handshake import H11Handshake
from wsproto.utilities import RemoteProtocolError

from sockudo.node.fast_upgrade import FastHandshake

KEY = b"dGhlIHNhbXBsZSBub25jZQ=="


def upgrade(*extra: bytes, target: bytes = b"/app/app-key?protocol=2", drop: bytes = b"") -> bytes:
    """A request as uvicorn re-serialises it for the WebSocket protocol."""
    headers = [
        b"host: 127.0.0.1:6001",
        b"upgrade: websocket",
        b"connection: Upgrade",
        b"sec-websocket-key: " + KEY,
        b"sec-websocket-version: 13",
        b"origin: https://example.com",
        *extra,
    ]
    lines = [
        b"GET " + target + b" HTTP/1.1",
        *(h for h in headers if not drop or not h.startswith(drop)),
    ]
    return b"\r\n".join(lines) + b"\r\n\r\n"


def outcome(shake: Any, *chunks: bytes) -> tuple[str, Any]:
    try:
        for chunk in chunks:
            shake.receive_data(chunk)
        return "events", list(shake.events())
    except RemoteProtocolError as exc:
        hint = exc.event_hint
        return "error", (type(hint).__name__, getattr(hint, "status_code", None), str(exc))


def both(*chunks: bytes) -> tuple[FastHandshake, H11Handshake, tuple[str, Any]]:
    fast, slow = FastHandshake(), H11Handshake(ConnectionType.SERVER)
    got, want = outcome(fast, *chunks), outcome(slow, *chunks)
    assert got == want
    return fast, slow, got


@pytest.mark.parametrize(
    "extra",
    [
        (),
        (b"sec-websocket-protocol: chat, superchat",),
        (b"sec-websocket-extensions: permessage-deflate; client_max_window_bits",),
        (b"user-agent: pusher-js 8.4.0", b"x-forwarded-for: 10.0.0.1, 10.0.0.2"),
        (b"connection: keep-alive, Upgrade",),
        (b"empty:",),
    ],
)
def test_a_valid_upgrade_gives_the_same_request_and_101(extra: tuple[bytes, ...]) -> None:
    fast, _slow, (kind, events) = both(upgrade(*extra))
    assert kind == "events"
    assert len(events) == 1
    assert isinstance(events[0], Request)
    assert fast._h11 is None  # the fast path took it
    for accept in (
        AcceptConnection(),
        AcceptConnection(extra_headers=[(b"x-node", b"a")]),
    ):
        a, b = FastHandshake(), H11Handshake(ConnectionType.SERVER)
        for shake in (a, b):
            shake.receive_data(upgrade(*extra))
            list(shake.events())
        assert a.send(accept) == b.send(accept)
        assert a.state is b.state is ConnectionState.OPEN
        assert a.connection is not None
        assert b.connection is not None


def test_subprotocol_and_extensions_answers_match() -> None:
    from wsproto.extensions import PerMessageDeflate

    request = upgrade(
        b"sec-websocket-protocol: chat, superchat",
        b"sec-websocket-extensions: permessage-deflate",
    )
    for accept in (
        AcceptConnection(subprotocol="superchat"),
        AcceptConnection(extensions=[PerMessageDeflate()]),
    ):
        a, b = FastHandshake(), H11Handshake(ConnectionType.SERVER)
        for shake in (a, b):
            shake.receive_data(request)
            list(shake.events())
        assert a.send(accept) == b.send(accept)


@pytest.mark.parametrize(
    "request_bytes",
    [
        upgrade(drop=b"sec-websocket-key"),
        upgrade(drop=b"sec-websocket-version"),
        upgrade(b"sec-websocket-version: 8", drop=b"sec-websocket-version"),
        upgrade(drop=b"upgrade:"),
        upgrade(drop=b"connection"),
        upgrade(drop=b"host"),
        upgrade(b"host: other"),
        upgrade(b"content-length: 0"),
        upgrade(b"bad header: x"),
        upgrade(b" folded"),
        upgrade(target=b"/caf\xc3\xa9"),
        upgrade().replace(b"HTTP/1.1", b"HTTP/1.0"),
        upgrade().replace(b"GET ", b"POST "),
        upgrade(b"x-big: " + b"a" * 20_000),
        b"not http at all\r\n\r\n",
    ],
    ids=[
        "no-key",
        "no-version",
        "old-version",
        "no-upgrade",
        "no-connection",
        "no-host",
        "two-hosts",
        "content-length",
        "bad-name",
        "folded",
        "non-ascii-target",
        "http-1.0",
        "post",
        "oversize",
        "garbage",
    ],
)
def test_anything_else_is_judged_by_wsproto(request_bytes: bytes) -> None:
    both(request_bytes)


def test_a_request_in_pieces() -> None:
    raw = upgrade()
    _fast, _slow, (kind, events) = both(raw[:10], raw[10:50], raw[50:])
    assert kind == "events"
    assert isinstance(events[0], Request)


def test_a_rejection_is_written_by_h11_as_before() -> None:
    a, b = FastHandshake(), H11Handshake(ConnectionType.SERVER)
    for shake in (a, b):
        shake.receive_data(upgrade())
        list(shake.events())
    reject = RejectConnection(
        status_code=400, headers=[(b"content-type", b"text/plain")], has_body=True
    )
    assert a.send(reject) == b.send(reject)
    body = RejectData(data=b"Unsupported format", body_finished=True)
    assert a.send(body) == b.send(body)
    assert a.state is b.state is ConnectionState.CLOSED


def test_frames_flow_after_the_fast_accept() -> None:
    shake = FastHandshake()
    shake.receive_data(upgrade())
    list(shake.events())
    shake.send(AcceptConnection())
    conn = shake.connection
    assert conn is not None
    # A masked text frame, then a close frame, as a client sends them.
    mask = b"\x01\x02\x03\x04"
    payload = bytes(b ^ mask[i % 4] for i, b in enumerate(b"hello"))
    conn.receive_data(b"\x81\x85" + mask + payload + b"\x88\x80" + mask)
    events = list(conn.events())
    assert isinstance(events[0], TextMessage)
    assert events[0].data == "hello"
    assert isinstance(events[1], CloseConnection)


def test_bytes_sent_before_the_answer_reach_the_connection() -> None:
    mask = b"\x00\x00\x00\x00"
    frame = b"\x81\x82" + mask + b"hi"
    shake = FastHandshake()
    shake.receive_data(upgrade() + frame)
    list(shake.events())
    shake.send(AcceptConnection())
    assert shake.connection is not None
    events = list(shake.connection.events())
    assert [e.data for e in events if isinstance(e, TextMessage)] == ["hi"]
