"""Protocol V2 envelope codec for the three wire formats (spec 02 §1.2, §2).

Pure: no sockets, no clock. :func:`encode` turns one :class:`Envelope` into the exact frame
payload for a format (``str`` for JSON text frames, ``bytes`` for the binary formats);
:func:`decode` turns an inbound frame into an :class:`Envelope` or raises :class:`WireError`
(the caller answers ``sockudo:error`` 4000 and keeps the socket open, §1.2).

``data`` is carried as a tagged :class:`Data` so that a payload is serialised once: the ``json``
kind holds compact JSON text that the JSON encoder splices verbatim and the binary encoders ship
as the tagged string the wire defines.

Outbound shapes (what the Python client 2.2.0 decodes):

- json: one compact object, absent members omitted, ``data`` as the JSON value itself.
- msgpack: the 15-element positional array, ``data`` as ``[kind, value]``, ``extras`` as a *map*
  with tagged header values (the §2.2 Deviation; upstream's positional extras are dropped by the
  Python client).
- protobuf: the ``sockudo.v2.Envelope`` message of §2.3, built at import time from a
  ``FileDescriptorProto`` (no ``protoc``).

The server never sets ``idempotency_key``, ``delta_sequence`` or ``delta_conflation_key`` on an
outbound envelope (§2.1); the encoders still write whatever the envelope holds so that the codec
round-trips every field.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from json.encoder import encode_basestring
from math import isfinite
from typing import Any, Final, Literal, cast, overload

import msgpack
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError

from sockudo import inbound

__all__ = [
    "AiExtras",
    "Data",
    "DataKind",
    "Envelope",
    "Extras",
    "HeaderValue",
    "Structured",
    "WireError",
    "WireFormat",
    "decode",
    "encode",
    "encode_json",
    "encode_msgpack",
    "encode_protobuf",
    "normalize_format",
]

WireFormat = Literal["json", "msgpack", "protobuf"]
DataKind = Literal["string", "json", "binary", "structured"]
HeaderValue = str | int | float | bool
"""A flat header value. Numbers are doubles on the binary formats, so ints arrive as floats."""

_U64_MAX: Final = (1 << 64) - 1


class WireError(ValueError):
    """An inbound frame that does not decode in the connection's format (answered with 4000)."""


# Compact, UTF-8 (no \u escapes), and strictly standard JSON both ways: NaN/Infinity would make
# the spliced JSON text invalid for every other subscriber.
_dumps: Final[Callable[[Any], str]] = json.JSONEncoder(
    separators=(",", ":"), ensure_ascii=False, allow_nan=False
).encode
_loads: Final[Callable[[str | bytes], Any]] = inbound.loads
_quote: Final[Callable[[str], str]] = encode_basestring


# --- value types ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Structured:
    """Upstream's ``MessageData::Structured`` (inbound only, §2.2). ``extra`` values are JSON
    text; a value that is not valid JSON stands for itself as a string (as upstream)."""

    channel_data: str | None = None
    channel: str | None = None
    user_data: str | None = None
    extra: dict[str, str] = field(default_factory=dict)

    def to_value(self) -> dict[str, Any]:
        """The JSON object upstream's flattened serde form gives (``extra`` members inline)."""
        out: dict[str, Any] = {}
        for key, text in self.extra.items():
            out[key] = _parse_or_text(text)
        if self.channel_data is not None:
            out["channel_data"] = self.channel_data
        if self.channel is not None:
            out["channel"] = self.channel
        if self.user_data is not None:
            out["user_data"] = self.user_data
        return out


_UNSET: Final[Any] = object()


