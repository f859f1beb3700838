"""Delta compression core (spec 02 §6): encoders checked against the real client decoders.

Every delta is applied with sockudo-python 2.2.0's own ``FossilDelta.apply`` or the
``vcdiff_decoder`` package it uses for xdelta3; the end-to-end tests drive the client's
``SockudoClient._handle_raw_message`` (its real delta manager) with the frames the state returns.
"""

from __future__ import annotations

import base64
import copy
import json
import random
from typing import Any

import pytest
import sockudo_python.client as client_module
import vcdiff_decoder
from sockudo_python.client import (
    DeltaOptions,
    FossilDelta,
    SockudoClient,
    SockudoEvent,
    SockudoOptions,
)

from sockudo.ws.delta import (
    ChannelDeltaState,
    DeltaOption,
    enabled_payload,
    encode_delta,
    fossil_checksum,
    fossil_delta,
    full_form,
    negotiate_algorithm,
    parse_subscribe_delta,
    vcdiff_delta,
)
from sockudo.ws.wire import Data, Envelope, encode_json

SEED = 20240607

# --- generators -----------------------------------------------------------------------------

_WORDS = ["alpha", "beta", "price", "bid", "ask", "zürich", "東京", "🚀", "naïve", "x", ""]


def _leaf(rng: random.Random) -> Any:
    kind = rng.randrange(7)
    if kind == 0:
        return rng.randrange(-(10**6), 10**6)
    if kind == 1:
        return round(rng.uniform(-1000, 1000), rng.randrange(0, 6))
    if kind == 2:
        return rng.choice([True, False, None])
    if kind == 3:
        return " ".join(rng.choice(_WORDS) for _ in range(rng.randrange(1, 6)))
    if kind == 4:
        return "".join(chr(rng.randrange(0x20, 0x2FFF)) for _ in range(rng.randrange(0, 12)))
    return rng.choice(_WORDS)


def _value(rng: random.Random, depth: int = 0) -> Any:
    if depth > 3 or rng.random() < 0.3:
        return _leaf(rng)
    if rng.random() < 0.5:
        return [_value(rng, depth + 1) for _ in range(rng.randrange(0, 8))]
    return {f"k{rng.randrange(50)}": _value(rng, depth + 1) for _ in range(rng.randrange(0, 8))}


def _mutate(rng: random.Random, value: Any) -> Any:
    """A copy with a few leaves changed, members added or removed."""
    out = copy.deepcopy(value)
    for _ in range(rng.randrange(1, 4)):
        out = _mutate_once(rng, out)
    return out


def _mutate_once(rng: random.Random, value: Any) -> Any:
    if isinstance(value, dict) and value:
        key = rng.choice(list(value))
        roll = rng.random()
        if roll < 0.15:
            del value[key]
        elif roll < 0.3:
            value[f"n{rng.randrange(1000)}"] = _leaf(rng)
        else:
            value[key] = _mutate_once(rng, value[key])
        return value
    if isinstance(value, list) and value:
        i = rng.randrange(len(value))
        roll = rng.random()
        if roll < 0.15:
            del value[i]
        elif roll < 0.3:
            value.insert(i, _leaf(rng))
        else:
            value[i] = _mutate_once(rng, value[i])
        return value
    return _leaf(rng)


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _ticker(rng: random.Random, n: int = 40) -> dict[str, Any]:
    return {
        "symbol": "BTC-USD",
        "book": [
            {"px": round(30000 + rng.uniform(-50, 50), 2), "qty": rng.randrange(1, 500), "id": i}
            for i in range(n)
        ],
        "venue": "Zürich Börse 東京",
        "ts": 1_700_000_000_000 + rng.randrange(10**6),
    }


def _edit_bytes(rng: random.Random, data: bytes) -> bytes:
    """Random splices: replace, insert or delete short spans anywhere."""
    out = bytearray(data)
    for _ in range(rng.randrange(1, 6)):
        pos = rng.randrange(len(out) + 1)
        span = rng.randrange(0, 20)
        new = bytes(rng.randrange(32, 127) for _ in range(rng.randrange(0, 20)))
        out[pos : pos + span] = new
    return bytes(out)


