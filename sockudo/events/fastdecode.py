"""Generated pure-Python readers for the current schema version of each event family.

``fastavro.schemaless_reader`` walks the parsed schema for every record, dispatching on type
names and building a dict that ``mapping.from_dict`` then turns into the dataclass: about 10 µs
per publish, the largest single cost of the fold. The current version of a family is fully
determined by its dataclass (the codec checks ``schemas/<family>/v<N>.avsc`` against
``mapping.avro_schema``), so a reader specialised to that one layout can be generated once:
straight-line Python that reads each field in schema order into a local, with a one-byte fast
path for varints, and builds the (nested) dataclasses directly. Older writer versions still go
through fastavro with schema resolution.

The generated reader accepts the Avro binary encoding of the schema as fastavro reads it
(non-canonical varints up to 10 bytes, longs wrapped to 64 bits, union indexes -2/-1 taken as
Python list indexes) and raises on anything else: truncation, negative or overlong lengths, bad
union indexes, invalid UTF-8, trailing bytes, and varints longer than 10 bytes (which fastavro
reads with C overflow; no writer produces them). The codec turns every such exception into
``UndecodableRecord``. ``tests/unit/test_fast_decode.py`` checks both readers agree on random
events and on mangled bytes.
"""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Callable
from typing import Any

from sockudo.events.codegen import Source
from sockudo.events.mapping import _fields, _Kind

__all__ = ["reader"]

_MEMO_LIMIT = 1024
_MASK64 = (1 << 64) - 1
_ZIGZAG = tuple((x >> 1) ^ -(x & 1) for x in range(128))
"""The long a one-byte varint ``x < 0x80`` encodes."""


def _varint(b: bytes, p: int, x: int) -> tuple[int, int]:
    """The zigzag long whose first byte ``x`` (continuation bit set) preceded ``b[p]``."""
    n = x & 0x7F
    shift = 7
    while True:
        x = b[p]
        p += 1
        n |= (x & 0x7F) << shift
        if x < 0x80:
            break
        shift += 7
        if shift > 63:
            raise ValueError("varint longer than 10 bytes")
    n &= _MASK64
    return (n >> 1) ^ -(n & 1), p


def _union_index(b: bytes, p: int, x: int) -> tuple[int, int]:
    """A ``["null", T]`` branch index whose first byte was not the canonical 0x00 / 0x02:
    returns 0 (null) or 2 (the value) and the position after it."""
    if x < 0x80:
        idx = (x >> 1) ^ -(x & 1)
    else:
        idx, p = _varint(b, p, x)
    # fastavro indexes the branch list with the raw long, so -2 / -1 pick the branches too;
    # read what it reads (a writer never produces them).
    if idx == 0 or idx == -2:
        return 0, p
    if idx == 1 or idx == -1:
        return 2, p
    raise ValueError(f"union index {idx} out of range")


def _bad_length(n: int, p: int, size: int) -> ValueError:
    if n < 0:
        return ValueError(f"negative length {n}")
    return ValueError(f"length {n} at {p} runs past the end ({size} bytes)")