@dataclass(frozen=True, slots=True)
class Data:
    """A tagged ``data`` payload (§2.2 table).

    ``string`` → ``value`` is the str; ``json`` → ``value`` is compact JSON text of a non-string
    value; ``binary`` → ``value`` is bytes; ``structured`` → ``value`` is a :class:`Structured`.
    ``parsed`` caches the Python value when it is already known (never part of equality).
    """

    kind: DataKind
    value: str | bytes | Structured
    parsed: Any = field(default=_UNSET, compare=False, repr=False)

    @classmethod
    def of_text(cls, text: str) -> Data:
        return cls("string", text, text)

    @classmethod
    def of_json_text(cls, text: str) -> Data:
        """Trusted compact JSON text (server-produced); it is spliced verbatim on JSON frames."""
        return cls("json", text)

    @classmethod
    def of_value(cls, value: Any) -> Data:
        """str → ``string``; bytes-like → ``binary``; anything else → compact JSON text.

        Raises ``TypeError``/``ValueError`` for values JSON cannot carry (NaN included).
        The value is cached as ``parsed``: do not mutate it afterwards.
        """
        if isinstance(value, str):
            return cls("string", value, value)
        if isinstance(value, bytes | bytearray | memoryview):
            raw = bytes(value)
            return cls("binary", raw, raw)
        return cls("json", _dumps(value), value)

    def to_value(self) -> Any:
        """The payload as a Python value (JSON parsed, bytes as bytes, structured as a dict)."""
        if self.parsed is not _UNSET:
            return self.parsed
        if self.kind == "json":
            return _loads(cast(str, self.value))
        if self.kind == "structured":
            return cast(Structured, self.value).to_value()
        return self.value


@dataclass(frozen=True, slots=True)
class AiExtras:
    transport: dict[str, str] | None = None
    codec: dict[str, str] | None = None


@dataclass(frozen=True, slots=True)
class Extras:
    """V2 ``extras`` (§4.3) as the wire carries it (``push`` never reaches subscribers)."""

    headers: dict[str, HeaderValue] | None = None
    ephemeral: bool | None = None
    idempotency_key: str | None = None
    echo: bool | None = None
    ai: AiExtras | None = None


@dataclass(frozen=True, slots=True)
class Envelope:
    """One V2 frame: the 15 members of §2.1/§2.2, in wire order. ``None`` means absent."""

    event: str | None = None
    channel: str | None = None
    data: Data | None = None
    name: str | None = None
    user_id: str | None = None
    tags: dict[str, str] | None = None
    sequence: int | None = None
    conflation_key: str | None = None
    message_id: str | None = None
    stream_id: str | None = None
    serial: int | None = None
    idempotency_key: str | None = None
    extras: Extras | None = None
    delta_sequence: int | None = None
    """JSON ``__delta_seq``."""
    delta_conflation_key: str | None = None
    """JSON ``__conflation_key``."""


# --- format negotiation ---------------------------------------------------------------------

_FORMATS: Final[dict[str, WireFormat]] = {
    "": "json",
    "json": "json",
    "msgpack": "msgpack",
    "messagepack": "msgpack",
    "protobuf": "protobuf",
    "proto": "protobuf",
}


def normalize_format(value: str | None) -> WireFormat | None:
    """The ``format`` query value (§1.1): case-insensitive, trimmed, absent/empty = json;
    ``None`` for an unknown value (HTTP 400 before upgrade)."""
    if value is None:
        return "json"
    return _FORMATS.get(value.strip().lower())


# --- JSON -----------------------------------------------------------------------------------


def _str_map_json(value: dict[str, str]) -> str:
    return "{" + ",".join([_quote(k) + ":" + _quote(v) for k, v in value.items()]) + "}"


_float_repr: Final = float.__repr__


def _header_json(value: HeaderValue) -> str:
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, str):
        return _quote(value)
    if isinstance(value, int):
        return int.__repr__(value)
    if not isfinite(value):
        raise ValueError("header numbers must be finite")
    return _float_repr(value)