def _pairs() -> list[tuple[bytes, bytes]]:
    rng = random.Random(SEED)
    pairs: list[tuple[bytes, bytes]] = [
        (b"", b""),
        (b"", b'{"event":"a","data":{"x":1}}'),
        (b'{"event":"a","data":{"x":1}}', b""),
        (b"short", b"shorter still"),
        (b"x" * 300, b"x" * 300),
        (b" " * 500, b"{" + b" " * 700 + b"}"),  # RUN instructions
        (b"a" * 16, b"a" * 16 + b"b"),
        (("Grüße, 世界 🌍 " * 30).encode(), ("Grüße, 世界 🌏 " * 31).encode()),
    ]
    for _ in range(120):  # similar JSON documents
        doc = _value(rng)
        pairs.append((_dumps(doc), _dumps(_mutate(rng, doc))))
    for _ in range(40):  # realistic ticker frames, a few prices moving
        doc = _ticker(rng)
        nxt = copy.deepcopy(doc)
        for row in rng.sample(nxt["book"], 3):
            row["px"] = round(row["px"] + rng.uniform(-1, 1), 2)
        pairs.append((_dumps(doc), _dumps(nxt)))
    for _ in range(60):  # byte-level edits of JSON text
        base = _dumps(_value(rng))
        pairs.append((base, _edit_bytes(rng, base)))
    for _ in range(30):  # unrelated documents
        pairs.append((_dumps(_value(rng)), _dumps(_value(rng))))
    for _ in range(20):  # identical texts
        text = _dumps(_value(rng))
        pairs.append((text, text))
    big = _dumps(_ticker(rng, 1500))  # ~70 KiB: multi-byte varints and base-64 offsets
    pairs.append((big, big.replace(b'"id":700', b'"id":"seven hundred"')))
    return pairs


PAIRS = _pairs()


# --- encoders -------------------------------------------------------------------------------


def _c_checksum(data: bytes) -> int:
    """Fossil's checksum with C ``unsigned`` (32-bit) arithmetic, as the JS/C decoders do."""
    sums = [0, 0, 0, 0]
    n4 = len(data) - len(data) % 4
    for i in range(n4):
        sums[i % 4] = (sums[i % 4] + data[i]) & 0xFFFFFFFF
    total = (sums[3] + (sums[2] << 8) + (sums[1] << 16) + (sums[0] << 24)) & 0xFFFFFFFF
    for j, byte in enumerate(data[n4:]):
        total = (total + (byte << (24 - 8 * j))) & 0xFFFFFFFF
    return total


def _apply_fossil_32bit(base: bytes, delta: bytes) -> bytes:
    """Fossil's C ``delta_apply`` semantics: integers read into a 32-bit unsigned (the JS
    client's ``getInt`` is the same), checksum compared modulo 2**32."""
    digits = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz~"
    pos = 0

    def get_int() -> int:
        nonlocal pos
        v = 0
        while pos < len(delta) and delta[pos] in digits:
            v = ((v << 6) + digits.index(delta[pos])) & 0xFFFFFFFF
            pos += 1
        return v

    limit = get_int()
    assert delta[pos : pos + 1] == b"\n"
    pos += 1
    out = bytearray()
    while pos < len(delta):
        cnt = get_int()
        op = delta[pos : pos + 1]
        pos += 1
        if op == b"@":
            ofst = get_int()
            assert delta[pos : pos + 1] == b","
            pos += 1
            assert ofst + cnt <= len(base)
            out += base[ofst : ofst + cnt]
        elif op == b":":
            out += delta[pos : pos + cnt]
            pos += cnt
        elif op == b";":
            assert cnt == _c_checksum(bytes(out)), "bad checksum"
            assert len(out) == limit
            return bytes(out)
        else:
            raise AssertionError(f"unknown operator {op!r}")
    raise AssertionError("unterminated delta")


@pytest.mark.parametrize("index", range(len(PAIRS)))
def test_fossil_roundtrips_through_the_python_client(index: int) -> None:
    base, target = PAIRS[index]
    delta = fossil_delta(base, target)
    assert FossilDelta.apply(base, delta) == target
    assert _apply_fossil_32bit(base, delta) == target


@pytest.mark.parametrize("index", range(len(PAIRS)))
def test_xdelta3_roundtrips_through_vcdiff_decoder(index: int) -> None:
    base, target = PAIRS[index]
    delta = vcdiff_delta(base, target)
    assert vcdiff_decoder.decode(base, delta) == target
    assert encode_delta("xdelta3", base, target) == delta


