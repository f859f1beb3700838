"""Avro encode/decode of events: the only place events become bytes and back (pure, no I/O
after loading the schemas).

A record value is one byte, the schema version of the event's family, followed by the Avro
binary body (fastavro, schemaless) written with ``schemas/<family>/v<version>.avsc``. The family
travels in the ``sk.schema`` header and the event type in ``sk.type`` (spec 05 §6.3). Reading
resolves the writer's version into the family's current schema, so old bytes decode into the
current dataclass with defaults for newer fields. Bytes of the current version are read by a
reader generated once per family (``sockudo.events.fastdecode``: what fastavro reads, without
its per-field dispatch), and written by its twin (``fastencode``). What cannot be decoded
raises a ``CodecError`` subclass, never a skip:

- ``UnknownSchema``: the family is not one this node ships;
- ``UnknownSchemaVersion``: the version byte names no released version of the family;
- ``UndecodableRecord``: known family and version, but the bytes do not parse (or a tombstone).

Schemas are loaded and parsed once (``default_schemas_dir``: ``$SOCKUDO_SCHEMAS_DIR``, the
checkout's ``schemas/``, or the copy shipped in the wheel) and checked against the dataclasses:
a node whose schemas and classes disagree refuses to start (``ConfigError``). The event classes
themselves are listed in ``sockudo.events.catalog.EVENT_CLASSES`` (re-exported here).
"""

from __future__ import annotations

import io
import json
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, cast

from fastavro import parse_schema, schemaless_reader, schemaless_writer

from sockudo.errors import (
    CodecError,
    ConfigError,
    UndecodableRecord,
    UnknownSchema,
    UnknownSchemaVersion,
)
from sockudo.events import fastdecode, fastencode, mapping
from sockudo.events.catalog import EVENT_CLASSES, Event

__all__ = [
    "EVENT_CLASSES",
    "HEADER_SCHEMA",
    "HEADER_TYPE",
    "SCHEMAS_DIR_ENV",
    "Codec",
    "EncodedEvent",
    "Event",
    "FamilySchemas",
    "SchemaRegistry",
    "decode",
    "decode_type",
    "default_codec",
    "default_schemas_dir",
    "encode",
    "event_class",
    "event_class_for_type",
]

HEADER_TYPE: Final = "sk.type"
HEADER_SCHEMA: Final = "sk.schema"
SCHEMAS_DIR_ENV: Final = "SOCKUDO_SCHEMAS_DIR"

_VERSION_FILE = re.compile(r"^v([1-9][0-9]*)\.avsc$")
_MAX_VERSION = 255

Headers = Sequence[tuple[str, bytes]]

_BY_FAMILY: Final[dict[str, type[Event]]] = {cls.__name__: cls for cls in EVENT_CLASSES}
_BY_TYPE: Final[dict[str, type[Event]]] = {cls.TYPE: cls for cls in EVENT_CLASSES}


def event_class(family: str) -> type[Event]:
    """The event class of an Avro family (``UnknownSchema`` if there is none)."""
    try:
        return _BY_FAMILY[family]
    except KeyError:
        raise UnknownSchema(f"unknown event family {family!r}") from None


def event_class_for_type(event_type: str) -> type[Event]:
    """The event class of an ``sk.type`` value (``UnknownSchema`` if there is none)."""
    try:
        return _BY_TYPE[event_type]
    except KeyError:
        raise UnknownSchema(f"unknown event type {event_type!r}") from None


# --------------------------------------------------------------------------- schemas on disk


@dataclass(frozen=True, slots=True)
class FamilySchemas:
    """Every released schema version of one event family."""

    family: str
    sources: Mapping[int, dict[str, Any]]
    """The ``.avsc`` JSON of each version, as written on disk."""
    parsed: Mapping[int, dict[str, Any]]
    """The same, parsed by fastavro once."""

    @property
    def current_version(self) -> int:
        """The newest version: the one ``encode`` writes and every reader resolves into."""
        return max(self.parsed)


def default_schemas_dir() -> Path:
    """Where the node's schemas live, first match wins.

    1. ``$SOCKUDO_SCHEMAS_DIR``;
    2. ``schemas/`` of the source checkout holding this package (next to ``pyproject.toml``);
    3. ``sockudo/events/schemas/``: the copy shipped in the wheel (in a checkout, a symlink
       to the top-level ``schemas/``).
    """
    configured = os.environ.get(SCHEMAS_DIR_ENV)
    if configured:
        return Path(configured)
    here = Path(__file__).resolve().parent
    checkout = here.parents[1]
    if (checkout / "pyproject.toml").is_file() and (checkout / "schemas").is_dir():
        return checkout / "schemas"
    return here / "schemas"