def _extras_json(extras: Extras) -> str:
    """The ``extras`` object. Every member is a flat map or a scalar, so it is written directly
    (``JSONEncoder.encode`` builds a C encoder on every call)."""
    parts: list[str] = []
    if extras.headers is not None:
        items = extras.headers.items()
        parts.append(
            '"headers":{' + ",".join([_quote(k) + ":" + _header_json(v) for k, v in items]) + "}"
        )
    if extras.ephemeral is not None:
        parts.append('"ephemeral":true' if extras.ephemeral else '"ephemeral":false')
    if extras.idempotency_key is not None:
        parts.append('"idempotency_key":' + _quote(extras.idempotency_key))
    if extras.echo is not None:
        parts.append('"echo":true' if extras.echo else '"echo":false')
    ai = extras.ai
    if ai is not None:
        ai_parts: list[str] = []
        if ai.transport is not None:
            ai_parts.append('"transport":' + _str_map_json(ai.transport))
        if ai.codec is not None:
            ai_parts.append('"codec":' + _str_map_json(ai.codec))
        parts.append('"ai":{' + ",".join(ai_parts) + "}")
    return "{" + ",".join(parts) + "}"


def _data_json(data: Data) -> str:
    kind = data.kind
    if kind == "json":
        return cast(str, data.value)
    if kind == "string":
        return _quote(cast(str, data.value))
    if kind == "binary":
        # §2.4: binary data on JSON is an array of integers 0-255.
        return "[" + ",".join(map(str, cast(bytes, data.value))) + "]"
    return _dumps(cast(Structured, data.value).to_value())


def encode_json(env: Envelope) -> str:
    """Compact JSON object text; absent members omitted, ``data`` spliced as its JSON value."""
    parts: list[str] = []
    add = parts.append
    if env.event is not None:
        add('"event":' + _quote(env.event))
    if env.channel is not None:
        add('"channel":' + _quote(env.channel))
    if env.data is not None:
        add('"data":' + _data_json(env.data))
    if env.name is not None:
        add('"name":' + _quote(env.name))
    if env.user_id is not None:
        add('"user_id":' + _quote(env.user_id))
    if env.tags is not None:
        add('"tags":' + _str_map_json(env.tags))
    if env.sequence is not None:
        add('"sequence":' + str(int(env.sequence)))
    if env.conflation_key is not None:
        add('"conflation_key":' + _quote(env.conflation_key))
    if env.message_id is not None:
        add('"message_id":' + _quote(env.message_id))
    if env.stream_id is not None:
        add('"stream_id":' + _quote(env.stream_id))
    if env.serial is not None:
        add('"serial":' + str(int(env.serial)))
    if env.idempotency_key is not None:
        add('"idempotency_key":' + _quote(env.idempotency_key))
    if env.extras is not None:
        add('"extras":' + _extras_json(env.extras))
    if env.delta_sequence is not None:
        add('"__delta_seq":' + str(int(env.delta_sequence)))
    if env.delta_conflation_key is not None:
        add('"__conflation_key":' + _quote(env.delta_conflation_key))
    return "{" + ",".join(parts) + "}"


# --- MessagePack ----------------------------------------------------------------------------

# One packer for the process: ``pack`` runs under the GIL and resets its buffer (autoreset).
_packer: Final[Any] = msgpack.Packer(use_bin_type=True)  # untyped library


def _data_msgpack(data: Data) -> list[Any]:
    if data.kind == "structured":
        s = cast(Structured, data.value)
        return ["structured", [s.channel_data, s.channel, s.user_data, s.extra]]
    return [data.kind, data.value]


def _header_msgpack(value: HeaderValue) -> list[Any]:
    if isinstance(value, bool):
        return ["bool", value]
    if isinstance(value, int | float):
        return ["number", float(value)]
    return ["string", value]


def _extras_msgpack(extras: Extras) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if extras.headers is not None:
        out["headers"] = {k: _header_msgpack(v) for k, v in extras.headers.items()}
    if extras.ephemeral is not None:
        out["ephemeral"] = extras.ephemeral
    if extras.idempotency_key is not None:
        out["idempotency_key"] = extras.idempotency_key
    if extras.echo is not None:
        out["echo"] = extras.echo
    ai = extras.ai
    if ai is not None:
        ai_map: dict[str, Any] = {}
        if ai.transport is not None:
            ai_map["transport"] = ai.transport
        if ai.codec is not None:
            ai_map["codec"] = ai.codec
        out["ai"] = ai_map
    return out


