"""Direct mode: frames written straight to a real asyncio transport, shared and coalesced."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
import wsproto.frame_protocol as fp

from projections.folds.state import Delivery
from sockudo.node.fanout import Fanout
from sockudo.node.hub import Hub, Outbox
from sockudo.ws.framing import encode_frame, payload_length

APP_ID = "app-id"


def delivery(channel: str = "orders", n: int = 1, data: str | None = None) -> Delivery:
    return Delivery(
        app_id=APP_ID,
        channel=channel,
        event="order.created",
        data=json.dumps({"id": n}, separators=(",", ":")) if data is None else data,
        data_is_json=False,
        message_id=f"m{n}",
        stream_id="s1",
        serial=n,
        history_serial=n,
        published_at_ms=1,
        exclude_socket_id=None,
        user_id=None,
        client_event=False,
        extras_json=None,
        tags=None,
    )


def decode(data: bytes) -> list[str | bytes]:
    """Frames as a client parses them (wsproto's frame parser, client side)."""
    proto = fp.FrameProtocol(client=True, extensions=[])
    proto.receive_bytes(data)
    out: list[str | bytes] = []
    for frame in proto.received_frames():
        assert frame.frame_finished
        assert frame.message_finished
        out.append(frame.payload)
    return out


@pytest.mark.parametrize("size", [0, 5, 125, 126, 65535, 65536, 70000])
def test_encode_frame_lengths_round_trip(size: int) -> None:
    text = "é" * (size // 2) + "x" * (size % 2)
    wire = encode_frame(text)
    assert decode(wire) == [text]
    assert payload_length(wire) == len(text.encode())
    binary = bytes(range(256)) * (size // 256) + bytes(size % 256)
    assert decode(encode_frame(binary)) == [binary]
    assert payload_length(encode_frame(binary)) == size


class Peer:
    """The client end of a socketpair whose server end is a real asyncio transport."""

    def __init__(self, sock: socket.socket, transport: asyncio.WriteTransport) -> None:
        self.sock = sock
        self.transport = transport

    async def read_all(self) -> bytes:
        await asyncio.sleep(0.05)
        chunks = []
        while True:
            try:
                chunk = self.sock.recv(1 << 20)
            except BlockingIOError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)


@pytest.fixture
async def peer() -> AsyncIterator[Peer]:
    server_sock, client_sock = socket.socketpair()
    client_sock.setblocking(False)
    # A small receive buffer makes "the peer stopped reading" reachable with little data.
    client_sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    loop = asyncio.get_running_loop()
    transport, _ = await loop.connect_accepted_socket(asyncio.Protocol, server_sock)
    assert isinstance(transport, asyncio.WriteTransport)
    yield Peer(client_sock, transport)
    transport.close()
    client_sock.close()


def spy_writes(peer: Peer) -> list[bytes]:
    """Every ``write`` to the peer's transport from now on, still passed through."""
    writes: list[bytes] = []
    real_write = peer.transport.write

    def spy(data: Any) -> None:
        writes.append(bytes(data))
        real_write(data)

    peer.transport.write = spy  # type: ignore[method-assign]
    return writes


async def test_direct_outbox_writes_frames_in_order(peer: Peer) -> None:
    box = Outbox("1.1", APP_ID)
    box.attach(peer.transport)
    assert box.direct
    assert box.offer('{"event":"a"}')
    assert box.offer(b"\x00\xff")
    assert len(box) == 0  # nothing queued: the transport has it
    assert decode(await peer.read_all()) == ['{"event":"a"}', b"\x00\xff"]


async def test_fanout_shares_one_encoding_and_coalesces_a_batch(peer: Peer) -> None:
    hub = Hub()
    direct = Outbox("1.1", APP_ID)
    direct.attach(peer.transport)
    queued = Outbox("1.2", APP_ID)
    for box in (direct, queued):
        hub.add(box)
        hub.subscribe(box.socket_id, "orders")
    writes = spy_writes(peer)
    Fanout(hub).deliver([delivery(n=1), delivery(n=2), delivery(channel="other", n=3)])
    # Two messages for this socket in one fold batch leave in one write.
    assert len(writes) == 1
    received = decode(await peer.read_all())
    assert received == queued.take()  # direct and queued sockets see the same frames
    assert [json.loads(f)["data"] for f in received] == ['{"id":1}', '{"id":2}']

    Fanout(hub).deliver([delivery(n=4)])
    assert len(writes) == 2


async def test_direct_socket_that_stops_reading_is_closed_with_4100(peer: Peer) -> None:
    hub = Hub()
    box = Outbox("1.1", APP_ID, max_chars=64 * 1024)
    box.attach(peer.transport)
    hub.add(box)
    hub.subscribe("1.1", "orders")
    fanout = Fanout(hub)
    big = delivery(data="x" * 8000)
    for _ in range(200):  # 1.6 MB into a peer that never reads
        fanout.deliver([big])
        if box.close_request is not None:
            break
    assert box.close_request == (4100, "Over capacity")
    assert fanout.slow_closed == 1
    assert peer.transport.get_write_buffer_size() <= 64 * 1024
    assert not box.offer("late")  # closing: nothing more is written


async def test_a_socket_whose_peer_left_is_not_closed_as_slow(peer: Peer) -> None:
    hub = Hub()
    box = Outbox("1.1", APP_ID)
    box.attach(peer.transport)
    hub.add(box)
    hub.subscribe("1.1", "orders")
    fanout = Fanout(hub)
    peer.transport.close()  # the peer reset the connection: the endpoint is yet to see it
    fanout.deliver([delivery(n=1)])
    fanout.deliver([delivery(n=2), delivery(n=3)])  # through hold/release too
    # Refused frames, but no "slow socket" close, count or log line (a churn of clients that
    # left gave one per socket).
    assert box.closing
    assert (box.close_request, fanout.slow_closed) == (None, 0)


async def test_release_of_an_oversized_batch_closes_instead_of_writing(peer: Peer) -> None:
    box = Outbox("1.1", APP_ID, max_chars=20_000)
    box.attach(peer.transport)
    peer.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
    assert box.hold()
    assert not box.hold()  # already holding: the first holder releases
    assert box.offer("a" * 12_000)  # one frame always fits
    assert not box.offer("b" * 12_000)  # past the bound while held
    box.release()
    assert box.close_request is None
    received = decode(await peer.read_all())
    assert received == ["a" * 12_000]


async def test_held_batches_to_a_socket_that_stops_reading_close_it_with_4100(peer: Peer) -> None:
    hub = Hub()
    box = Outbox("1.1", APP_ID, max_chars=64 * 1024)
    box.attach(peer.transport)
    hub.add(box)
    hub.subscribe("1.1", "orders")
    fanout = Fanout(hub)
    big = delivery(data="x" * 8000)
    for _ in range(100):  # batches of two: the writes go through hold/release
        fanout.deliver([big, big])
        if box.close_request is not None:
            break
    assert box.close_request == (4100, "Over capacity")
    assert fanout.slow_closed == 1
    assert peer.transport.get_write_buffer_size() <= 64 * 1024


async def test_a_batch_of_frames_leaves_in_one_write(peer: Peer) -> None:
    box = Outbox("1.1", APP_ID)
    box.attach(peer.transport)
    writes = spy_writes(peer)
    with box.batch():
        for n in range(5):
            assert box.offer(f'{{"n":{n}}}')
        assert writes == []  # held until the batch ends
    assert len(writes) == 1
    assert decode(await peer.read_all()) == [f'{{"n":{n}}}' for n in range(5)]
    with box.batch():  # nothing offered: nothing written
        pass
    assert len(writes) == 1


async def test_a_batch_refuses_the_frame_that_would_pass_the_send_bound(peer: Peer) -> None:
    # The caller closes the socket with 4100 on a refusal (streams._send_result does).
    box = Outbox("1.1", APP_ID, max_chars=1000)
    box.attach(peer.transport)
    with box.batch():
        assert box.offer("x" * 600)
        assert not box.offer("y" * 600)  # refused while held: the batch would pass the bound
    assert box.close_request is None  # what was held fits and was written
    assert decode(await peer.read_all()) == ["x" * 600]
