"""``schemas/`` against the event classes, the golden bytes and the released-schema hashes."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from sockudo.events import codec, mapping
from sockudo.events.catalog import EVENT_CLASSES
from sockudo.events.channel import Flags, Origin
from sockudo.events.messages import MessageUpdated
from sockudo.events.nodes import NodeHeartbeat
from sockudo.events.push import PushDeliveriesPlanned
from tests.fixtures import make_golden, write_schemas

ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = ROOT / "schemas"
FIXTURES = ROOT / "tests" / "fixtures"
CASES = make_golden.golden_cases()


def _families() -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for family, version, _ in make_golden.released_schemas():
        out.setdefault(family, []).append(version)
    return out


# --------------------------------------------------------------------------- classes ↔ families


def test_every_class_has_exactly_one_family_and_every_family_a_class() -> None:
    families = set(_families())
    classes = {cls.__name__ for cls in EVENT_CLASSES}
    assert classes - families == set(), "event classes without a schema family"
    assert families - classes == set(), "orphan schema families"
    assert {p.name for p in SCHEMAS.iterdir()} == families


@pytest.mark.parametrize("cls", EVENT_CLASSES, ids=[c.__name__ for c in EVENT_CLASSES])
def test_current_schema_matches_the_class_fields(cls: type) -> None:
    versions = _families()[cls.__name__]
    current = json.loads((SCHEMAS / cls.__name__ / f"v{max(versions)}.avsc").read_text())
    assert current["name"] == cls.__name__
    assert current["namespace"] == "sockudo.events"
    names = [f["name"] for f in current["fields"]]
    assert names == [f.name for f in dataclasses.fields(cls)]
    assert mapping.strip_docs(current) == mapping.strip_docs(mapping.avro_schema(cls))


def test_no_schema_version_is_pending() -> None:
    pending = write_schemas.pending()
    assert pending == [], f"run tests/fixtures/write_schemas.py: {[str(p) for p, _ in pending]}"


@pytest.mark.parametrize("family", sorted(_families()))
def test_versions_are_contiguous_from_one(family: str) -> None:
    versions = _families()[family]
    assert versions == list(range(1, len(versions) + 1))


def test_only_message_published_has_evolved_so_far() -> None:
    evolved = {family: v for family, v in _families().items() if v != [1]}
    assert evolved == {"MessagePublished": [1, 2, 3]}
    v1 = json.loads((SCHEMAS / "MessagePublished" / "v1.avsc").read_text())
    assert {"tags", "client_event"} & {f["name"] for f in v1["fields"]} == set()


# --------------------------------------------------------------------------- the mapping itself


def _field(schema: dict[str, Any], name: str) -> dict[str, Any]:
    return next(f for f in schema["fields"] if f["name"] == name)


def test_mapping_of_field_types_and_defaults() -> None:
    published = mapping.strip_docs(mapping.avro_schema(codec.event_class("MessagePublished")))
    assert _field(published, "event_id") == {"name": "event_id", "type": "string"}
    assert _field(published, "data_is_json") == {
        "name": "data_is_json", "type": "boolean", "default": False,
    }  # fmt: skip
    assert _field(published, "extras_json") == {
        "name": "extras_json", "type": ["null", "string"], "default": None,
    }  # fmt: skip
    assert _field(published, "tags")["type"] == ["null", {"type": "map", "values": "string"}]
    flags = _field(published, "flags")
    assert flags["type"]["name"] == "Flags"
    assert flags["default"] == dataclasses.asdict(Flags())
    assert _field(published, "origin")["type"]["fields"][0] == {"name": "node", "type": "string"}
    retention = _field(published, "retention")["type"]
    assert _field(retention, "window_s")["type"] == ["null", "long"]

    planned = mapping.avro_schema(PushDeliveriesPlanned)
    items = _field(planned, "deliveries")["type"]
    assert items["type"] == "array"
    assert items["items"]["name"] == "PlannedDelivery"

    heartbeat = mapping.avro_schema(NodeHeartbeat)
    assert _field(heartbeat, "subscriptions") == {
        "name": "subscriptions", "type": {"type": "map", "values": "long"}, "default": {},
    }  # fmt: skip

    updated = mapping.avro_schema(MessageUpdated)
    assert _field(updated, "clear_fields") == {
        "name": "clear_fields", "type": {"type": "array", "items": "string"}, "default": [],
    }  # fmt: skip


def test_nested_records_are_defined_once_per_schema() -> None:
    @dataclasses.dataclass(frozen=True, slots=True)
    class Twice:
        a: Origin
        b: Origin | None = None

    schema = mapping.avro_schema(Twice)
    assert _field(schema, "a")["type"]["name"] == "Origin"
    assert _field(schema, "b")["type"] == ["null", "Origin"]


def test_unsupported_field_types_are_refused() -> None:
    @dataclasses.dataclass(frozen=True)
    class Bad:
        x: list[str]

    @dataclasses.dataclass(frozen=True)
    class BadUnion:
        x: int | str

    @dataclasses.dataclass(frozen=True)
    class OptionalWithoutDefault:
        x: str | None

    for cls in (Bad, BadUnion, OptionalWithoutDefault):
        with pytest.raises(TypeError):
            mapping.avro_schema(cls)


# --------------------------------------------------------------------------- golden bytes


def test_every_released_version_has_golden_bytes_and_no_golden_is_orphaned() -> None:
    expected = {f"{c.family}/v{c.version}.bin" for c in CASES}
    present = {
        str(p.relative_to(FIXTURES / "golden")) for p in (FIXTURES / "golden").rglob("*.bin")
    }
    assert present == expected, "run tests/fixtures/make_golden.py"


@pytest.mark.parametrize("case", CASES, ids=[f"{c.family}-v{c.version}" for c in CASES])
def test_golden_bytes_decode_to_the_expected_event(case: make_golden.GoldenCase) -> None:
    value = case.golden_path.read_bytes()
    assert value[0] == case.version
    cls = codec.event_class(case.family)
    headers = (("sk.type", cls.TYPE.encode()), ("sk.schema", case.family.encode()))
    decoded = codec.decode(headers, value)
    assert decoded == case.expected


def test_golden_v1_message_published_carries_defaults_for_newer_fields() -> None:
    case = next(c for c in CASES if (c.family, c.version) == ("MessagePublished", 1))
    decoded = codec.decode("MessagePublished", case.golden_path.read_bytes())
    assert decoded.tags is None  # type: ignore[union-attr]
    assert decoded.client_event is False  # type: ignore[union-attr]
    assert decoded.name  # type: ignore[union-attr]


# --------------------------------------------------------------------------- released schemas


def test_released_schema_files_never_change() -> None:
    recorded: dict[str, str] = json.loads((FIXTURES / "schema_hashes.json").read_text())
    on_disk = {
        f"{p.parent.name}/{p.name}": hashlib.sha256(p.read_bytes()).hexdigest()
        for p in SCHEMAS.glob("*/*.avsc")
    }
    removed = sorted(set(recorded) - set(on_disk))
    assert removed == [], "released schema versions must never be deleted"
    unrecorded = sorted(set(on_disk) - set(recorded))
    assert unrecorded == [], "new schema versions: run tests/fixtures/make_golden.py"
    changed = sorted(k for k in recorded if recorded[k] != on_disk[k])
    assert changed == [], "released schemas changed: restore them and add a new version"