def test_vcdiff_is_plain_rfc3284() -> None:
    base, target = PAIRS[-1]
    delta = vcdiff_delta(base, target)
    assert delta[:5] == b"\xd6\xc3\xc4\x00\x00"  # magic, version 0, no compressor/table/app hdr
    parsed = vcdiff_decoder.parse_delta(delta)
    assert len(parsed.windows) == 1
    window = parsed.windows[0]
    assert window.win_indicator == 0x01  # VCD_SOURCE only: no VCD_TARGET, no Adler-32
    assert (window.source_segment_position, window.source_segment_size) == (0, len(base))
    assert window.delta_indicator == 0
    assert not window.has_checksum
    assert len(delta) < 200


def test_fossil_format_shape() -> None:
    assert fossil_delta(b"", b"") == b"0\n0;"
    assert fossil_delta(b"", b"abc") == b"3\n3:abc" + b"1XObC0;"
    base = b'{"event":"price","data":{"px":1.25,"qty":100,"venue":"somewhere"},"sequence":4}'
    target = base.replace(b"1.25", b"1.5").replace(b":4}", b":5}")
    delta = fossil_delta(base, target)
    header, _, body = delta.partition(b"\n")
    assert len(target) == 78
    assert header == b"1E"  # 78 in Fossil base-64 digits
    assert body.startswith(b"W@0,")  # 32 bytes copied from offset 0
    assert body.endswith(b";")


def test_fossil_checksum_is_the_clients_unwrapped_sum() -> None:
    rng = random.Random(SEED)
    for n in [*range(40), 1000, 4099]:
        data = bytes(rng.randrange(256) for _ in range(n))
        assert fossil_checksum(data) == FossilDelta._checksum(data)
        assert fossil_checksum(data) & 0xFFFFFFFF == _c_checksum(data)


def test_similar_json_compresses() -> None:
    rng = random.Random(SEED + 1)
    doc = _ticker(rng)
    nxt = copy.deepcopy(doc)
    nxt["book"][7]["px"] += 0.5
    base, target = _dumps(doc), _dumps(nxt)
    assert len(fossil_delta(base, target)) < len(target) // 20
    assert len(vcdiff_delta(base, target)) < len(target) // 20


def test_encode_delta_rejects_unknown_algorithm() -> None:
    with pytest.raises(ValueError, match="unknown delta algorithm"):
        encode_delta("bsdiff", b"", b"")  # type: ignore[arg-type]


# --- full form ------------------------------------------------------------------------------


def test_full_form_appends_sequence_as_last_member() -> None:
    assert full_form('{"event":"a","data":{"x":"}"}}', 7) == (
        '{"event":"a","data":{"x":"}"},"sequence":7}'
    )
    assert full_form("{}", 0) == '{"sequence":0}'
    with pytest.raises(ValueError, match="object"):
        full_form("[1]", 0)


# --- state ----------------------------------------------------------------------------------


def _frames(seed: int, count: int, *, rows: int = 12, channel: str = "prices") -> list[str]:
    """Frames of a ticker channel: a book whose one or two prices move per message, as
    ``encode_json`` writes them (no ``sequence``)."""
    rng = random.Random(seed)
    book = [{"px": round(100 + i + rng.uniform(0, 0.9), 2), "qty": i * 10} for i in range(rows)]
    out = []
    for n in range(count):
        for row in rng.sample(book, min(2, rows)):
            row["px"] = round(row["px"] + rng.uniform(-0.5, 0.5), 2)
        payload = {"n": n, "book": book, "note": "Grüße 🚀"}
        out.append(
            encode_json(
                Envelope(
                    event="price.updated",
                    channel=channel,
                    data=Data.of_value(copy.deepcopy(payload)),
                    message_id=f"m-{n}",
                    stream_id="s-1",
                    serial=100 + n,
                )
            )
        )
    return out


def _send(state: ChannelDeltaState, frame: str, n: int) -> str:
    return state.next_frame(
        frame, "price.updated", message_id=f"m-{n}", stream_id="s-1", serial=100 + n
    )


def _is_delta(frame: str) -> bool:
    return frame.startswith('{"event":"sockudo:delta"')


def _kinds(frames: list[str]) -> str:
    return "".join("D" if _is_delta(f) else "F" for f in frames)


