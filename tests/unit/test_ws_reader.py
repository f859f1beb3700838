"""``FrameReader`` judges client frames exactly as wsproto 1.3 (with uvicorn's assembly) does.

The oracle feeds the same bytes to a server-side ``wsproto.connection.Connection`` and joins its
fragments as uvicorn's ``WebsocketBuffer`` does (1009 past the size limit). Both must give the
same messages, control frames and final fault code, whole, byte by byte and in random chunks.
"""

from __future__ import annotations

import os
import random
import struct
from typing import Any

import pytest
from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Ping, Pong, TextMessage

from sockudo.ws import reader
from sockudo.ws.reader import BINARY, CLOSE, FAIL, PING, PONG, TEXT, TOO_BIG, FrameReader, unmask

LIMIT = 70_000


def frame(
    opcode: int,
    payload: bytes,
    *,
    fin: bool = True,
    mask: bytes | None = b"\x11\x22\x33\x44",
    rsv: int = 0,
    length_bytes: int | None = None,
) -> bytes:
    """A client frame; ``length_bytes`` forces a (possibly non-minimal) length encoding."""
    n = len(payload)
    first = bytes(((0x80 if fin else 0) | rsv | opcode,))
    bit = 0x80 if mask is not None else 0
    size = length_bytes if length_bytes is not None else (0 if n < 126 else 2 if n < 65536 else 8)
    if size == 0:
        head = first + bytes((bit | n,))
    elif size == 2:
        head = first + bytes((bit | 126,)) + struct.pack("!H", n)
    else:
        head = first + bytes((bit | 127,)) + struct.pack("!Q", n)
    if mask is None:
        return head + payload
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def close(code: int, reason: bytes = b"") -> bytes:
    return frame(0x8, struct.pack("!H", code) + reason)


def normal(events: list[Any]) -> list[Any]:
    """Faults compared by code only: the reasons are free text."""
    out: list[Any] = []
    for event in events:
        if event[0] == FAIL:
            out.append((FAIL, event[1]))
        elif event[0] == TOO_BIG:
            out.append((TOO_BIG,))
        else:
            out.append(tuple(event))
    return out


def oracle(data: bytes, limit: int = LIMIT) -> list[Any]:
    """What wsproto + uvicorn's message buffer make of ``data``, in FrameReader's terms."""
    conn = Connection(ConnectionType.SERVER)
    conn.receive_data(data)
    out: list[Any] = []
    parts: list[Any] = []
    size = 0
    for event in conn.events():
        if isinstance(event, (TextMessage, BytesMessage)):
            parts.append(event.data)
            size += len(event.data.encode()) if isinstance(event, TextMessage) else len(event.data)
            if size > limit:
                out.append((TOO_BIG,))
                return out
            if event.message_finished:
                if isinstance(event, TextMessage):
                    out.append((TEXT, "".join(parts)))
                else:
                    out.append((BINARY, b"".join(parts)))
                parts, size = [], 0
        elif isinstance(event, Ping):
            out.append((PING, bytes(event.payload)))
        elif isinstance(event, Pong):
            out.append((PONG, bytes(event.payload)))
        elif isinstance(event, CloseConnection):
            # A received close moves the state on; a parse failure leaves it OPEN.
            if conn.state is ConnectionState.REMOTE_CLOSING:
                out.append((CLOSE, event.code, event.reason))
            else:
                out.append((FAIL, event.code))
            return out
    return out


def read(data: bytes, chunks: list[int] | None = None, limit: int = LIMIT) -> list[Any]:
    r = FrameReader(limit)
    out: list[Any] = []
    if chunks is None:
        out += r.feed(data)
    else:
        at = 0
        for n in chunks:
            out += r.feed(data[at : at + n])
            at += n
        out += r.feed(data[at:])
    return normal(out)