def encode_msgpack(env: Envelope) -> bytes:
    """The 15-element positional array of §2.2 (nil for absent)."""
    data = env.data
    extras = env.extras
    packed: bytes = _packer.pack(
        [
            env.event,
            env.channel,
            None if data is None else _data_msgpack(data),
            env.name,
            env.user_id,
            env.tags,
            env.sequence,
            env.conflation_key,
            env.message_id,
            env.stream_id,
            env.serial,
            env.idempotency_key,
            None if extras is None else _extras_msgpack(extras),
            env.delta_sequence,
            env.delta_conflation_key,
        ]
    )
    return packed


# --- Protobuf -------------------------------------------------------------------------------

_PACKAGE: Final = "sockudo.v2"


def _build_envelope_class() -> Any:
    """The §2.3 schema as a FileDescriptorProto in a private pool (field numbers are the
    contract). Returns the ``Envelope`` class; it comes from ``message_factory`` at run time, so
    it is typed ``Any``."""
    fdp = descriptor_pb2.FileDescriptorProto(
        name="sockudo/v2/envelope.proto", package=_PACKAGE, syntax="proto3"
    )
    fd = descriptor_pb2.FieldDescriptorProto
    string, uint64, double = fd.TYPE_STRING, fd.TYPE_UINT64, fd.TYPE_DOUBLE
    boolean, raw, message = fd.TYPE_BOOL, fd.TYPE_BYTES, fd.TYPE_MESSAGE

    def optional(msg: Any, name: str, number: int, ftype: int, type_name: str = "") -> None:
        # proto3 ``optional``: a synthetic one-field oneof named ``_<field>`` (after real ones).
        msg.oneof_decl.add(name="_" + name)
        f = msg.field.add(name=name, number=number, type=ftype, label=fd.LABEL_OPTIONAL)
        f.oneof_index = len(msg.oneof_decl) - 1
        f.proto3_optional = True
        if type_name:
            f.type_name = f".{_PACKAGE}.{type_name}"

    def member(
        msg: Any, oneof: int, name: str, number: int, ftype: int, type_name: str = ""
    ) -> None:
        f = msg.field.add(name=name, number=number, type=ftype, label=fd.LABEL_OPTIONAL)
        f.oneof_index = oneof
        if type_name:
            f.type_name = f".{_PACKAGE}.{type_name}"

    def map_field(msg: Any, name: str, number: int, vtype: int, vtype_name: str = "") -> None:
        entry_name = "".join(p.capitalize() for p in name.split("_")) + "Entry"
        entry = msg.nested_type.add(name=entry_name)
        entry.options.map_entry = True
        entry.field.add(name="key", number=1, type=string, label=fd.LABEL_OPTIONAL)
        value = entry.field.add(name="value", number=2, type=vtype, label=fd.LABEL_OPTIONAL)
        if vtype_name:
            value.type_name = f".{_PACKAGE}.{vtype_name}"
        msg.field.add(
            name=name,
            number=number,
            type=message,
            label=fd.LABEL_REPEATED,
            type_name=f".{_PACKAGE}.{msg.name}.{entry_name}",
        )

    env = fdp.message_type.add(name="Envelope")
    optional(env, "event", 1, string)
    optional(env, "channel", 2, string)
    optional(env, "data", 3, message, "Data")
    optional(env, "name", 4, string)
    optional(env, "user_id", 5, string)
    map_field(env, "tags", 6, string)
    optional(env, "sequence", 7, uint64)
    optional(env, "conflation_key", 8, string)
    optional(env, "message_id", 9, string)
    optional(env, "stream_id", 10, string)
    optional(env, "serial", 11, uint64)
    optional(env, "idempotency_key", 12, string)
    optional(env, "extras", 13, message, "Extras")
    optional(env, "delta_sequence", 14, uint64)
    optional(env, "delta_conflation_key", 15, string)

    data = fdp.message_type.add(name="Data")
    data.oneof_decl.add(name="kind")
    member(data, 0, "string_value", 1, string)
    member(data, 0, "structured", 2, message, "Structured")
    member(data, 0, "json_value", 3, string)
    member(data, 0, "binary_value", 4, raw)

    structured = fdp.message_type.add(name="Structured")
    optional(structured, "channel_data", 1, string)
    optional(structured, "channel", 2, string)
    optional(structured, "user_data", 3, string)
    map_field(structured, "extra", 4, string)

    extras = fdp.message_type.add(name="Extras")
    map_field(extras, "headers", 1, message, "HeaderValue")
    optional(extras, "ephemeral", 2, boolean)
    optional(extras, "idempotency_key", 3, string)
    optional(extras, "echo", 4, boolean)
    optional(extras, "ai", 5, message, "AiExtras")

    header = fdp.message_type.add(name="HeaderValue")
    header.oneof_decl.add(name="kind")
    member(header, 0, "string_value", 1, string)
    member(header, 0, "number_value", 2, double)
    member(header, 0, "bool_value", 3, boolean)

    ai = fdp.message_type.add(name="AiExtras")
    map_field(ai, "transport", 1, string)
    map_field(ai, "codec", 2, string)

    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(fdp.SerializeToString())
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{_PACKAGE}.Envelope"))