def test_full_delta_pattern() -> None:
    state = ChannelDeltaState("prices")
    out = [_send(state, frame, n) for n, frame in enumerate(_frames(SEED, 30))]
    # k=0,1 full; then 10 deltas; then a full one; ... (§6.3).
    assert _kinds(out) == "FF" + "D" * 10 + "F" + "D" * 10 + "F" + "D" * 6
    assert state.seq == 30
    assert (state.full_messages, state.delta_messages) == (4, 26)
    assert state.bytes_sent < state.bytes_uncompressed * 3 // 4
    assert json.loads(out[0])["sequence"] == 0
    assert json.loads(out[12])["sequence"] == 12
    assert state.base_text == full_form(_frames(SEED, 30)[-1], 29)


def test_delta_frame_shape() -> None:
    state = ChannelDeltaState("prices", "xdelta3")
    frames = [_send(state, frame, n) for n, frame in enumerate(_frames(SEED, 3))]
    delta = json.loads(frames[2])
    assert delta == {
        "event": "sockudo:delta",
        "channel": "prices",
        "data": {
            "event": "price.updated",
            "delta": delta["data"]["delta"],
            "seq": 2,
            "algorithm": "xdelta3",
            "base_index": 1,
        },
        "message_id": "m-2",
        "stream_id": "s-1",
        "serial": 102,
    }
    raw = base64.b64decode(delta["data"]["delta"], validate=True)
    assert vcdiff_decoder.decode(frames[1].encode(), raw).decode() == state.base_text


def test_delta_frame_without_algorithm_or_positions() -> None:
    state = ChannelDeltaState("prices", omit_algorithm=True)
    frames = _frames(SEED, 3)
    for frame in frames[:2]:
        state.next_frame(frame, "price.updated")
    data = json.loads(state.next_frame(frames[2], "price.updated"))
    assert set(data) == {"event", "channel", "data"}
    assert set(data["data"]) == {"event", "delta", "seq", "base_index"}


def test_small_frames_are_always_full() -> None:
    state = ChannelDeltaState("c")
    frames = [state.next_frame(f'{{"event":"e","channel":"c","data":{n}}}', "e") for n in range(5)]
    assert _kinds(frames) == "FFFFF"
    assert state.base_text == '{"event":"e","channel":"c","data":4,"sequence":4}'


def test_full_when_delta_is_not_shorter() -> None:
    rng = random.Random(SEED)
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
    state = ChannelDeltaState("c")
    frames = []
    for _ in range(5):
        # Nothing 16 bytes long in common with the previous frame: no copy is possible.
        event = "".join(rng.choice(alphabet) for _ in range(12))
        noise = "".join(rng.choice(alphabet) for _ in range(300))
        frame = encode_json(Envelope(event=event, data=Data.of_text(noise)))
        frames.append(state.next_frame(frame, event))
    assert _kinds(frames) == "FFFFF"


def test_reset_and_resync() -> None:
    frames = _frames(SEED, 11)
    state = ChannelDeltaState("prices")
    for n in range(4):
        _send(state, frames[n], n)
    assert _kinds([_send(state, frames[4], 4)]) == "D"
    resent = state.resync()
    assert resent == full_form(frames[4], 0)
    assert state.seq == 1
    assert state.base_text == resent
    assert _kinds([_send(state, frames[n], n) for n in range(5, 8)]) == "FDD"
    state.reset()
    assert state.seq == 0
    assert state.base_text is None
    assert state.resync() is None
    assert _kinds([_send(state, frames[n], n) for n in range(8, 11)]) == "FFD"


@pytest.mark.parametrize("algorithm", ["fossil", "xdelta3"])
def test_connections_at_different_sequences_share_bodies(algorithm: Any) -> None:
    """Three subscribers that joined at different times: the memoised body is shared while
    each one's delta carries its own ``sequence`` and checksum."""
    frames = _frames(SEED, 20)
    decode = FossilDelta.apply if algorithm == "fossil" else vcdiff_decoder.decode
    states = [ChannelDeltaState("prices", algorithm) for _ in range(3)]
    deltas = 0
    for n, frame in enumerate(frames):
        for joined, state in zip((0, 3, 7), states, strict=True):
            if n < joined:
                continue
            base = state.base_text
            out = _send(state, frame, n)
            assert state.base_text == full_form(frame, n - joined)
            if _is_delta(out):
                deltas += 1
                assert base is not None
                raw = base64.b64decode(json.loads(out)["data"]["delta"])
                assert decode(base.encode(), raw).decode() == state.base_text
    assert deltas == 17 + 14 + 10  # FF, 10 deltas, F, ... for 20, 17 and 13 messages