class SchemaRegistry:
    """The ``schemas/`` directory, loaded and parsed once: ``<family>/v<N>.avsc`` files."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        if not directory.is_dir():
            raise ConfigError(f"schema directory {str(directory)!r} does not exist")
        families: dict[str, FamilySchemas] = {}
        for family_dir in sorted(p for p in directory.iterdir() if p.is_dir()):
            families[family_dir.name] = self._load_family(family_dir)
        self.families: Mapping[str, FamilySchemas] = families

    @staticmethod
    def _load_family(family_dir: Path) -> FamilySchemas:
        family = family_dir.name
        sources: dict[int, dict[str, Any]] = {}
        parsed: dict[int, dict[str, Any]] = {}
        for path in sorted(family_dir.iterdir()):
            match = _VERSION_FILE.match(path.name)
            if match is None:
                raise ConfigError(f"unexpected file {str(path)!r}: expected v<N>.avsc")
            version = int(match.group(1))
            if version > _MAX_VERSION:
                raise ConfigError(f"{str(path)!r}: versions must fit one byte (1..255)")
            try:
                source = json.loads(path.read_text(encoding="utf-8"))
                if not isinstance(source, dict):
                    raise ValueError("top level is not a record")
                parsed[version] = cast(dict[str, Any], parse_schema(source, named_schemas={}))
            except Exception as exc:
                raise ConfigError(f"invalid Avro schema {str(path)!r}: {exc}") from exc
            fullname = f"{source.get('namespace')}.{source.get('name')}"
            if fullname != f"{mapping.NAMESPACE}.{family}":
                raise ConfigError(
                    f"{str(path)!r} defines {fullname!r}, expected {mapping.NAMESPACE}.{family}"
                )
            sources[version] = source
        if not parsed:
            raise ConfigError(f"schema family directory {str(family_dir)!r} has no versions")
        return FamilySchemas(family, sources, parsed)


# --------------------------------------------------------------------------- the codec


@dataclass(frozen=True, slots=True)
class EncodedEvent:
    """An event ready to append: value bytes plus the headers naming its type and family.

    The caller adds ``sk.node`` and ``sk.req``.
    """

    type: str
    """The ``sk.type`` value, e.g. ``channel.publish``."""
    family: str
    """The ``sk.schema`` value (Avro record name), e.g. ``MessagePublished``."""
    value: bytes
    """Schema-version byte + Avro binary body."""
    headers: tuple[tuple[str, bytes], ...]
    """``(("sk.type", …), ("sk.schema", …))``."""


class _Family:
    """Everything ``encode``/``decode`` need for one family, precomputed."""

    __slots__ = (
        "cls",
        "current",
        "fast",
        "from_dict",
        "headers",
        "name",
        "prefix",
        "to_dict",
        "type",
        "type_bytes",
        "version",
        "write",
        "writers",
    )

    def __init__(self, cls: type[Event], schemas: FamilySchemas) -> None:
        self.cls = cls
        self.name = cls.__name__
        self.type: str = cls.TYPE
        self.type_bytes = self.type.encode()
        self.version = schemas.current_version
        self.prefix = bytes([self.version])
        self.current = schemas.parsed[self.version]
        self.writers: dict[int, dict[str, Any]] = dict(schemas.parsed)
        self.from_dict: Callable[[Any], Event] = mapping.from_dict(cls)
        self.fast: Callable[[bytes], Event] | None
        """Reads values written with the current version (``version`` byte included)."""
        try:
            self.fast = fastdecode.reader(cls)
        except TypeError:  # a field type the generator does not know: fastavro reads it
            self.fast = None
        self.to_dict: Callable[[Event], dict[str, Any]] = mapping.to_dict(cls)
        self.write: Callable[[Event], bytes] | None
        """Writes the current version (``version`` byte included)."""
        try:
            self.write = fastencode.writer(cls, self.prefix)
        except TypeError:  # a field type the generator does not know: fastavro writes it
            self.write = None
        self.headers: tuple[tuple[str, bytes], ...] = (
            (HEADER_TYPE, self.type_bytes),
            (HEADER_SCHEMA, self.name.encode()),
        )


class Codec:
    """Encodes events to record values and decodes them back, for one set of schemas.

    Construction checks that every event class has exactly one family whose current version
    matches its fields (names, types, defaults) and that no family lacks a class.
    """

    def __init__(self, registry: SchemaRegistry) -> None:
        self.registry = registry
        missing = sorted(set(_BY_FAMILY) - set(registry.families))
        orphans = sorted(set(registry.families) - set(_BY_FAMILY))
        if missing or orphans:
            raise ConfigError(
                f"schemas in {str(registry.directory)!r} do not match the event classes: "
                f"classes without a family {missing}, families without a class {orphans}"
            )
        by_class: dict[type[Any], _Family] = {}
        by_family: dict[bytes, _Family] = {}
        for family, cls in _BY_FAMILY.items():
            schemas = registry.families[family]
            current = schemas.sources[schemas.current_version]
            if mapping.strip_docs(current) != mapping.strip_docs(mapping.avro_schema(cls)):
                raise ConfigError(
                    f"{family} v{schemas.current_version}.avsc does not match the fields of "
                    f"{cls.__module__}.{family}; add a new version instead of editing a "
                    "released one"
                )
            fam = _Family(cls, schemas)
            by_class[cls] = fam
            by_family[family.encode()] = fam
        self._by_class = by_class
        self._by_family = by_family

    def current_version(self, family: str) -> int:
        """The schema version ``encode`` writes for ``family``."""
        return self._family(family.encode()).version

    def encode(self, event: Event) -> EncodedEvent:
        """Encode ``event`` with the current schema of its family."""
        fam = self._by_class.get(type(event))
        if fam is None:
            raise UnknownSchema(f"{type(event).__qualname__} is not an event class")
        write = fam.write
        if write is not None:
            # The common case: a writer generated for exactly this layout (``fastencode``).
            try:
                return EncodedEvent(fam.type, fam.name, write(event), fam.headers)
            except Exception as exc:
                raise CodecError(f"cannot encode {fam.name}: {exc}") from exc
        out = io.BytesIO()
        out.write(fam.prefix)
        try:
            schemaless_writer(out, fam.current, fam.to_dict(event), disable_tuple_notation=True)
        except Exception as exc:
            raise CodecError(f"cannot encode {fam.name}: {exc}") from exc
        return EncodedEvent(fam.type, fam.name, out.getvalue(), fam.headers)

    def decode(self, headers_or_family: Headers | str, value: bytes) -> Event:
        """Decode a record value into its event.

        ``headers_or_family`` is the record's headers (``sk.schema`` names the family; a
        present ``sk.type`` must agree with it) or the family name itself. Tombstones (``None``
        values) are not events: check for them first.
        """
        if isinstance(headers_or_family, str):
            fam = self._family(headers_or_family.encode())
        else:
            fam = self._family_from_headers(headers_or_family)
        if not value:
            raise UndecodableRecord(f"{fam.name}: empty record value (a tombstone?)")
        version = value[0]
        if version == fam.version:
            fast = fam.fast
            if fast is not None:
                # The common case: a reader generated for exactly this layout (``fastdecode``).
                try:
                    return fast(value if type(value) is bytes else bytes(value))
                except Exception as exc:
                    raise UndecodableRecord(f"{fam.name} v{version}: {exc!r}") from exc
            writer, reader = fam.current, None
        else:
            found = fam.writers.get(version)
            if found is None:
                raise UnknownSchemaVersion(fam.name, version)
            writer, reader = found, fam.current
        body = io.BytesIO(value)
        body.seek(1)
        try:
            record = schemaless_reader(body, writer, reader)
            event = fam.from_dict(record)
        except Exception as exc:
            raise UndecodableRecord(f"{fam.name} v{version}: {exc!r}") from exc
        if body.tell() != len(value):
            raise UndecodableRecord(
                f"{fam.name} v{version}: {len(value) - body.tell()} trailing bytes after the record"
            )
        return event

    def _family(self, family: bytes) -> _Family:
        fam = self._by_family.get(family)
        if fam is None:
            raise UnknownSchema(f"unknown event family {family.decode(errors='replace')!r}")
        return fam

    def _family_from_headers(self, headers: Headers) -> _Family:
        family: bytes | None = None
        event_type: bytes | None = None
        for key, raw in headers:
            if key == HEADER_SCHEMA:
                family = raw
            elif key == HEADER_TYPE:
                event_type = raw
        if family is None:
            raise UnknownSchema(f"record has no {HEADER_SCHEMA} header")
        fam = self._family(family)
        if event_type is not None and event_type != fam.type_bytes:
            raise UndecodableRecord(
                f"{HEADER_TYPE} {event_type.decode(errors='replace')!r} does not match "
                f"{HEADER_SCHEMA} {fam.name!r} (expected {fam.type!r})"
            )
        return fam


def decode_type(headers: Headers) -> str:
    """The ``sk.type`` of a record, without decoding its value (``UnknownSchema`` if absent)."""
    for key, raw in headers:
        if key == HEADER_TYPE:
            return raw.decode(errors="replace")
    raise UnknownSchema(f"record has no {HEADER_TYPE} header")


# --------------------------------------------------------------------------- default instance

_default: Codec | None = None


def default_codec() -> Codec:
    """The process-wide codec over ``default_schemas_dir()``, built on first use."""
    global _default
    if _default is None:
        _default = Codec(SchemaRegistry(default_schemas_dir()))
    return _default


def encode(event: Event) -> EncodedEvent:
    """``default_codec().encode(event)``."""
    return default_codec().encode(event)


def decode(headers_or_family: Headers | str, value: bytes) -> Event:
    """``default_codec().decode(headers_or_family, value)``."""
    return default_codec().decode(headers_or_family, value)
