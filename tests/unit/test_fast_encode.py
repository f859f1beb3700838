"""The generated writers (``sockudo.events.fastencode``) write what fastavro writes."""

from __future__ import annotations

import io
import random
from pathlib import Path
from typing import Any

import pytest
from fastavro import schemaless_writer

from sockudo.errors import CodecError
from sockudo.events import codec
from sockudo.events.catalog import EVENT_CLASSES
from sockudo.events.channel import MessagePublished, Origin, Retention
from tests.unit.test_codec import random_instance

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
IDS = [cls.__name__ for cls in EVENT_CLASSES]


@pytest.fixture(scope="module")
def c() -> codec.Codec:
    return codec.Codec(codec.SchemaRegistry(SCHEMAS))


def _fastavro(c: codec.Codec, event: Any) -> bytes:
    """What the codec wrote before the generated writers: ``to_dict``, then fastavro."""
    fam = c._by_class[type(event)]
    out = io.BytesIO()
    out.write(fam.prefix)
    schemaless_writer(out, fam.current, fam.to_dict(event), disable_tuple_notation=True)
    return out.getvalue()


@pytest.mark.parametrize("cls", EVENT_CLASSES, ids=IDS)
def test_generated_writer_equals_fastavro(c: codec.Codec, cls: type) -> None:
    assert c._by_class[cls].write is not None
    rng = random.Random("encode" + cls.__name__)
    for mode in ("minimal", "full", *["random"] * 30):
        event = random_instance(cls, rng, mode)
        value = c.encode(event).value
        assert value == _fastavro(c, event)
        assert c.decode(cls.__name__, value) == event


def _publish(**changes: Any) -> MessagePublished:
    event = MessagePublished(
        event_id="e",
        app_id="a",
        channel="c",
        origin=Origin(node="n"),
        message_id="m",
        name="ev",
        data="d",
    )
    # Bypass the frozen dataclass: the writer must refuse what fastavro refuses.
    for name, value in changes.items():
        object.__setattr__(event, name, value)
    return event


@pytest.mark.parametrize(
    "changes",
    [
        {"channel": None},
        {"channel": 5},
        {"data": b"bytes"},
        {"origin": None},
        {"origin": "n"},
        {"name": "\ud800"},
    ],
    ids=["none", "int", "bytes-for-string", "no-origin", "str-origin", "lone-surrogate"],
)
def test_what_fastavro_refuses_is_a_codec_error(c: codec.Codec, changes: dict[str, Any]) -> None:
    event = _publish(**changes)
    with pytest.raises(Exception):  # noqa: B017, PT011 - fastavro raises several types
        _fastavro(c, event)
    with pytest.raises(CodecError):
        c.encode(event)


def test_longs_at_and_past_the_64_bit_edges(c: codec.Codec) -> None:
    for value in (0, -1, 63, -64, 64, -65, 8191, -8193, 2**63 - 1, -(2**63)):
        event = _publish(retention=Retention(max_count=value))
        assert c.encode(event).value == _fastavro(c, event)
    for value in (2**63, -(2**63) - 1):
        event = _publish(retention=Retention(max_count=value))
        with pytest.raises(CodecError):
            c.encode(event)


def test_strings_and_maps_past_one_byte_lengths(c: codec.Codec) -> None:
    for n in (0, 63, 64, 127, 128, 70_000):
        tags = {f"k{i}": "v" * (i % 3) for i in range(n // 1000)}
        event = _publish(data="é" * n, tags=tags or None)
        assert c.encode(event).value == _fastavro(c, event)