@pytest.mark.parametrize("algorithm", ["fossil", "xdelta3"])
def test_random_message_streams(algorithm: Any) -> None:
    """Property-style: a stream of randomly evolving documents (unicode, all JSON kinds, sizes
    on both sides of min_message_size); every delta decodes to the new base."""
    rng = random.Random(SEED + 7)
    decode = FossilDelta.apply if algorithm == "fossil" else vcdiff_decoder.decode
    state = ChannelDeltaState("private-ünïcode", algorithm)
    doc = _value(rng)
    deltas = 0
    for n in range(300):
        doc = _mutate(rng, doc) if rng.random() < 0.9 else _value(rng)
        event = rng.choice(["update", "naïve-event", "更新"])
        frame = encode_json(
            Envelope(event=event, channel="private-ünïcode", data=Data.of_value(doc))
        )
        base = state.base_text
        out = state.next_frame(frame, event, message_id=f"m-{n}")
        assert state.base_text == full_form(frame, n)
        assert json.loads(state.base_text)["data"] == doc
        if _is_delta(out):
            deltas += 1
            parsed = json.loads(out)
            assert parsed["data"]["event"] == event
            assert parsed["message_id"] == f"m-{n}"
            assert base is not None
            raw = base64.b64decode(parsed["data"]["delta"])
            assert len(raw) < len(state.base_text.encode())
            assert decode(base.encode(), raw).decode() == state.base_text
        else:
            assert out == state.base_text
    assert state.seq == 300
    assert deltas == state.delta_messages > 50


def test_unknown_algorithm_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown delta algorithm"):
        ChannelDeltaState("c", "zstd")  # type: ignore[arg-type]


# --- negotiation ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        (True, DeltaOption(True)),
        (False, DeltaOption(False)),
        ("fossil", DeltaOption(True, "fossil")),
        ("xdelta3", DeltaOption(True, "xdelta3")),
        ("XDelta3", DeltaOption(True, "xdelta3")),
        ("disabled", DeltaOption(False)),
        ("none", DeltaOption(False)),
        ("false", DeltaOption(False)),
        ("brotli", DeltaOption(True, "fossil")),
        ("true", DeltaOption(True)),
        ({"enabled": True}, DeltaOption(True)),
        ({"enabled": True, "algorithm": "xdelta3"}, DeltaOption(True, "xdelta3")),
        ({"algorithm": "xdelta3"}, DeltaOption(True, "xdelta3")),
        ({"enabled": True, "algorithm": "lz4"}, DeltaOption(True, "fossil")),
        ({"enabled": False, "algorithm": "xdelta3"}, DeltaOption(False)),
        ({"enabled": "false"}, DeltaOption(False)),
        (42, None),
    ],
)
def test_parse_subscribe_delta(value: Any, expected: DeltaOption | None) -> None:
    assert parse_subscribe_delta(value) == expected


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"algorithms": ["fossil", "xdelta3"]}, "fossil"),
        ({"algorithms": ["xdelta3", "fossil"]}, "fossil"),
        ({"algorithms": ["xdelta3"]}, "xdelta3"),
        ({"algorithms": ["bsdiff", "xdelta3"]}, "xdelta3"),
        ({"algorithms": ["bsdiff"]}, "fossil"),
        ({"algorithms": []}, "fossil"),
        ({}, "fossil"),
        (None, "fossil"),
        ('{"algorithms":["xdelta3"]}', "xdelta3"),
        ("not json", "fossil"),
    ],
)
def test_negotiate_algorithm(data: Any, expected: str) -> None:
    assert negotiate_algorithm(data) == expected


def test_enabled_payload() -> None:
    assert enabled_payload("fossil") == {"enabled": True, "algorithm": "fossil"}
    assert enabled_payload("xdelta3", channel="c") == {
        "enabled": True,
        "algorithm": "xdelta3",
        "channel": "c",
    }
    assert enabled_payload("fossil", enabled=False) == {"enabled": False, "algorithm": "fossil"}


# --- end to end through the Python client's own delta handling ------------------------------


