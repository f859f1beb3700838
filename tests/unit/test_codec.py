"""The event codec: round trips, schema resolution and the typed errors of spec 05 §6.3."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import io
import json
import random
import shutil
import types
import typing
from pathlib import Path
from typing import Any

import pytest
from fastavro import parse_schema, schemaless_writer

from sockudo.errors import (
    CodecError,
    ConfigError,
    UndecodableRecord,
    UnknownSchema,
    UnknownSchemaVersion,
)
from sockudo.events import codec, mapping
from sockudo.events.catalog import EVENT_CLASSES
from sockudo.events.channel import Flags, MessagePublished, Origin, Retention

EVENT_MODULES = [
    "channel",
    "presence",
    "messages",
    "annotations",
    "push",
    "registry",
    "nodes",
    "users",
]
SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
IDS = [cls.__name__ for cls in EVENT_CLASSES]


@pytest.fixture(scope="module")
def c() -> codec.Codec:
    return codec.Codec(codec.SchemaRegistry(SCHEMAS))


# --------------------------------------------------------------------------- random events

_EDGE_INTS = [0, 1, -1, 63, 64, -64, -65, 2**31, 2**63 - 1, -(2**63)]
_ALPHABET = "abcXYZ019 -_:./\x00\t\né✓ü中文😀\U0010ffff"


def _str(rng: random.Random) -> str:
    return "".join(rng.choice(_ALPHABET) for _ in range(rng.choice([0, 1, 5, 40])))


def _random_value(tp: Any, rng: random.Random, mode: str) -> Any:
    if tp is str:
        return _str(rng)
    if tp is bool:
        return rng.random() < 0.5
    if tp is int:
        return rng.choice(_EDGE_INTS) if rng.random() < 0.5 else rng.randint(-(2**63), 2**63 - 1)
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if mode == "minimal" or (mode == "random" and rng.random() < 0.4):
            return None
        return _random_value(next(a for a in args if a is not type(None)), rng, mode)
    if origin is dict:
        n = 0 if mode == "minimal" else rng.choice([0, 1, 3])
        return {_str(rng) + str(i): _random_value(args[1], rng, mode) for i in range(n)}
    if origin is tuple:
        n = 0 if mode == "minimal" else rng.choice([0, 1, 3])
        return tuple(_random_value(args[0], rng, mode) for _ in range(n))
    if dataclasses.is_dataclass(tp):
        return random_instance(typing.cast(type, tp), rng, mode)
    raise AssertionError(f"no generator for {tp!r}")


def random_instance(cls: type, rng: random.Random, mode: str = "random") -> Any:
    """An instance of ``cls``: ``minimal`` = required fields only, ``full`` = every optional
    set, ``random`` = each optional set or left to its default at random."""
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        has_default = f.default is not dataclasses.MISSING or (
            f.default_factory is not dataclasses.MISSING
        )
        if has_default and (mode == "minimal" or (mode == "random" and rng.random() < 0.3)):
            continue
        kwargs[f.name] = _random_value(hints[f.name], rng, mode)
    return cls(**kwargs)


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("cls", EVENT_CLASSES, ids=IDS)
def test_round_trip_of_every_event_class(c: codec.Codec, cls: type) -> None:
    rng = random.Random(cls.__name__)
    events = [random_instance(cls, rng, "minimal"), random_instance(cls, rng, "full")]
    events += [random_instance(cls, rng) for _ in range(30)]
    for event in events:
        encoded = c.encode(event)
        assert encoded.type == cls.TYPE  # type: ignore[attr-defined]
        assert encoded.family == cls.__name__
        assert encoded.headers == (
            ("sk.type", cls.TYPE.encode()),  # type: ignore[attr-defined]
            ("sk.schema", cls.__name__.encode()),
        )
        assert encoded.value[0] == c.current_version(cls.__name__)
        decoded = c.decode(encoded.headers, encoded.value)
        assert type(decoded) is cls
        assert decoded == event
        assert c.decode(cls.__name__, encoded.value) == event
        assert _unhashable(event) or hash(decoded) == hash(event)


def _unhashable(event: Any) -> bool:
    try:
        hash(event)
    except TypeError:
        return True  # dict fields (tags, planned_by_provider) make an event unhashable
    return False


def test_decoded_events_are_frozen_and_nested_values_typed(c: codec.Codec) -> None:
    event = MessagePublished(
        "e1", "app1", "chat", Origin("node-a", socket_id="1.2"), "m1", "n", "d",
        tags={"k": "v"}, retention=Retention(window_s=60),
    )  # fmt: skip
    decoded = c.decode("MessagePublished", c.encode(event).value)
    assert isinstance(decoded, MessagePublished)
    assert isinstance(decoded.origin, Origin)
    assert isinstance(decoded.flags, Flags)
    assert decoded.retention == Retention(window_s=60)
    with pytest.raises(dataclasses.FrozenInstanceError):
        decoded.name = "other"  # type: ignore[misc]


def test_module_level_api_uses_the_checkout_schemas() -> None:
    event = random_instance(MessagePublished, random.Random(1), "full")
    encoded = codec.encode(event)
    assert codec.decode(encoded.headers, encoded.value) == event
    assert codec.decode_type(encoded.headers) == "channel.publish"


# --------------------------------------------------------------------------- the catalog


def test_every_event_class_is_registered_once() -> None:
    declared = set()
    for name in EVENT_MODULES:
        module = importlib.import_module(f"sockudo.events.{name}")
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if obj.__module__ == module.__name__ and "TYPE" in obj.__dict__:
                declared.add(obj)
    assert declared == set(EVENT_CLASSES)
    assert len({cls.TYPE for cls in EVENT_CLASSES}) == len(EVENT_CLASSES)
    assert len({cls.__name__ for cls in EVENT_CLASSES}) == len(EVENT_CLASSES)


@pytest.mark.parametrize("cls", EVENT_CLASSES, ids=IDS)
def test_event_classes_are_frozen_slotted_dataclasses(cls: type) -> None:
    assert dataclasses.is_dataclass(cls)
    params = cls.__dataclass_params__  # type: ignore[attr-defined]
    assert params.frozen
    assert "__slots__" in cls.__dict__
    assert isinstance(cls.TYPE, str)  # type: ignore[attr-defined]
    assert "TYPE" not in {f.name for f in dataclasses.fields(cls)}
    assert codec.event_class(cls.__name__) is cls
    assert codec.event_class_for_type(cls.TYPE) is cls


def test_event_class_lookups_reject_unknown_names() -> None:
    with pytest.raises(UnknownSchema):
        codec.event_class("NoSuchEvent")
    with pytest.raises(UnknownSchema):
        codec.event_class_for_type("no.such")


# --------------------------------------------------------------------------- evolution


def _old_message_published_bytes(event: MessagePublished, version: int) -> bytes:
    """``event`` written the way a v1/v2 node wrote it: that schema, without newer fields."""
    schema = json.loads((SCHEMAS / "MessagePublished" / f"v{version}.avsc").read_text())
    record = mapping.to_dict(MessagePublished)(event)
    del record["data_is_binary"]
    if version == 1:
        del record["tags"], record["client_event"]
    out = io.BytesIO()
    out.write(bytes([version]))
    schemaless_writer(out, parse_schema(schema, named_schemas={}), record)
    return out.getvalue()


def _v1_message_published_bytes(event: MessagePublished) -> bytes:
    return _old_message_published_bytes(event, 1)


def test_v1_message_published_decodes_into_the_current_class_with_defaults(
    c: codec.Codec,
) -> None:
    assert c.current_version("MessagePublished") == 3
    rng = random.Random(7)
    for _ in range(20):
        event = dataclasses.replace(
            random_instance(MessagePublished, rng),
            tags=None,
            client_event=False,
            data_is_binary=False,
        )
        decoded = c.decode("MessagePublished", _v1_message_published_bytes(event))
        assert decoded == event
    full = random_instance(MessagePublished, rng, "full")
    decoded = c.decode("MessagePublished", _v1_message_published_bytes(full))
    assert isinstance(decoded, MessagePublished)
    assert decoded.tags is None
    assert decoded.client_event is False
    assert decoded.data_is_binary is False
    assert decoded == dataclasses.replace(full, tags=None, client_event=False, data_is_binary=False)


def test_v2_message_published_decodes_with_data_is_binary_false(c: codec.Codec) -> None:
    rng = random.Random(8)
    for _ in range(20):
        event = dataclasses.replace(random_instance(MessagePublished, rng), data_is_binary=False)
        assert c.decode("MessagePublished", _old_message_published_bytes(event, 2)) == event
    full = random_instance(MessagePublished, rng, "full")
    decoded = c.decode("MessagePublished", _old_message_published_bytes(full, 2))
    assert decoded == dataclasses.replace(full, data_is_binary=False)


def test_v3_message_published_round_trips_binary_data(c: codec.Codec) -> None:
    event = MessagePublished(
        "e",
        "a",
        "private-c",
        Origin("n", socket_id="1.2"),
        "m",
        "client-x",
        "[0,255]",
        data_is_json=True,
        client_event=True,
        data_is_binary=True,
    )
    encoded = c.encode(event)
    assert encoded.value[:1] == b"\x03"
    assert c.decode("MessagePublished", encoded.value) == event


def test_encode_always_writes_the_current_version(c: codec.Codec) -> None:
    event = random_instance(MessagePublished, random.Random(3), "full")
    assert c.encode(event).value[:1] == b"\x03"


# --------------------------------------------------------------------------- errors


@pytest.fixture(scope="module")
def sample(c: codec.Codec) -> codec.EncodedEvent:
    return c.encode(random_instance(MessagePublished, random.Random(11), "full"))


@pytest.mark.parametrize("version", [0, 4, 42, 255])
def test_unknown_version_byte_is_a_typed_error(
    c: codec.Codec, sample: codec.EncodedEvent, version: int
) -> None:
    value = bytes([version]) + sample.value[1:]
    with pytest.raises(UnknownSchemaVersion) as info:
        c.decode(sample.headers, value)
    assert (info.value.family, info.value.version) == ("MessagePublished", version)


def test_unknown_family_is_a_typed_error(c: codec.Codec, sample: codec.EncodedEvent) -> None:
    with pytest.raises(UnknownSchema):
        c.decode("NoSuchEvent", sample.value)
    with pytest.raises(UnknownSchema):
        c.decode((("sk.type", b"x.y"), ("sk.schema", b"NoSuchEvent")), sample.value)
    with pytest.raises(UnknownSchema):
        c.decode((("sk.type", b"channel.publish"),), sample.value)
    with pytest.raises(UnknownSchema):
        c.decode((("sk.schema", b"\xff\xfe"),), sample.value)


@pytest.mark.parametrize(
    "mangle",
    [
        pytest.param(lambda v: b"", id="empty"),
        pytest.param(lambda v: v[:1], id="version-only"),
        pytest.param(lambda v: v[:20], id="truncated"),
        pytest.param(lambda v: v[:-1], id="last-byte-missing"),
        pytest.param(lambda v: v + b"\x00", id="trailing-byte"),
        pytest.param(lambda v: v[:1] + b"\xff" * 12, id="endless-varint"),
        pytest.param(lambda v: v[:1] + b"\x7f" + b"a" * 10, id="string-longer-than-value"),
        pytest.param(lambda v: v[:1] + b"\x01" + b"x", id="negative-length"),
        pytest.param(lambda v: v[:1] + b"\x04\xc3\x28" + v[4:], id="invalid-utf8"),
    ],
)
def test_garbage_is_undecodable(c: codec.Codec, sample: codec.EncodedEvent, mangle: Any) -> None:
    with pytest.raises(UndecodableRecord):
        c.decode(sample.headers, mangle(sample.value))


def test_type_header_must_agree_with_the_family(c: codec.Codec, sample: codec.EncodedEvent) -> None:
    headers = (("sk.type", b"stream.reset"), ("sk.schema", b"MessagePublished"))
    with pytest.raises(UndecodableRecord):
        c.decode(headers, sample.value)
    assert isinstance(
        c.decode((("sk.schema", b"MessagePublished"),), sample.value), MessagePublished
    )


def test_codec_errors_are_codec_errors() -> None:
    for error in (UnknownSchema, UnknownSchemaVersion, UndecodableRecord):
        assert issubclass(error, CodecError)


def test_decode_type_reads_only_the_header() -> None:
    assert codec.decode_type([("sk.node", b"n"), ("sk.type", b"presence.join")]) == "presence.join"
    with pytest.raises(UnknownSchema):
        codec.decode_type([("sk.schema", b"MessagePublished")])


def test_encode_rejects_non_events_and_invalid_values(c: codec.Codec) -> None:
    with pytest.raises(UnknownSchema):
        c.encode(Origin("n"))  # type: ignore[arg-type]
    bad = MessagePublished("e", "a", "c", Origin("n"), "m", "n", None)  # type: ignore[arg-type]
    with pytest.raises(CodecError):
        c.encode(bad)
    too_big = dataclasses.replace(bad, data="d", retention=Retention(window_s=2**63))
    with pytest.raises(CodecError):
        c.encode(too_big)


# --------------------------------------------------------------------------- loading schemas


def _copy_schemas(tmp_path: Path) -> Path:
    target = tmp_path / "schemas"
    shutil.copytree(SCHEMAS, target)
    return target


def test_schema_dir_comes_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(codec.SCHEMAS_DIR_ENV, str(tmp_path))
    assert codec.default_schemas_dir() == tmp_path
    monkeypatch.delenv(codec.SCHEMAS_DIR_ENV)
    assert codec.default_schemas_dir() == SCHEMAS


def test_missing_schema_dir_refuses_to_load(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        codec.SchemaRegistry(tmp_path / "absent")


def test_a_family_without_a_class_refuses_to_load(tmp_path: Path) -> None:
    schemas = _copy_schemas(tmp_path)
    orphan = schemas / "SomethingHappened"
    orphan.mkdir()
    (orphan / "v1.avsc").write_text(
        json.dumps({"type": "record", "name": "SomethingHappened",
                    "namespace": "sockudo.events", "fields": []})
    )  # fmt: skip
    with pytest.raises(ConfigError, match="SomethingHappened"):
        codec.Codec(codec.SchemaRegistry(schemas))


def test_a_class_without_a_family_refuses_to_load(tmp_path: Path) -> None:
    schemas = _copy_schemas(tmp_path)
    shutil.rmtree(schemas / "NodeStopping")
    with pytest.raises(ConfigError, match="NodeStopping"):
        codec.Codec(codec.SchemaRegistry(schemas))


def test_a_current_schema_that_differs_from_its_class_refuses_to_load(tmp_path: Path) -> None:
    schemas = _copy_schemas(tmp_path)
    path = schemas / "NodeStopping" / "v1.avsc"
    schema = json.loads(path.read_text())
    schema["fields"][-1]["type"] = "string"
    path.write_text(json.dumps(schema))
    with pytest.raises(ConfigError, match="NodeStopping"):
        codec.Codec(codec.SchemaRegistry(schemas))


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("v1.avsc", "{not json"),
        ("v1.avsc", '{"type": "record", "name": "Other", "namespace": "sockudo.events", '
                    '"fields": []}'),
        ("v1.avsc", '{"type": "record", "name": "NodeStopping", "fields": [{"name": "x"}]}'),
        ("v256.avsc", "{}"),
        ("v01.avsc", "{}"),
        ("notes.txt", ""),
    ],
)  # fmt: skip
def test_malformed_schema_files_refuse_to_load(tmp_path: Path, name: str, text: str) -> None:
    schemas = _copy_schemas(tmp_path)
    (schemas / "NodeStopping" / "v1.avsc").unlink()
    (schemas / "NodeStopping" / name).write_text(text)
    with pytest.raises(ConfigError):
        codec.SchemaRegistry(schemas)


def test_schemas_are_parsed_once_per_version() -> None:
    registry = codec.SchemaRegistry(SCHEMAS)
    published = registry.families["MessagePublished"]
    assert sorted(published.parsed) == [1, 2, 3]
    assert published.current_version == 3
    assert all("__fastavro_parsed" in schema for schema in published.parsed.values())
