"""Generated pure-Python writers for the current schema version of each event family.

``fastavro.schemaless_writer`` needs the event as a dict (``mapping.to_dict``) and walks the
parsed schema per record: about 25 µs per publish, on the event loop of the node that accepts
it. The current layout of a family is fixed by its dataclass (see ``fastdecode``, the reading
half), so a writer specialised to it is generated once: straight-line Python appending each
field's Avro binary encoding, in schema order, to one buffer.

It writes exactly what fastavro writes for the same event (maps and arrays as one block then
the end marker, ``["null", T]`` unions as index 0 or 1, longs as zigzag varints) and raises on
what fastavro refuses (a value of the wrong type, a long outside 64 bits, a string that is not
encodable as UTF-8). ``tests/unit/test_fast_encode.py`` compares both writers on random events.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

from sockudo.events.codegen import Source
from sockudo.events.mapping import _fields, _Kind

__all__ = ["writer"]

_MIN_LONG, _MAX_LONG = -(1 << 63), (1 << 63) - 1
_ONE_BYTE = tuple(bytes([x]) for x in range(128))
_SMALL = tuple(bytes([2 * n]) for n in range(64))
"""The varint of a non-negative long ``n < 64`` (lengths and counts)."""


def _long(n: int) -> bytes:
    """The zigzag varint of ``n``."""
    if not _MIN_LONG <= n <= _MAX_LONG:
        raise OverflowError(f"{n} does not fit an Avro long")
    z = (n << 1) ^ (n >> 63)
    if z < 0x80:
        return _ONE_BYTE[z]
    out = bytearray()
    while z > 0x7F:
        out.append((z & 0x7F) | 0x80)
        z >>= 7
    out.append(z)
    return bytes(out)


def _bad(value: object, cls: type) -> TypeError:
    return TypeError(f"expected {cls.__name__}, got {type(value).__name__}")


class _Gen(Source):
    """Source of one writer function and the namespace it runs in."""

    def __init__(self) -> None:
        super().__init__(
            {
                "__builtins__": {"len": len, "bytes": bytes, "bytearray": bytearray},
                "_long": _long,
                "_small": _SMALL,
                "_double": struct.Struct("<d").pack,
                "_bad": _bad,
            }
        )

    def length(self, src: str, ind: int) -> None:
        self.emit(ind, f"out += _small[{src}] if {src} < 64 else _long({src})")

    def blob(self, src: str, ind: int, *, text: bool) -> None:
        raw = self.tmp("_b")
        # ``bytes(...)`` refuses a str (and everything else that is not bytes-like) as fastavro
        # does; ``.encode()`` exists only on str.
        self.emit(ind, f"{raw} = {src}.encode()" if text else f"{raw} = bytes({src})")
        size = self.tmp("_n")
        self.emit(ind, f"{size} = len({raw})")
        self.length(size, ind)
        self.emit(ind, f"out += {raw}")

    def value(self, kind: _Kind, src: str, ind: int) -> None:
        if kind.tag == "prim":
            if kind.avro == "long":
                self.emit(ind, f"out += _long({src})")
            elif kind.avro == "boolean":
                self.emit(ind, f"out += b'\\x01' if {src} else b'\\x00'")
            elif kind.avro == "string":
                self.blob(src, ind, text=True)
            elif kind.avro == "bytes":
                self.blob(src, ind, text=False)
            elif kind.avro == "double":
                self.emit(ind, f"out += _double({src})")
            else:
                raise TypeError(f"no writer for Avro {kind.avro!r}")
        elif kind.tag == "opt":
            assert kind.inner is not None
            var = self.tmp("_o")
            self.emit(ind, f"{var} = {src}")
            self.emit(ind, f"if {var} is None:")
            self.emit(ind + 1, "out += b'\\x00'")
            self.emit(ind, "else:")
            self.emit(ind + 1, "out += b'\\x02'")
            self.value(kind.inner, var, ind + 1)
        elif kind.tag in ("map", "array"):
            assert kind.inner is not None
            var, size, item = self.tmp("_c"), self.tmp("_n"), self.tmp("_i")
            self.emit(ind, f"{var} = {src}")
            self.emit(ind, f"{size} = len({var})")
            self.emit(ind, f"if {size}:")
            self.length(size, ind + 1)
            if kind.tag == "map":
                key = self.tmp("_k")
                self.emit(ind + 1, f"for {key}, {item} in {var}.items():")
                self.blob(key, ind + 2, text=True)
            else:
                self.emit(ind + 1, f"for {item} in {var}:")
            self.value(kind.inner, item, ind + 2)
            self.emit(ind, "out += b'\\x00'")
        else:
            assert kind.cls is not None
            var = self.tmp("_r")
            self.emit(ind, f"{var} = {src}")
            self.record(kind.cls, var, ind)

    def record(self, cls: type, src: str, ind: int) -> None:
        # A nested record of another class is refused, as fastavro refuses its dict.
        name = self.tmp("_C")
        self.ns[name] = cls
        self.emit(ind, f"if {src}.__class__ is not {name}:")
        self.emit(ind + 1, f"raise _bad({src}, {name})")
        for f, kind in _fields(cls):
            self.value(kind, f"{src}.{f.name}", ind)


def writer(cls: type, prefix: bytes) -> Callable[[Any], bytes]:
    """``write(event)``: ``prefix`` (the schema-version byte) then the Avro binary encoding of
    ``event``, a ``cls`` instance, with the schema derived from ``cls``. Raises (``TypeError``,
    ``AttributeError``, ``OverflowError``, ``UnicodeEncodeError``, ``struct.error``) on an
    event fastavro could not write."""
    gen = _Gen()
    gen.ns["_prefix"] = prefix
    gen.record(cls, "o", 1)
    name = f"_write_{cls.__name__}"
    head = [f"def {name}(o):", "    out = bytearray(_prefix)"]
    fn: Callable[[Any], bytes] = gen.compile(
        name, head, ["    return bytes(out)"], "sockudo.events.fastencode"
    )
    return fn