class _Client:
    """A sockudo-python 2.2.0 client with no socket: frames go straight into its
    ``_handle_raw_message``, the code path its receive loop runs."""

    def __init__(self, channel: str, *, dedupe: bool = True) -> None:
        self.errors: list[Any] = []
        self.received: list[Any] = []
        options = SockudoOptions(
            cluster="mt1",
            delta_compression=DeltaOptions(enabled=True, on_error=self.errors.append),
            connection_recovery=True,
            message_deduplication=dedupe,
        )
        self.client = SockudoClient("key", options)
        self.client.bind("error", lambda data, *_: self.errors.append(data))
        self.channel = self.client.subscribe(channel)
        self.channel.bind("price.updated", lambda data, *_: self.received.append(data))

    async def feed(self, frame: str) -> None:
        await self.client._handle_raw_message(frame)
        self.client._cancel_activity_timer()

    def base(self, channel: str) -> str | None:
        manager = self.client._delta_manager
        assert manager is not None
        state = manager._channel_states.get(channel)
        return None if state is None else state.get("base_message")


def _event_with_stream_id_default(**fields: Any) -> SockudoEvent:
    fields.setdefault("stream_id", None)
    return SockudoEvent(**fields)


@pytest.fixture
def fixed_client(monkeypatch: pytest.MonkeyPatch) -> None:
    """sockudo-python 2.2.0's ``handle_delta_message`` builds ``SockudoEvent`` without its
    required ``stream_id`` argument: the TypeError is swallowed (``on_error``), so a correctly
    reconstructed message never reaches the application. Patch in the one-argument fix."""
    monkeypatch.setattr(client_module, "SockudoEvent", _event_with_stream_id_default)


@pytest.mark.parametrize("algorithm", ["fossil", "xdelta3"])
async def test_client_reconstructs_thirty_messages(algorithm: Any, fixed_client: None) -> None:
    client = _Client("prices")
    await client.feed(
        '{"event":"sockudo:delta_compression_enabled",'
        f'"data":{{"enabled":true,"algorithm":"{algorithm}"}}}}'
    )
    # Fossil without the `algorithm` member: the client falls back to the negotiated one.
    state = ChannelDeltaState("prices", algorithm, omit_algorithm=algorithm == "fossil")
    frames = []
    rng = random.Random(SEED)
    for n in range(30):  # varying sizes: bases and targets of different lengths
        frames.append(_frames(SEED + n // 5, n + 1, rows=rng.randrange(8, 40))[n])
    sent = []
    for n, frame in enumerate(frames):
        out = _send(state, frame, n)
        sent.append(out)
        await client.feed(out)
        assert client.errors == []
        assert client.base("prices") == state.base_text  # the client's base is our base
        position = client.client._channel_positions["prices"]
        assert (position.serial, position.last_message_id) == (100 + n, f"m-{n}")
    assert client.received == [json.loads(f)["data"] for f in frames]
    assert _kinds(sent).count("D") >= 20
    stats = client.client.get_delta_stats()
    assert stats is not None
    assert (stats.delta_messages, stats.errors) == (_kinds(sent).count("D"), 0)


async def test_unpatched_client_reconstructs_but_drops_delta_messages() -> None:
    """Pins the sockudo-python 2.2.0 bug: reconstruction succeeds (its base equals ours after
    every delta) but each delta-delivered message is lost to a TypeError."""
    client = _Client("prices")
    state = ChannelDeltaState("prices")
    frames = _frames(SEED, 14)
    for n, frame in enumerate(frames):
        await client.feed(_send(state, frame, n))
        assert client.base("prices") == state.base_text
    assert client.received == [json.loads(frames[n])["data"] for n in (0, 1, 12)]
    assert len(client.errors) == 11
    assert all(isinstance(e, TypeError) and "stream_id" in str(e) for e in client.errors)


async def test_client_after_resync(fixed_client: None) -> None:
    """A client that lost its base asks for a resync; with deduplication on (the client's
    default) it drops the re-sent message as a duplicate of the delta it could not apply,
    then carries on from the next message."""
    frames = _frames(SEED, 8)
    for dedupe in (True, False):
        client = _Client("prices", dedupe=dedupe)
        state = ChannelDeltaState("prices")
        for n in range(4):
            await client.feed(_send(state, frames[n], n))
        manager = client.client._delta_manager
        assert manager is not None
        manager.clear_channel_state("prices")
        await client.feed(_send(state, frames[4], 4))  # a delta the client cannot apply
        assert len(client.received) == 4
        resent = state.resync()
        assert resent is not None
        await client.feed(resent)
        for n in range(5, 8):
            await client.feed(_send(state, frames[n], n))
        expected = [json.loads(f)["data"] for f in frames]
        if dedupe:
            expected.pop(4)
        assert client.received == expected
        assert client.errors == []
