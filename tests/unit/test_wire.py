"""V2 envelope codec (spec 02 §1.2, §2): round trips, exact shapes, and compatibility with the
real Python client (``sockudo-python`` 2.2.0, ``sockudo_python.client.ProtocolCodec``).

Client functions used:

- ``ProtocolCodec.decode_event(raw, fmt)``: what ``SockudoClient._handle_raw_message`` runs on
  every inbound frame; returns a ``SockudoEvent`` (no ``tags``/``name`` member).
- ``ProtocolCodec.decode_envelope(raw, fmt)``: the raw member dict ``decode_event`` builds on;
  used only to look at ``tags``.
- ``ProtocolCodec.encode_envelope(payload, fmt)``: what ``SockudoClient.send_event`` runs on
  every outbound frame (subscribe, client events, pong, presence_update, ...).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import msgpack
import pytest
from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import FieldDescriptor
from sockudo_python.client import ProtocolCodec, SockudoWireFormat

from sockudo.ws.wire import (
    AiExtras,
    Data,
    Envelope,
    Extras,
    Structured,
    WireError,
    WireFormat,
    decode,
    encode,
    normalize_format,
)

FORMATS: tuple[WireFormat, ...] = ("json", "msgpack", "protobuf")
BINARY: tuple[WireFormat, ...] = ("msgpack", "protobuf")
CLIENT_FORMAT = {
    "json": SockudoWireFormat.JSON,
    "msgpack": SockudoWireFormat.MESSAGEPACK,
    "protobuf": SockudoWireFormat.PROTOBUF,
}


def full_envelope(data: Data | None = None) -> Envelope:
    """Every one of the 15 members set (including the ones the server never emits)."""
    return Envelope(
        event="order.created",
        channel="orders",
        data=data or Data.of_value({"id": 7, "name": "café", "items": [1, 2.5, None, True]}),
        name="chat.message",
        user_id="user-1",
        tags={"region": "eu", "tier": "gold"},
        sequence=7,
        conflation_key="room",
        message_id="3f1c9a52-8a7e-4f31-9d5b-0c1e2a7b6d10",
        stream_id="stream-1",
        serial=(1 << 64) - 1,
        idempotency_key="idem-1",
        extras=Extras(
            headers={"tenant": "acme", "ttl": 5.5, "vip": True},
            ephemeral=False,
            idempotency_key="extra-idem",
            echo=True,
            ai=AiExtras(transport={"mode": "sse"}, codec={"name": "utf8"}),
        ),
        delta_sequence=11,
        delta_conflation_key="btc",
    )


# --- (a) round trips --------------------------------------------------------------------------


def test_full_envelope_sets_every_member() -> None:
    env = full_envelope()
    assert [f.name for f in dataclasses.fields(Envelope)] == [
        "event",
        "channel",
        "data",
        "name",
        "user_id",
        "tags",
        "sequence",
        "conflation_key",
        "message_id",
        "stream_id",
        "serial",
        "idempotency_key",
        "extras",
        "delta_sequence",
        "delta_conflation_key",
    ]
    assert all(getattr(env, f.name) is not None for f in dataclasses.fields(Envelope))
    assert all(getattr(env.extras, f.name) is not None for f in dataclasses.fields(Extras))


@pytest.mark.parametrize("fmt", FORMATS)
def test_round_trip_every_member(fmt: WireFormat) -> None:
    env = full_envelope()
    assert decode(encode(env, fmt), fmt) == env


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize(
    "data",
    [
        Data.of_text("hello"),
        Data.of_text(""),
        Data.of_text('{"looks":"like json"}'),
        Data.of_value({"nested": {"ok": True}, "n": [1, 2, 3]}),
        Data.of_value([1, "two"]),
        Data.of_value(5),
        Data.of_value(None),
        Data.of_value(False),
        Data.of_value("ünïcödé ✓ 𝄞"),
    ],
    ids=repr,
)
def test_round_trip_data_kinds(fmt: WireFormat, data: Data) -> None:
    env = Envelope(event="e", channel="c", data=data)
    back = decode(encode(env, fmt), fmt)
    assert back == env
    assert back.data is not None
    assert back.data.to_value() == data.to_value()


@pytest.mark.parametrize("fmt", BINARY)
def test_round_trip_binary_and_structured_on_binary_formats(fmt: WireFormat) -> None:
    for data in (
        Data.of_value(b"\x00\x01\xfe\xff"),
        Data.of_value(b""),
        Data(
            "structured",
            Structured(
                channel_data='{"user_id":"u"}', channel="presence-x", extra={"k": '{"a":1}'}
            ),
        ),
    ):
        env = Envelope(event="e", data=data)
        assert decode(encode(env, fmt), fmt) == env


def test_binary_data_on_json_is_an_array_of_ints() -> None:
    text = encode(Envelope(event="e", data=Data.of_value(b"\x00\x7f\xff")), "json")
    assert text == '{"event":"e","data":[0,127,255]}'
    back = decode(text, "json")
    assert back.data == Data.of_json_text("[0,127,255]")


@pytest.mark.parametrize("fmt", FORMATS)
def test_round_trip_keeps_present_but_default_values(fmt: WireFormat) -> None:
    # Proto3 ``optional`` presence: "" / 0 / False must survive, not collapse to absent.
    env = Envelope(
        event="",
        channel="",
        data=Data.of_text(""),
        serial=0,
        sequence=0,
        extras=Extras(ephemeral=False, echo=False, idempotency_key=""),
    )
    assert decode(encode(env, fmt), fmt) == env


@pytest.mark.parametrize("fmt", FORMATS)
def test_round_trip_empty_envelope(fmt: WireFormat) -> None:
    assert decode(encode(Envelope(), fmt), fmt) == Envelope()


@pytest.mark.parametrize("fmt", BINARY)
def test_integer_header_becomes_double_on_binary_formats(fmt: WireFormat) -> None:
    env = Envelope(event="e", extras=Extras(headers={"n": 5, "b": True, "s": "5"}))
    back = decode(encode(env, fmt), fmt)
    assert back.extras is not None
    assert back.extras.headers is not None
    assert back.extras.headers["n"] == 5.0
    assert type(back.extras.headers["n"]) is float
    assert back.extras.headers["b"] is True
    assert back.extras.headers["s"] == "5"


def test_integer_header_stays_an_integer_on_json() -> None:
    env = Envelope(event="e", extras=Extras(headers={"n": 5}))
    text = encode(env, "json")
    assert text == '{"event":"e","extras":{"headers":{"n":5}}}'
    back = decode(text, "json")
    assert back.extras is not None
    assert back.extras.headers is not None
    assert type(back.extras.headers["n"]) is int


# --- exact outbound shapes --------------------------------------------------------------------


def test_json_matches_the_spec_example_exactly() -> None:
    # spec 02 §4.4, V2 subscriber (json)
    env = Envelope(
        event="order.created",
        channel="orders",
        data=Data.of_json_text('{"id":7}'),
        tags={"region": "eu"},
        message_id="3f1c9a52-8a7e-4f31-9d5b-0c1e2a7b6d10",
        stream_id="6b0e",
        serial=42,
        extras=Extras(headers={"tenant": "acme"}),
    )
    assert encode(env, "json") == (
        '{"event":"order.created","channel":"orders","data":{"id":7},"tags":{"region":"eu"},'
        '"message_id":"3f1c9a52-8a7e-4f31-9d5b-0c1e2a7b6d10","stream_id":"6b0e","serial":42,'
        '"extras":{"headers":{"tenant":"acme"}}}'
    )


def test_json_omits_absent_members_and_never_writes_null() -> None:
    assert encode(Envelope(event="sockudo:pong"), "json") == '{"event":"sockudo:pong"}'
    assert "null" not in encode(full_envelope(Data.of_text("x")), "json")


def test_json_splices_json_text_without_reserialising() -> None:
    # A parse + dump would print 1000.0; the stored text must go out byte for byte.
    text = encode(Envelope(event="e", data=Data.of_json_text('{"a":1e3}')), "json")
    assert text == '{"event":"e","data":{"a":1e3}}'


def test_json_string_data_is_a_json_string_and_keeps_utf8() -> None:
    text = encode(Envelope(event="e", data=Data.of_text('{"socket_id":"1.2"} é\n')), "json")
    assert text == '{"event":"e","data":"{\\"socket_id\\":\\"1.2\\"} é\\n"}'
    assert json.loads(text)["data"] == '{"socket_id":"1.2"} é\n'


def test_json_delta_markers_use_upstream_names() -> None:
    text = encode(Envelope(event="e", delta_sequence=3, delta_conflation_key="k"), "json")
    assert text == '{"event":"e","__delta_seq":3,"__conflation_key":"k"}'


def test_msgpack_is_the_positional_15_array_with_tagged_data_and_map_extras() -> None:
    env = Envelope(
        event="e",
        channel="c",
        data=Data.of_value({"id": 7}),
        tags={"r": "eu"},
        serial=9,
        message_id="m",
        extras=Extras(headers={"n": 5, "s": "x", "b": False}, echo=False),
    )
    value = msgpack.unpackb(encode(env, "msgpack"), raw=False)
    assert value == [
        "e",
        "c",
        ["json", '{"id":7}'],
        None,
        None,
        {"r": "eu"},
        None,
        None,
        "m",
        None,
        9,
        None,
        {
            "headers": {"n": ["number", 5.0], "s": ["string", "x"], "b": ["bool", False]},
            "echo": False,
        },
        None,
        None,
    ]
    assert type(value[12]["headers"]["n"][1]) is float
    bin_value = msgpack.unpackb(encode(Envelope(data=Data.of_value(b"\x01")), "msgpack"))
    assert bin_value[2] == ["binary", b"\x01"]


@pytest.mark.parametrize(
    ("env", "wire"),
    [
        (Envelope(event="e"), b"\x0a\x01e"),  # field 1, wire type 2
        (Envelope(channel="c"), b"\x12\x01c"),  # field 2
        (Envelope(user_id="u"), b"\x2a\x01u"),  # field 5
        (Envelope(sequence=7), b"\x38\x07"),  # field 7, varint
        (Envelope(conflation_key="k"), b"\x42\x01k"),  # field 8
        (Envelope(message_id="m"), b"\x4a\x01m"),  # field 9
        (Envelope(stream_id="s"), b"\x52\x01s"),  # field 10, string (never the legacy varint)
        (Envelope(serial=300), b"\x58\xac\x02"),  # field 11, varint
        (Envelope(data=Data.of_text("x")), b"\x1a\x03\x0a\x01x"),  # Data.string_value = 1
        (Envelope(data=Data.of_json_text("1")), b"\x1a\x03\x1a\x011"),  # Data.json_value = 3
        (Envelope(data=Data.of_value(b"\x00")), b"\x1a\x03\x22\x01\x00"),  # binary_value = 4
        (Envelope(extras=Extras(ephemeral=True)), b"\x6a\x02\x10\x01"),  # field 13 → Extras.2
        (
            Envelope(extras=Extras(headers={"n": 5})),
            # Extras.headers entry {1: "n", 2: HeaderValue{number_value(2, fixed64) = 5.0}}
            b"\x6a\x10\x0a\x0e\x0a\x01n\x12\x09\x11\x00\x00\x00\x00\x00\x00\x14\x40",
        ),
    ],
)
def test_protobuf_field_numbers_and_wire_types(env: Envelope, wire: bytes) -> None:
    assert encode(env, "protobuf") == wire


def test_protobuf_schema_matches_spec() -> None:
    # The runtime-built descriptor (private: no protoc), checked against §2.3 member by member.
    from sockudo.ws.wire import _PbEnvelope

    desc = _PbEnvelope.DESCRIPTOR
    assert desc.full_name == "sockudo.v2.Envelope"
    numbers = {f.name: f.number for f in desc.fields}
    assert numbers == {
        "event": 1,
        "channel": 2,
        "data": 3,
        "name": 4,
        "user_id": 5,
        "tags": 6,
        "sequence": 7,
        "conflation_key": 8,
        "message_id": 9,
        "stream_id": 10,
        "serial": 11,
        "idempotency_key": 12,
        "extras": 13,
        "delta_sequence": 14,
        "delta_conflation_key": 15,
    }
    as_proto = descriptor_pb2.FileDescriptorProto()
    desc.file.CopyToProto(as_proto)
    assert as_proto.syntax == "proto3"
    declared = {f.name: f for f in as_proto.message_type[0].field}
    for f in desc.fields:
        if f.name == "tags":
            assert f.message_type.GetOptions().map_entry
        else:
            assert f.has_presence, f.name
            assert declared[f.name].proto3_optional, f.name  # proto3 ``optional``
            assert f.containing_oneof.name == "_" + f.name
    data = desc.fields_by_name["data"].message_type
    assert {f.name: f.number for f in data.oneofs_by_name["kind"].fields} == {
        "string_value": 1,
        "structured": 2,
        "json_value": 3,
        "binary_value": 4,
    }
    extras = desc.fields_by_name["extras"].message_type
    assert {f.name: f.number for f in extras.fields} == {
        "headers": 1,
        "ephemeral": 2,
        "idempotency_key": 3,
        "echo": 4,
        "ai": 5,
    }
    header = extras.fields_by_name["headers"].message_type.fields_by_name["value"].message_type
    assert {(f.name, f.number, f.type) for f in header.fields} == {
        ("string_value", 1, FieldDescriptor.TYPE_STRING),
        ("number_value", 2, FieldDescriptor.TYPE_DOUBLE),
        ("bool_value", 3, FieldDescriptor.TYPE_BOOL),
    }
    ai = extras.fields_by_name["ai"].message_type
    assert {f.name: f.number for f in ai.fields} == {"transport": 1, "codec": 2}


# --- (b) the Python client decodes what we send ----------------------------------------------


def channel_message() -> Envelope:
    return Envelope(
        event="order.created",
        channel="orders",
        data=Data.of_value({"id": 7, "who": "é"}),
        user_id="user-1",
        tags={"region": "eu"},
        sequence=3,
        conflation_key="room",
        message_id="mid-1",
        stream_id="stream-1",
        serial=42,
        extras=Extras(
            headers={"tenant": "acme", "n": 5, "vip": True},
            ephemeral=True,
            idempotency_key="idem-1",
            echo=False,
            ai=AiExtras(transport={"mode": "sse"}, codec={"name": "utf8"}),
        ),
    )


@pytest.mark.parametrize("fmt", FORMATS)
def test_client_decode_event_sees_every_member(fmt: WireFormat) -> None:
    # ProtocolCodec.decode_event: the client's per-frame decoder.
    ev = ProtocolCodec.decode_event(encode(channel_message(), fmt), CLIENT_FORMAT[fmt])
    assert ev.event == "order.created"
    assert ev.channel == "orders"
    assert ev.data == {"id": 7, "who": "é"}
    assert ev.user_id == "user-1"
    assert ev.message_id == "mid-1"
    assert ev.stream_id == "stream-1"
    assert ev.serial == 42
    assert ev.sequence == 3
    assert ev.conflation_key == "room"
    assert ev.extras is not None
    assert ev.extras.headers == {"tenant": "acme", "n": 5, "vip": True}
    assert ev.extras.ephemeral is True
    assert ev.extras.idempotency_key == "idem-1"
    assert ev.extras.echo is False
    assert ev.extras.ai == {"transport": {"mode": "sse"}, "codec": {"name": "utf8"}}


@pytest.mark.parametrize(
    ("fmt", "number_type"), [("json", int), ("msgpack", float), ("protobuf", float)]
)
def test_client_sees_integer_header_type(fmt: WireFormat, number_type: type) -> None:
    # ProtocolCodec.decode_event; protobuf header numbers are doubles (§2.3), msgpack f64 (§2.2).
    ev = ProtocolCodec.decode_event(encode(channel_message(), fmt), CLIENT_FORMAT[fmt])
    assert ev.extras is not None
    assert ev.extras.headers is not None
    assert type(ev.extras.headers["n"]) is number_type


@pytest.mark.parametrize("fmt", FORMATS)
def test_client_sees_tags_except_on_protobuf(fmt: WireFormat) -> None:
    # ProtocolCodec.decode_envelope (SockudoEvent has no tags member). The client's protobuf
    # decoder ignores field 6 (§2.3), so tags are not visible to it on protobuf.
    members, _ = ProtocolCodec.decode_envelope(encode(channel_message(), fmt), CLIENT_FORMAT[fmt])
    if fmt == "protobuf":
        assert "tags" not in members
    else:
        assert members["tags"] == {"region": "eu"}


@pytest.mark.parametrize("fmt", FORMATS)
def test_client_reads_handshake_string_data(fmt: WireFormat) -> None:
    # ProtocolCodec.decode_event; _handle_raw_message requires data.socket_id to be a str.
    env = Envelope(
        event="sockudo:connection_established",
        data=Data.of_text('{"socket_id":"1234.5678","activity_timeout":120}'),
    )
    ev = ProtocolCodec.decode_event(encode(env, fmt), CLIENT_FORMAT[fmt])
    assert ev.event == "sockudo:connection_established"
    assert ev.data == {"socket_id": "1234.5678", "activity_timeout": 120}
    assert ev.serial is None
    assert ev.message_id is None
    assert ev.extras is None


@pytest.mark.parametrize("fmt", FORMATS)
def test_client_reads_plain_string_and_error_frames(fmt: WireFormat) -> None:
    # ProtocolCodec.decode_event
    ev = ProtocolCodec.decode_event(
        encode(Envelope(event="e", channel="c", data=Data.of_text("hello world")), fmt),
        CLIENT_FORMAT[fmt],
    )
    assert ev.data == "hello world"
    err = Envelope(
        event="sockudo:error",
        channel="private-x",
        data=Data.of_value({"code": 4009, "message": "nope"}),
    )
    ev = ProtocolCodec.decode_event(encode(err, fmt), CLIENT_FORMAT[fmt])
    assert ev.event == "sockudo:error"
    assert ev.channel == "private-x"
    assert ev.data == {"code": 4009, "message": "nope"}


@pytest.mark.parametrize(
    ("fmt", "expected"),
    [("json", [0, 1, 255]), ("msgpack", b"\x00\x01\xff"), ("protobuf", b"\x00\x01\xff")],
)
def test_client_reads_binary_data(fmt: WireFormat, expected: Any) -> None:
    # ProtocolCodec.decode_event: bytes on binary formats, an int array on JSON (§2.4).
    env = Envelope(event="e", channel="c", data=Data.of_value(b"\x00\x01\xff"))
    assert ProtocolCodec.decode_event(encode(env, fmt), CLIENT_FORMAT[fmt]).data == expected


# --- (c) we decode what the Python client sends ---------------------------------------------


SUBSCRIBE = {
    "event": "sockudo:subscribe",
    "data": {
        "auth": "",
        "channel": "orders",
        "filter": {"events": ["a"], "tags": {"op": "eq", "key": "region", "val": "eu"}},
        "delta": {"enabled": True, "algorithm": "fossil"},
        "rewind": {"count": 5},
    },
}


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize(
    "payload",
    [
        SUBSCRIBE,
        {"event": "sockudo:unsubscribe", "data": {"channel": "orders"}},
        {"event": "sockudo:pong", "data": {}},
        {"event": "client-typing", "data": {"user": "é", "n": 1.5}, "channel": "private-x"},
        {
            "event": "sockudo:presence_update",
            "data": {"user_info": {"a": 1}},
            "channel": "presence-x",
        },
        {"event": "sockudo:resume", "data": {"channel_positions": {"orders": {"serial": 41}}}},
    ],
    ids=lambda p: p["event"],
)
def test_decode_client_object_frames(fmt: WireFormat, payload: dict[str, Any]) -> None:
    # ProtocolCodec.encode_envelope: what SockudoClient.send_event puts on the socket.
    env = decode(ProtocolCodec.encode_envelope(payload, CLIENT_FORMAT[fmt]), fmt)
    assert env.event == payload["event"]
    assert env.channel == payload.get("channel")
    assert env.data is not None
    assert env.data.kind == "json"
    assert env.data.to_value() == payload["data"]
    assert json.loads(env.data.value) == payload["data"]  # compact text equal to the value
    assert env.serial is None
    assert env.extras is None


@pytest.mark.parametrize("fmt", FORMATS)
def test_decode_client_string_data(fmt: WireFormat) -> None:
    # ProtocolCodec.encode_envelope with str data
    raw = ProtocolCodec.encode_envelope(
        {"event": "client-x", "channel": "private-x", "data": "hi"}, CLIENT_FORMAT[fmt]
    )
    assert decode(raw, fmt).data == Data.of_text("hi")


@pytest.mark.parametrize("fmt", BINARY)
def test_decode_client_binary_data(fmt: WireFormat) -> None:
    # ProtocolCodec.encode_envelope with bytes data (msgpack ["binary", bin]; protobuf field 4)
    raw = ProtocolCodec.encode_envelope(
        {"event": "client-x", "channel": "private-x", "data": b"\x00\xff"}, CLIENT_FORMAT[fmt]
    )
    assert decode(raw, fmt).data == Data.of_value(b"\x00\xff")


@pytest.mark.parametrize("fmt", FORMATS)
def test_decode_client_full_envelope(fmt: WireFormat) -> None:
    # ProtocolCodec.encode_envelope with every key it knows. Its msgpack encoder tags an int
    # header as ["number", 5] (an int) and its protobuf encoder never writes name/tags (4, 6).
    payload = {
        "event": "e",
        "channel": "c",
        "data": {"x": [1]},
        "name": "n",
        "user_id": "u",
        "tags": {"r": "eu"},
        "sequence": 3,
        "conflation_key": "ck",
        "message_id": "m",
        "stream_id": "s",
        "serial": 9,
        "idempotency_key": "ik",
        "extras": {
            "headers": {"n": 5, "s": "x", "b": True},
            "ephemeral": True,
            "idempotency_key": "eik",
            "echo": False,
            "ai": {"transport": {"t": "1"}, "codec": {"c": "2"}},
        },
        "__delta_seq": 4,
        "__conflation_key": "dck",
    }
    env = decode(ProtocolCodec.encode_envelope(payload, CLIENT_FORMAT[fmt]), fmt)
    binary = fmt != "json"
    assert env == Envelope(
        event="e",
        channel="c",
        data=Data.of_value({"x": [1]}),
        name=None if fmt == "protobuf" else "n",
        user_id="u",
        tags=None if fmt == "protobuf" else {"r": "eu"},
        sequence=3,
        conflation_key="ck",
        message_id="m",
        stream_id="s",
        serial=9,
        idempotency_key="ik",
        extras=Extras(
            headers={"n": 5, "s": "x", "b": True},
            ephemeral=True,
            idempotency_key="eik",
            echo=False,
            ai=AiExtras({"t": "1"}, {"c": "2"}),
        ),
        delta_sequence=4,
        delta_conflation_key="dck",
    )
    assert env.extras is not None
    assert env.extras.headers is not None
    assert type(env.extras.headers["n"]) is (float if binary else int)


# --- inbound tolerance (§2.2) -----------------------------------------------------------------


def test_msgpack_map_form_keyed_by_field_names() -> None:
    raw = msgpack.packb(
        {
            "event": "e",
            "channel": "c",
            "data": ["string", "x"],
            "serial": 4,
            "delta_sequence": 2,
            "__conflation_key": "k",
            "unknown": [1, 2],
        }
    )
    assert decode(raw, "msgpack") == Envelope(
        event="e",
        channel="c",
        data=Data.of_text("x"),
        serial=4,
        delta_sequence=2,
        delta_conflation_key="k",
    )


def test_msgpack_short_arrays_are_padded() -> None:
    assert decode(msgpack.packb(["sockudo:ping"]), "msgpack") == Envelope(event="sockudo:ping")
    assert decode(msgpack.packb([]), "msgpack") == Envelope()
    assert decode(msgpack.packb(["e", "c", ["json", "{}"]]), "msgpack") == Envelope(
        event="e", channel="c", data=Data.of_json_text("{}")
    )


@pytest.mark.parametrize(
    ("plain", "expected"),
    [
        ("text", Data.of_text("text")),
        (b"\x01\x02", Data.of_value(b"\x01\x02")),
        ({"a": [1, None]}, Data.of_json_text('{"a":[1,null]}')),
        (5, Data.of_json_text("5")),
        (False, Data.of_json_text("false")),
        (["a", "b", "c"], Data.of_json_text('["a","b","c"]')),
    ],
)
def test_msgpack_plain_data(plain: Any, expected: Data) -> None:
    assert decode(msgpack.packb(["e", None, plain]), "msgpack").data == expected


def test_msgpack_json_kind_is_validated_and_recompacted() -> None:
    env = decode(msgpack.packb(["e", None, ["json", '{ "a" : [1, 2] }']]), "msgpack")
    assert env.data == Data.of_json_text('{"a":[1,2]}')
    # Not JSON: stands for itself as a string (as upstream) and is never spliced raw.
    env = decode(msgpack.packb(["e", None, ["json", "{oops"]]), "msgpack")
    assert env.data == Data.of_text("{oops")
    assert encode(env, "json") == '{"event":"e","data":"{oops"}'


def test_msgpack_structured_data_array_and_map_forms() -> None:
    expected = Data("structured", Structured("cd", "presence-x", None, {"k": "1"}))
    for value in (
        ["cd", "presence-x", None, {"k": "1"}],
        {"channel_data": "cd", "channel": "presence-x", "extra": {"k": "1"}},
    ):
        assert decode(msgpack.packb(["e", None, ["structured", value]]), "msgpack").data == expected
    assert expected.to_value() == {"channel_data": "cd", "channel": "presence-x", "k": 1}
    assert json.loads(encode(Envelope(event="e", data=expected), "json"))["data"] == {
        "channel_data": "cd",
        "channel": "presence-x",
        "k": 1,
    }


def test_msgpack_positional_extras_and_plain_header_values() -> None:
    extras = [
        {"a": "x", "n": 5, "b": True, "t": ["number", 2]},
        True,
        "ik",
        False,
        [{"t": "1"}, None],
    ]
    env = decode(
        msgpack.packb(
            ["e", None, None, None, None, None, None, None, None, None, None, None, extras]
        ),
        "msgpack",
    )
    assert env.extras == Extras(
        headers={"a": "x", "n": 5.0, "b": True, "t": 2.0},
        ephemeral=True,
        idempotency_key="ik",
        echo=False,
        ai=AiExtras(transport={"t": "1"}),
    )
    assert env.extras.headers is not None
    assert type(env.extras.headers["t"]) is float


def test_json_accepts_bytes_and_tolerates_upstream_markers() -> None:
    raw = (
        '{"event":"client-x","channel":"private-x","data":{"a":"é"},'
        '"__delta_seq":5,"__conflation_key":"k","idempotency_key":{"odd":1},'
        '"extras":{"idempotencyKey":"alias","push":{"x":1}},"sequence":null}'
    ).encode()
    assert decode(raw, "json") == Envelope(
        event="client-x",
        channel="private-x",
        data=Data.of_json_text('{"a":"é"}'),
        delta_sequence=5,
        delta_conflation_key="k",
        idempotency_key=None,  # tolerated and ignored: a wrong type is not an error
        extras=Extras(idempotency_key="alias"),
    )


def test_json_data_string_stays_a_string() -> None:
    env = decode('{"event":"e","data":"{\\"a\\":1}"}', "json")
    assert env.data == Data.of_text('{"a":1}')


def test_protobuf_unknown_fields_are_skipped() -> None:
    base = encode(Envelope(event="e", serial=3, data=Data.of_text("x")), "protobuf")
    unknown = (
        b"\xf8\x06\x01"  # field 111, varint
        b"\x82\x07\x02hi"  # field 112, length-delimited
        b"\x89\x07"
        + b"\x00" * 8  # field 113, fixed64
        + b"\x8d\x07"
        + b"\x00" * 4  # field 113, fixed32
    )
    assert decode(unknown + base + unknown, "protobuf") == decode(base, "protobuf")
    assert decode(base, "protobuf") == Envelope(event="e", serial=3, data=Data.of_text("x"))


def test_protobuf_present_but_empty_data_is_json_null() -> None:
    assert decode(b"\x0a\x01e\x1a\x00", "protobuf").data == Data.of_json_text("null")


def test_protobuf_accepts_text_frames() -> None:
    # A client may send its binary format in a text frame; the payload is its UTF-8 bytes.
    assert decode("\n\x01e", "protobuf") == Envelope(event="e")


# --- (d) errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "not json",
        "[1,2]",
        '"just a string"',
        b"\xff\xfe{}",
        '{"event":"e"} trailing',
        '{"event":5}',
        '{"channel":["c"]}',
        '{"user_id":1}',
        '{"serial":-1}',
        '{"serial":"1"}',
        '{"serial":1.0}',
        '{"serial":true}',
        '{"sequence":18446744073709551616}',
        '{"tags":{"a":1}}',
        '{"tags":["a"]}',
        '{"extras":[{"a":"x"}]}',
        '{"extras":{"headers":{"a":{"nested":1}}}}',
        '{"extras":{"headers":{"a":["string","x"]}}}',
        '{"extras":{"ephemeral":"yes"}}',
        '{"extras":{"ai":{"transport":{"a":1}}}}',
        '{"data":NaN}',
        '{"data":1e400}',
        '{"data":' + "[" * 100_000 + "]" * 100_000 + "}",
    ],
)
def test_json_errors(raw: str | bytes) -> None:
    with pytest.raises(WireError):
        decode(raw, "json")


_OK_MSGPACK = msgpack.packb(["e", "c"])


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        _OK_MSGPACK + b"\x00",  # trailing bytes after the first value
        _OK_MSGPACK[:-1],  # truncated
        b"\xc1",  # never-used type byte
        msgpack.packb("e"),
        msgpack.packb(5),
        msgpack.packb([None] * 16),
        msgpack.packb([1]),
        msgpack.packb({1: "e"}),
        msgpack.packb([None, None, ["binary", "not bin"]]),
        msgpack.packb([None, None, ["string", b"bin"]]),
        msgpack.packb([None, None, ["json", 5]]),
        msgpack.packb([None, None, ["structured", "x"]]),
        msgpack.packb([None, None, [b"bin-in-json"]]),
        msgpack.packb({"serial": -1}),
        msgpack.packb({"tags": {"a": b"x"}}),
        msgpack.packb({"extras": "x"}),
        msgpack.packb({"extras": {"headers": {"a": ["number", "x"]}}}),
        msgpack.packb({"extras": {"headers": {"a": None}}}),
        msgpack.packb({"extras": [None] * 6}),
        msgpack.packb({"extras": {"echo": 1}}),
        msgpack.packb([None, None, ["json", "[" * 100_000 + "]" * 100_000]]),
        b"\x91" * 100_000 + b"\xc0",  # nesting deeper than any stack
    ],
)
def test_msgpack_errors(raw: bytes) -> None:
    with pytest.raises(WireError):
        decode(raw, "msgpack")


@pytest.mark.parametrize(
    "raw",
    [
        b"\xff\xff\xff\xff",
        encode(Envelope(event="event"), "protobuf")[:-1],  # truncated
        b"\x0a\x02\xff\xfe",  # event with invalid UTF-8
        b"\x07",  # wire type 7 does not exist
        b"\x58\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff",  # varint longer than 10 bytes
    ],
)
def test_protobuf_errors(raw: bytes) -> None:
    with pytest.raises(WireError):
        decode(raw, "protobuf")


def test_wire_error_is_a_value_error_and_unknown_format_is_rejected() -> None:
    assert issubclass(WireError, ValueError)
    with pytest.raises(ValueError, match="unknown wire format"):
        encode(Envelope(event="e"), "xml")  # type: ignore[call-overload]
    with pytest.raises(ValueError, match="unknown wire format"):
        decode("{}", "xml")  # type: ignore[arg-type]


# --- helpers ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, "json"),
        ("", "json"),
        ("  ", "json"),
        ("json", "json"),
        ("JSON", "json"),
        ("msgpack", "msgpack"),
        (" MessagePack ", "msgpack"),
        ("protobuf", "protobuf"),
        ("Proto", "protobuf"),
        ("xml", None),
        ("msg pack", None),
        ("protobuf3", None),
    ],
)
def test_normalize_format(value: str | None, expected: str | None) -> None:
    assert normalize_format(value) == expected


def test_data_constructors() -> None:
    assert Data.of_value("x") == Data("string", "x")
    assert Data.of_value(b"\x01") == Data("binary", b"\x01")
    assert Data.of_value(bytearray(b"\x01")) == Data("binary", b"\x01")
    assert Data.of_value({"a": "é", "b": [1, 2]}) == Data("json", '{"a":"é","b":[1,2]}')
    assert Data.of_value(None) == Data("json", "null")
    assert Data.of_json_text('{"a":1}').to_value() == {"a": 1}
    assert Data.of_text("5").to_value() == "5"
    with pytest.raises(ValueError, match="Out of range float"):
        Data.of_value(float("nan"))
    with pytest.raises(TypeError):
        Data.of_value({"a": object()})