# Generated classes (no static types for protobuf's dynamic messages).
_PbEnvelope: Final[Any] = _build_envelope_class()


def _set_data_proto(pb: Any, data: Data) -> None:
    kind = data.kind
    if kind == "json":
        pb.json_value = data.value
    elif kind == "string":
        pb.string_value = data.value
    elif kind == "binary":
        pb.binary_value = data.value
    else:
        s = cast(Structured, data.value)
        sv = pb.structured
        sv.SetInParent()
        if s.channel_data is not None:
            sv.channel_data = s.channel_data
        if s.channel is not None:
            sv.channel = s.channel
        if s.user_data is not None:
            sv.user_data = s.user_data
        sv.extra.update(s.extra)


def _set_extras_proto(pb: Any, extras: Extras) -> None:
    pb.SetInParent()
    if extras.headers:
        headers = pb.headers
        for key, value in extras.headers.items():
            if isinstance(value, bool):
                headers[key].bool_value = value
            elif isinstance(value, int | float):
                headers[key].number_value = float(value)  # double (wire type 1), §2.3
            else:
                headers[key].string_value = value
    if extras.ephemeral is not None:
        pb.ephemeral = extras.ephemeral
    if extras.idempotency_key is not None:
        pb.idempotency_key = extras.idempotency_key
    if extras.echo is not None:
        pb.echo = extras.echo
    ai = extras.ai
    if ai is not None:
        pb_ai = pb.ai
        pb_ai.SetInParent()
        if ai.transport:
            pb_ai.transport.update(ai.transport)
        if ai.codec:
            pb_ai.codec.update(ai.codec)


def encode_protobuf(env: Envelope) -> bytes:
    """One ``sockudo.v2.Envelope`` message (§2.3). Attribute assignment on a fresh message is
    the cheapest way to build one with the upb backend (cheaper than keyword construction)."""
    m = _PbEnvelope()
    if env.event is not None:
        m.event = env.event
    if env.channel is not None:
        m.channel = env.channel
    if env.data is not None:
        _set_data_proto(m.data, env.data)
    if env.name is not None:
        m.name = env.name
    if env.user_id is not None:
        m.user_id = env.user_id
    if env.tags:
        m.tags.update(env.tags)
    if env.sequence is not None:
        m.sequence = env.sequence
    if env.conflation_key is not None:
        m.conflation_key = env.conflation_key
    if env.message_id is not None:
        m.message_id = env.message_id
    if env.stream_id is not None:
        m.stream_id = env.stream_id
    if env.serial is not None:
        m.serial = env.serial
    if env.idempotency_key is not None:
        m.idempotency_key = env.idempotency_key
    if env.extras is not None:
        _set_extras_proto(m.extras, env.extras)
    if env.delta_sequence is not None:
        m.delta_sequence = env.delta_sequence
    if env.delta_conflation_key is not None:
        m.delta_conflation_key = env.delta_conflation_key
    out: bytes = m.SerializeToString()
    return out


# --- encode dispatch ------------------------------------------------------------------------

_ENCODERS: Final[dict[str, Callable[[Envelope], str | bytes]]] = {
    "json": encode_json,
    "msgpack": encode_msgpack,
    "protobuf": encode_protobuf,
}