class _Gen(Source):
    """Source of one reader function and the namespace it runs in."""

    def __init__(self) -> None:
        super().__init__(
            {
                "__builtins__": {
                    "range": range,
                    "tuple": tuple,
                    "ValueError": ValueError,
                    "len": len,
                },
                "_new": object.__new__,
                "_varint": _varint,
                "_union_index": _union_index,
                "_bad_length": _bad_length,
                "_double": struct.Struct("<d").unpack_from,
                "_zigzag": _ZIGZAG,
            }
        )

    # --- values ------------------------------------------------------------------------------

    def long(self, dst: str, ind: int) -> None:
        # One-byte varints (|n| < 64: every length and index here) come from a table.
        self.emit(ind, "x = b[p]")
        self.emit(ind, "p += 1")
        self.emit(ind, "if x < 128:")
        self.emit(ind + 1, f"{dst} = _zigzag[x]")
        self.emit(ind, "else:")
        self.emit(ind + 1, f"{dst}, p = _varint(b, p, x)")

    def blob(self, dst: str, ind: int, *, text: bool) -> None:
        self.long("n", ind)
        self.emit(ind, "e = p + n")
        self.emit(ind, "if n < 0 or e > size:")
        self.emit(ind + 1, "raise _bad_length(n, p, size)")
        self.emit(ind, f"{dst} = b[p:e].decode()" if text else f"{dst} = b[p:e]")
        self.emit(ind, "p = e")

    def value(self, kind: _Kind, dst: str, ind: int) -> None:
        if kind.tag == "prim":
            if kind.avro == "long":
                self.long(dst, ind)
            elif kind.avro == "boolean":
                # Like fastavro: any non-zero byte is true.
                self.emit(ind, f"{dst} = b[p] != 0")
                self.emit(ind, "p += 1")
            elif kind.avro == "string":
                self.blob(dst, ind, text=True)
            elif kind.avro == "bytes":
                self.blob(dst, ind, text=False)
            elif kind.avro == "double":
                self.emit(ind, f"({dst},) = _double(b, p)")
                self.emit(ind, "p += 8")
            else:
                raise TypeError(f"no reader for Avro {kind.avro!r}")
        elif kind.tag == "opt":
            assert kind.inner is not None
            self.emit(ind, "x = b[p]")
            self.emit(ind, "p += 1")
            self.emit(ind, "if x != 0 and x != 2:")
            self.emit(ind + 1, "x, p = _union_index(b, p, x)")
            self.emit(ind, "if x == 0:")
            self.emit(ind + 1, f"{dst} = None")
            self.emit(ind, "else:")
            self.value(kind.inner, dst, ind + 1)
        elif kind.tag in ("map", "array"):
            assert kind.inner is not None
            count, item, key = self.tmp("_c"), self.tmp("_i"), self.tmp("_k")
            acc = dst if kind.tag == "map" else self.tmp("_l")
            self.emit(ind, f"{acc} = {{}}" if kind.tag == "map" else f"{acc} = []")
            self.emit(ind, "while True:")
            self.long(count, ind + 1)
            self.emit(ind + 1, f"if {count} == 0:")
            self.emit(ind + 2, "break")
            self.emit(ind + 1, f"if {count} < 0:")
            self.emit(ind + 2, f"{count} = -{count}")
            self.long("n", ind + 2)  # block size in bytes, not needed to read the items
            self.emit(ind + 1, f"for _ in range({count}):")
            if kind.tag == "map":
                self.blob(key, ind + 2, text=True)
                self.value(kind.inner, item, ind + 2)
                self.emit(ind + 2, f"{acc}[{key}] = {item}")
            else:
                self.value(kind.inner, item, ind + 2)
                self.emit(ind + 2, f"{acc}.append({item})")
            if kind.tag == "array":
                self.emit(ind, f"{dst} = tuple({acc})")
        else:
            assert kind.cls is not None
            self.record(kind.cls, dst, ind)

    def record(self, cls: type, dst: str, ind: int) -> None:
        fields = _fields(cls)
        values = [self.tmp("_f") for _ in fields]
        for (_, kind), var in zip(fields, values, strict=True):
            self.value(kind, var, ind)
        name = self.tmp("_C")
        self.ns[name] = cls
        if _memoizable(fields):
            # Small records of flags and numbers (``Flags``, ``Retention``) have few distinct
            # values: decoded instances are shared, as ``mapping.from_dict`` does.
            memo = self.tmp("_memo")
            self.ns[memo] = {}
            self.emit(ind, f"k = ({''.join(v + ', ' for v in values)})")
            self.emit(ind, f"{dst} = {memo}.get(k)")
            self.emit(ind, f"if {dst} is None:")
            self.emit(ind + 1, f"if len({memo}) >= {_MEMO_LIMIT}:")
            self.emit(ind + 2, f"{memo}.clear()")
            self.construct(cls, name, values, dst, ind + 1)
            self.emit(ind + 1, f"{memo}[k] = {dst}")
        else:
            self.construct(cls, name, values, dst, ind)

    def construct(self, cls: type, name: str, values: list[str], dst: str, ind: int) -> None:
        fields = dataclasses.fields(cls)
        fast = (
            "__slots__" in cls.__dict__
            and not hasattr(cls, "__post_init__")
            and all(f.init for f in fields)
        )
        if not fast:
            self.emit(ind, f"{dst} = {name}({', '.join(values)})")
            return
        # Frozen dataclasses pay ``object.__setattr__`` per field in ``__init__``; filling the
        # slots through their descriptors gives the same object faster (see ``mapping``).
        self.emit(ind, f"{dst} = _new({name})")
        for f, value in zip(fields, values, strict=True):
            setter = self.tmp("_set")
            self.ns[setter] = cls.__dict__[f.name].__set__
            self.emit(ind, f"{setter}({dst}, {value})")


def _memoizable(fields: list[tuple[dataclasses.Field[Any], _Kind]]) -> bool:
    for _, kind in fields:
        base = kind.inner if kind.tag == "opt" else kind
        if base is None or base.tag != "prim" or base.avro not in ("boolean", "long"):
            return False
    return True


def reader(cls: type) -> Callable[[bytes], Any]:
    """``read(value)``: the ``cls`` instance encoded in ``value[1:]`` (``value[0]`` is the
    schema-version byte, checked by the caller), written with the schema derived from ``cls``.
    Raises (``ValueError``, ``IndexError``, ``UnicodeDecodeError``, ``struct.error``) on bytes
    that are not exactly one such record."""
    gen = _Gen()
    gen.record(cls, "o", 1)
    name = f"_read_{cls.__name__}"
    head = [f"def {name}(b):", "    size = len(b)", "    p = 1"]
    tail = [
        "    if p != size:",
        "        raise ValueError(f'{size - p} trailing bytes after the record')",
        "    return o",
    ]
    fn: Callable[[bytes], Any] = gen.compile(name, head, tail, "sockudo.events.fastdecode")
    return fn