def chunkings(data: bytes, seed: int) -> list[list[int] | None]:
    rng = random.Random(seed)
    ways: list[list[int] | None] = [None, [1] * len(data)] if len(data) < 5000 else [None]
    for _ in range(3):
        ways.append([rng.randint(1, 40) for _ in range(len(data) // 10 + 1)])
    return ways


def agree(data: bytes, limit: int = LIMIT) -> list[Any]:
    expected = oracle(data, limit)
    for i, way in enumerate(chunkings(data, seed=len(data))):
        assert read(data, way, limit) == expected, f"chunking {i}"
    return expected


VALID = {
    "empty text": frame(0x1, b""),
    "text": frame(0x1, "héllo wörld".encode()),
    "binary 125": frame(0x2, os.urandom(125)),
    "binary 126": frame(0x2, os.urandom(126)),
    "binary 65535": frame(0x2, bytes(range(256)) * 255 + bytes(range(255))),
    "binary 65536": frame(0x2, bytes(65536)),
    "zero mask": frame(0x1, b"plain", mask=b"\0\0\0\0"),
    "ping pong": frame(0x9, b"p") + frame(0xA, b"") + frame(0x9, b"x" * 125),
    "fragmented text": frame(0x1, b"ab", fin=False)
    + frame(0x9, b"mid")
    + frame(0x0, "é".encode()[:1], fin=False)
    + frame(0x0, "é".encode()[1:] + b"z"),
    "fragmented binary": frame(0x2, b"\x00", fin=False)
    + frame(0x0, b"", fin=False)
    + frame(0x0, b"\xff"),
    "close with reason": frame(0x1, b"x") + close(1000, "bye ✓".encode()),
    "close without code": frame(0x8, b""),
    "close 3000": close(3000),
    "close 4999": close(4999),
}


@pytest.mark.parametrize("name", sorted(VALID))
def test_valid_streams_read_as_wsproto_reads_them(name: str) -> None:
    events = agree(VALID[name])
    assert events
    assert all(e[0] != FAIL for e in events)


@pytest.mark.parametrize("code", [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013])
def test_known_close_codes_are_closes(code: int) -> None:
    assert agree(close(code, b"r")) == [(CLOSE, code, "r")]


FAULTS = {
    "rsv1": frame(0x1, b"x", rsv=0x40),
    "rsv3": frame(0x1, b"x", rsv=0x10),
    "unmasked": frame(0x1, b"x", mask=None),
    "fragmented ping": frame(0x9, b"x", fin=False),
    "ping of 126": frame(0x9, b"x" * 126),
    "2-byte length for 5": frame(0x2, b"12345", length_bytes=2),
    "2-byte length for 125": frame(0x2, b"y" * 125, length_bytes=2),
    "8-byte length for 65535": frame(0x2, bytes(65535), length_bytes=8),
    "8-byte length for 300": frame(0x2, b"y" * 300, length_bytes=8),
    "8-byte length MSB": bytes((0x82, 0xFF)) + b"\x80" + bytes(7) + b"mask",
    "stray continuation": frame(0x0, b"x"),
    "text inside fragments": frame(0x1, b"a", fin=False) + frame(0x1, b"b"),
    "close of 1 byte": frame(0x8, b"\x03"),
    "bad utf-8": frame(0x1, b"\xff\xfe"),
    "bad utf-8 in a fragment": frame(0x1, b"ok", fin=False) + frame(0x0, b"\xc3\x28", fin=False),
    "bad close reason": close(1000, b"\xff"),
    **{f"opcode {op:#x}": frame(op, b"") for op in (3, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF)},
    **{f"close {c}": close(c) for c in (0, 999, 1004, 1005, 1006, 1014, 1015, 1016, 2999, 5000)},
}


@pytest.mark.parametrize("name", sorted(FAULTS))
def test_faults_end_with_wsproto_s_code(name: str) -> None:
    data = frame(0x1, b"before") + FAULTS[name] + frame(0x1, b"after")
    events = agree(data)
    assert events[0] == (TEXT, "before")
    assert events[-1][0] == FAIL
    assert events[-1][1] in (1002, 1007)


def test_a_fault_or_close_ends_reading() -> None:
    r = FrameReader(LIMIT)
    assert normal(r.feed(close(1000) + frame(0x1, b"later"))) == [(CLOSE, 1000, "")]
    assert r.done
    assert r.feed(frame(0x1, b"more")) == []
    r = FrameReader(LIMIT)
    assert normal(r.feed(frame(0x1, b"x", mask=None))) == [(FAIL, 1002)]
    assert r.feed(frame(0x1, b"more")) == []


def test_size_limit_whole_and_across_fragments() -> None:
    assert agree(frame(0x2, bytes(100)), limit=100) == [(BINARY, bytes(100))]
    assert agree(frame(0x2, bytes(101)), limit=100) == [(TOO_BIG,)]
    split = frame(0x1, b"a" * 60, fin=False) + frame(0x0, b"b" * 41)
    assert agree(split, limit=100) == [(TOO_BIG,)]
    # FrameReader refuses as soon as the header announces too much; wsproto only once that
    # many bytes arrived. With the payload never sent, only FrameReader has an answer yet.
    r = FrameReader(100)
    assert normal(r.feed(frame(0x2, bytes(101))[:8])) == [(TOO_BIG,)]


def test_random_streams_agree_with_wsproto() -> None:
    rng = random.Random(20261128)
    for _ in range(300):
        parts: list[bytes] = []
        for _ in range(rng.randint(1, 6)):
            kind = rng.random()
            if kind < 0.35:
                text = "".join(rng.choice("aé✓\U0001f600 ") for _ in range(rng.randint(0, 200)))
                parts.append(frame(0x1, text.encode(), mask=os.urandom(4)))
            elif kind < 0.55:
                parts.append(frame(0x2, os.urandom(rng.randint(0, 70_000)), mask=os.urandom(4)))
            elif kind < 0.7:
                data = "fragmented ✓ text".encode()
                cut = rng.randint(0, len(data))
                parts.append(
                    frame(0x1, data[:cut], fin=False)
                    + frame(0x9, os.urandom(rng.randint(0, 125)))
                    + frame(0x0, data[cut:])
                )
            elif kind < 0.85:
                parts.append(frame(rng.choice((0x9, 0xA)), os.urandom(rng.randint(0, 125))))
            elif kind < 0.95:
                parts.append(rng.choice(list(FAULTS.values())))
            else:
                parts.append(close(rng.choice((1000, 1001, 3000, 4000, 999))))
        data = b"".join(parts)
        expected = oracle(data, 100_000)
        assert read(data, None, 100_000) == expected
        way = [rng.randint(1, 3000) for _ in range(len(data) // 1000 + 1)]
        assert read(data, way, 100_000) == expected


@pytest.mark.parametrize("n", [0, 1, 3, 4, 5, 127, 300])
def test_unmask_is_bytewise_xor(n: int) -> None:
    payload, mask = os.urandom(n), os.urandom(4)
    assert unmask(payload, mask) == bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    assert unmask(payload, b"\0\0\0\0") is payload


def test_close_payload_defaults() -> None:
    assert reader.close_payload(b"") == (CLOSE, 1005, "")