@overload
def encode(env: Envelope, fmt: Literal["json"]) -> str: ...
@overload
def encode(env: Envelope, fmt: Literal["msgpack", "protobuf"]) -> bytes: ...
@overload
def encode(env: Envelope, fmt: WireFormat) -> str | bytes: ...
def encode(env: Envelope, fmt: WireFormat) -> str | bytes:
    """The frame payload for ``fmt``: ``str`` (text frame) for json, ``bytes`` (binary frame)
    otherwise. Encode once per (message, format) and share the result across sockets."""
    try:
        encoder = _ENCODERS[fmt]
    except KeyError:
        raise ValueError(f"unknown wire format {fmt!r}") from None
    return encoder(env)


# --- decode: shared field validation --------------------------------------------------------


def _str(value: Any, what: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise WireError(f"{what} must be a string")


def _uint(value: Any, what: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= _U64_MAX:
        return value
    raise WireError(f"{what} must be an unsigned 64-bit integer")


def _bool(value: Any, what: str) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    raise WireError(f"{what} must be a boolean")


def _str_map(value: Any, what: str) -> dict[str, str] | None:
    if value is None:
        return None
    if isinstance(value, dict) and all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        return value
    raise WireError(f"{what} must be a map of string to string")


def _tolerant_str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _tolerant_uint(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= _U64_MAX:
        return value
    return None


def _parse_or_text(text: str) -> Any:
    try:
        return _loads(text)
    except (ValueError, RecursionError):
        return text


def _json_kind(text: Any) -> Data:
    """Inbound ``json`` kind: re-validated (it may be spliced into other subscribers' JSON
    frames) and re-compacted. Text that is not JSON stands for itself as a string (upstream)."""
    if not isinstance(text, str):
        raise WireError("json data must be a string of JSON text")
    try:
        value = _loads(text)
    except ValueError:
        return Data("string", text, text)
    return Data("json", _dumps(value), value)


def _value_data(value: Any) -> Data:
    """A plain (untagged) decoded value: str → string, bytes → binary, else JSON."""
    if isinstance(value, str):
        return Data("string", value, value)
    if isinstance(value, bytes):
        return Data("binary", value, value)
    return Data("json", _dumps(value), value)


_TAGGED_DATA: Final = frozenset({"string", "json", "binary", "structured"})


def _structured(value: Any) -> Structured:
    if isinstance(value, list):
        if len(value) > 4:
            raise WireError("structured data has too many members")
        cd, ch, ud, extra = (*value, None, None, None, None)[:4]
    elif isinstance(value, dict):
        cd, ch, ud, extra = (
            value.get(k) for k in ("channel_data", "channel", "user_data", "extra")
        )
    else:
        raise WireError("structured data must be an array or a map")
    return Structured(
        _str(cd, "structured.channel_data"),
        _str(ch, "structured.channel"),
        _str(ud, "structured.user_data"),
        _str_map(extra, "structured.extra") or {},
    )


def _msgpack_data(value: Any) -> Data | None:
    if value is None:
        return None
    if (
        isinstance(value, list)
        and len(value) == 2
        and isinstance(value[0], str)
        and value[0] in _TAGGED_DATA
    ):
        kind, inner = value
        if kind == "string":
            if not isinstance(inner, str):
                raise WireError("string data must be a string")
            return Data("string", inner, inner)
        if kind == "json":
            return _json_kind(inner)
        if kind == "binary":
            if not isinstance(inner, bytes):
                raise WireError("binary data must be bin")
            return Data("binary", inner, inner)
        return Data("structured", _structured(inner))
    return _value_data(value)


_HEADER_KINDS: Final = frozenset({"string", "number", "bool"})


def _header_value(value: Any, binary: bool) -> HeaderValue:
    if binary and isinstance(value, list):
        if len(value) == 2 and isinstance(value[0], str) and value[0] in _HEADER_KINDS:
            kind, value = value
            if kind == "string" and isinstance(value, str):
                return value
            if kind == "bool" and isinstance(value, bool):
                return value
            if kind == "number" and isinstance(value, int | float) and not isinstance(value, bool):
                return float(value)
        raise WireError("bad tagged header value")
    if isinstance(value, str | bool):
        return value
    if isinstance(value, int | float):
        # Binary formats carry header numbers as f64 (§2.2/§2.3); JSON keeps the number as sent.
        return float(value) if binary else value
    raise WireError("header values must be string, number or bool")


def _ai(value: Any, binary: bool) -> AiExtras | None:
    if value is None:
        return None
    if isinstance(value, dict):
        transport, codec = value.get("transport"), value.get("codec")
    elif binary and isinstance(value, list) and len(value) <= 2:
        transport, codec = (*value, None, None)[:2]
    else:
        raise WireError("extras.ai must be a map")
    return AiExtras(_str_map(transport, "extras.ai.transport"), _str_map(codec, "extras.ai.codec"))


def _extras(value: Any, binary: bool) -> Extras | None:
    if value is None:
        return None
    if isinstance(value, dict):
        headers = value.get("headers")
        ephemeral = value.get("ephemeral")
        idem = value.get("idempotency_key")
        if idem is None:
            idem = value.get("idempotencyKey")  # accepted alias (§4.3)
        echo = value.get("echo")
        ai = value.get("ai")
    elif binary and isinstance(value, list) and len(value) <= 5:
        # Upstream's positional form: [headers, ephemeral, idempotency_key, echo, ai].
        headers, ephemeral, idem, echo, ai = (*value, None, None, None, None, None)[:5]
    else:
        raise WireError("extras must be a map")
    decoded_headers: dict[str, HeaderValue] | None = None
    if headers is not None:
        if not isinstance(headers, dict):
            raise WireError("extras.headers must be a map")
        decoded_headers = {}
        for key, item in headers.items():
            if not isinstance(key, str):
                raise WireError("extras.headers keys must be strings")
            decoded_headers[key] = _header_value(item, binary)
    return Extras(
        decoded_headers,
        _bool(ephemeral, "extras.ephemeral"),
        _str(idem, "extras.idempotency_key"),
        _bool(echo, "extras.echo"),
        _ai(ai, binary),
    )


def _envelope(values: list[Any], data: Data | None, binary: bool) -> Envelope:
    """Validate the 15 positional values (``data`` already decoded by the caller)."""
    return Envelope(
        _str(values[0], "event"),
        _str(values[1], "channel"),
        data,
        _str(values[3], "name"),
        _str(values[4], "user_id"),
        _str_map(values[5], "tags"),
        _uint(values[6], "sequence"),
        _str(values[7], "conflation_key"),
        _str(values[8], "message_id"),
        _str(values[9], "stream_id"),
        _uint(values[10], "serial"),
        # Tolerated inbound and ignored by the server (§2.1): never a reason to reject a frame.
        _tolerant_str(values[11]),
        _extras(values[12], binary),
        _tolerant_uint(values[13]),
        _tolerant_str(values[14]),
    )


_FIELDS: Final = (
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
)


def _from_map(obj: dict[Any, Any]) -> list[Any]:
    values = [obj.get(k) for k in _FIELDS]
    delta_seq = obj.get("__delta_seq")
    values.append(obj.get("delta_sequence") if delta_seq is None else delta_seq)
    delta_key = obj.get("__conflation_key")
    values.append(obj.get("delta_conflation_key") if delta_key is None else delta_key)
    return values


# --- decode per format ----------------------------------------------------------------------


def _decode_json(raw: str | bytes) -> Envelope:
    obj = _loads(raw)
    if not isinstance(obj, dict):
        raise WireError("a JSON frame must be an object")
    # JSON has no tagging: a string is string data, any other value (null included: the key is
    # there) is JSON data.
    data = _value_data(obj["data"]) if "data" in obj else None
    return _envelope(_from_map(obj), data, binary=False)


def _decode_msgpack(raw: str | bytes) -> Envelope:
    buf = raw.encode("utf-8") if isinstance(raw, str) else raw
    # ``unpackb`` raises ExtraData for trailing bytes after the first value (§2.2).
    obj = msgpack.unpackb(buf, raw=False)
    if isinstance(obj, list):
        if len(obj) > len(_FIELDS) + 2:
            raise WireError("envelope array has more than 15 elements")
        values = obj + [None] * (len(_FIELDS) + 2 - len(obj))
    elif isinstance(obj, dict):
        values = _from_map(obj)
    else:
        raise WireError("a MessagePack frame must be an array or a map")
    return _envelope(values, _msgpack_data(values[2]), binary=True)


def _decode_protobuf(raw: str | bytes) -> Envelope:
    msg = _PbEnvelope()
    msg.ParseFromString(raw.encode("utf-8") if isinstance(raw, str) else raw)
    has = msg.HasField
    data: Data | None = None
    if has("data"):
        d = msg.data
        which = d.WhichOneof("kind")
        if which == "string_value":
            data = Data("string", d.string_value, d.string_value)
        elif which == "json_value":
            data = _json_kind(d.json_value)
        elif which == "binary_value":
            data = Data("binary", d.binary_value, d.binary_value)
        elif which == "structured":
            s = d.structured
            data = Data(
                "structured",
                Structured(
                    s.channel_data if s.HasField("channel_data") else None,
                    s.channel if s.HasField("channel") else None,
                    s.user_data if s.HasField("user_data") else None,
                    dict(s.extra),
                ),
            )
        else:
            data = Data("json", "null", None)  # present but empty: upstream reads JSON null
    extras: Extras | None = None
    if has("extras"):
        e = msg.extras
        headers: dict[str, HeaderValue] | None = None
        if e.headers:
            headers = {}
            for key, hv in e.headers.items():
                kind = hv.WhichOneof("kind")
                headers[key] = "" if kind is None else getattr(hv, kind)
        ai: AiExtras | None = None
        if e.HasField("ai"):
            ai = AiExtras(dict(e.ai.transport) or None, dict(e.ai.codec) or None)
        extras = Extras(
            headers,
            e.ephemeral if e.HasField("ephemeral") else None,
            e.idempotency_key if e.HasField("idempotency_key") else None,
            e.echo if e.HasField("echo") else None,
            ai,
        )
    return Envelope(
        msg.event if has("event") else None,
        msg.channel if has("channel") else None,
        data,
        msg.name if has("name") else None,
        msg.user_id if has("user_id") else None,
        dict(msg.tags) or None,
        msg.sequence if has("sequence") else None,
        msg.conflation_key if has("conflation_key") else None,
        msg.message_id if has("message_id") else None,
        msg.stream_id if has("stream_id") else None,
        msg.serial if has("serial") else None,
        msg.idempotency_key if has("idempotency_key") else None,
        extras,
        msg.delta_sequence if has("delta_sequence") else None,
        msg.delta_conflation_key if has("delta_conflation_key") else None,
    )


_DECODERS: Final[dict[str, Callable[[str | bytes], Envelope]]] = {
    "json": _decode_json,
    "msgpack": _decode_msgpack,
    "protobuf": _decode_protobuf,
}


def decode(raw: str | bytes, fmt: WireFormat) -> Envelope:
    """Decode one inbound frame in the connection's format, whatever the WebSocket opcode was.

    Accepts everything §2.2 requires inbound (MessagePack arrays of up to 15 elements, maps keyed
    by field name, tagged or plain ``data``/header values, map or positional ``extras``); JSON as
    text or UTF-8 bytes; unknown protobuf fields are skipped. Raises :class:`WireError`.
    """
    try:
        decoder = _DECODERS[fmt]
    except KeyError:
        raise ValueError(f"unknown wire format {fmt!r}") from None
    try:
        return decoder(raw)
    except WireError:
        raise
    except (ValueError, TypeError, RecursionError, DecodeError, msgpack.UnpackException) as exc:
        # JSONDecodeError, UnicodeDecodeError, msgpack ExtraData/FormatError/StackError, ints
        # out of range, unserialisable plain data (bytes inside a JSON value), deep nesting.
        raise WireError(f"undecodable {fmt} frame: {exc}") from exc
