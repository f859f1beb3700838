"""How an event dataclass maps to Avro, and the fast converters between the two.

The mapping is fixed and small:

=====================================  ============================================
dataclass annotation                   Avro type
=====================================  ============================================
``str`` / ``int`` / ``bool``           ``string`` / ``long`` / ``boolean``
``float`` / ``bytes``                  ``double`` / ``bytes``
``T | None`` (default ``None``)        ``["null", T]`` with default ``null``
``dict[str, T]``                       ``{"type": "map", "values": T}``
``tuple[T, ...]``                      ``{"type": "array", "items": T}``
a frozen dataclass                     a nested record (defined once per schema)
=====================================  ============================================

Field defaults become Avro defaults, so a schema derived here resolves older bytes into the
dataclass's defaults. ``avro_schema`` is what ``schemas/<family>/v<N>.avsc`` must contain for
the current version (``doc`` entries aside); the codec checks it at load time.

``from_dict`` / ``to_dict`` build one specialised function per class, once, by generating
plain Python source from the dataclass fields: no typing introspection per record, positional
constructor calls, and nested conversions only where a field needs one.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable
from typing import Any

__all__ = ["NAMESPACE", "avro_schema", "from_dict", "strip_docs", "to_dict"]

NAMESPACE = "sockudo.events"
"""Namespace of every event record and nested record."""

_PRIMITIVES: dict[type, str] = {
    str: "string",
    int: "long",
    bool: "boolean",
    float: "double",
    bytes: "bytes",
}


# --------------------------------------------------------------------------- type analysis


@dataclasses.dataclass(frozen=True, slots=True)
class _Kind:
    """A field type reduced to what the mapping needs."""

    tag: str
    """``prim``, ``opt``, ``map``, ``array`` or ``record``."""
    avro: str = ""
    """Avro primitive name (``prim``)."""
    inner: _Kind | None = None
    """Element / value / optional type (``opt``, ``map``, ``array``)."""
    cls: type | None = None
    """The nested dataclass (``record``)."""

    @property
    def plain(self) -> bool:
        """True when the value needs no conversion between dataclass and Avro dict."""
        if self.tag == "prim":
            return True
        if self.tag in ("opt", "map"):
            assert self.inner is not None
            return self.inner.plain
        return False


def _kind(tp: Any, where: str) -> _Kind:
    if tp in _PRIMITIVES:
        return _Kind("prim", avro=_PRIMITIVES[tp])
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (types.UnionType, typing.Union):
        rest = [a for a in args if a is not type(None)]
        if len(rest) != 1 or len(args) != 2:
            raise TypeError(f"{where}: only `T | None` unions are supported, got {tp!r}")
        return _Kind("opt", inner=_kind(rest[0], where))
    if origin is dict:
        if args[0] is not str:
            raise TypeError(f"{where}: map keys must be str, got {tp!r}")
        return _Kind("map", inner=_kind(args[1], where))
    if origin is tuple:
        if len(args) != 2 or args[1] is not Ellipsis:
            raise TypeError(f"{where}: only `tuple[T, ...]` is supported, got {tp!r}")
        return _Kind("array", inner=_kind(args[0], where))
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _Kind("record", cls=tp)
    raise TypeError(f"{where}: unsupported field type {tp!r}")


def _fields(cls: type) -> list[tuple[dataclasses.Field[Any], _Kind]]:
    hints = typing.get_type_hints(cls)
    return [(f, _kind(hints[f.name], f"{cls.__name__}.{f.name}")) for f in dataclasses.fields(cls)]


# --------------------------------------------------------------------------- schema derivation


def _json_value(value: Any, kind: _Kind) -> Any:
    """A Python default as the JSON value an Avro default must be."""
    if value is None:
        return None
    if kind.tag == "opt":
        assert kind.inner is not None
        return _json_value(value, kind.inner)
    if kind.tag == "record":
        return {f.name: _json_value(getattr(value, f.name), k) for f, k in _fields(type(value))}
    if kind.tag == "array":
        assert kind.inner is not None
        return [_json_value(v, kind.inner) for v in value]
    if kind.tag == "map":
        assert kind.inner is not None
        return {k: _json_value(v, kind.inner) for k, v in value.items()}
    return value


def _avro_type(kind: _Kind, seen: set[str]) -> Any:
    if kind.tag == "prim":
        return kind.avro
    assert kind.tag == "record" or kind.inner is not None
    if kind.tag == "opt":
        assert kind.inner is not None
        return ["null", _avro_type(kind.inner, seen)]
    if kind.tag == "map":
        assert kind.inner is not None
        return {"type": "map", "values": _avro_type(kind.inner, seen)}
    if kind.tag == "array":
        assert kind.inner is not None
        return {"type": "array", "items": _avro_type(kind.inner, seen)}
    assert kind.cls is not None
    return _record(kind.cls, seen)


def _doc(cls: type) -> str | None:
    doc = cls.__doc__ or ""
    first = doc.strip().split("\n\n")[0]
    return " ".join(first.split()) or None


def _record(cls: type, seen: set[str]) -> Any:
    name = cls.__name__
    if name in seen:
        return name
    seen.add(name)
    fields: list[dict[str, Any]] = []
    for f, kind in _fields(cls):
        entry: dict[str, Any] = {"name": f.name, "type": _avro_type(kind, seen)}
        if f.default is not dataclasses.MISSING:
            if kind.tag == "opt" and f.default is not None:
                raise TypeError(f"{name}.{f.name}: optional fields must default to None")
            entry["default"] = _json_value(f.default, kind)
        elif f.default_factory is not dataclasses.MISSING:
            entry["default"] = _json_value(f.default_factory(), kind)
        elif kind.tag == "opt":
            raise TypeError(f"{name}.{f.name}: optional fields need the default None")
        fields.append(entry)
    record: dict[str, Any] = {"type": "record", "name": name}
    doc = _doc(cls)
    if doc:
        record["doc"] = doc
    record["fields"] = fields
    return record


def avro_schema(cls: type) -> dict[str, Any]:
    """The Avro schema (as JSON data) of the current version of ``cls``'s family."""
    record: dict[str, Any] = _record(cls, set())
    return {"type": "record", "name": record["name"], "namespace": NAMESPACE} | {
        k: v for k, v in record.items() if k not in ("type", "name")
    }


def strip_docs(schema: Any) -> Any:
    """``schema`` without ``doc`` entries (they never affect the bytes)."""
    if isinstance(schema, dict):
        return {k: strip_docs(v) for k, v in schema.items() if k != "doc"}
    if isinstance(schema, list):
        return [strip_docs(v) for v in schema]
    return schema


# --------------------------------------------------------------------------- converters


def _decode_expr(kind: _Kind, src: str, ns: dict[str, Any], depth: int) -> str:
    """Python expression turning the Avro value at ``src`` into the dataclass value."""
    if kind.plain:
        return src
    inner = kind.inner
    if kind.tag == "opt":
        assert inner is not None
        return f"(None if {src} is None else {_decode_expr(inner, src, ns, depth)})"
    if kind.tag == "array":
        assert inner is not None
        if inner.plain:
            return f"tuple({src})"
        var = f"_i{depth}"
        return f"tuple([{_decode_expr(inner, var, ns, depth + 1)} for {var} in {src}])"
    if kind.tag == "map":
        assert inner is not None
        key, var = f"_k{depth}", f"_v{depth}"
        item = _decode_expr(inner, var, ns, depth + 1)
        return f"{{{key}: {item} for {key}, {var} in {src}.items()}}"
    assert kind.cls is not None
    return f"{_converter(kind.cls, ns, decode=True)}({src})"


def _encode_expr(kind: _Kind, src: str, ns: dict[str, Any], depth: int) -> str:
    """Python expression turning the dataclass value at ``src`` into an Avro value."""
    if kind.plain:
        return src
    inner = kind.inner
    if kind.tag == "opt":
        assert inner is not None
        return f"(None if {src} is None else {_encode_expr(inner, src, ns, depth)})"
    if kind.tag == "array":
        assert inner is not None
        if inner.plain:
            return f"list({src})"
        var = f"_i{depth}"
        return f"[{_encode_expr(inner, var, ns, depth + 1)} for {var} in {src}]"
    if kind.tag == "map":
        assert inner is not None
        key, var = f"_k{depth}", f"_v{depth}"
        item = _encode_expr(inner, var, ns, depth + 1)
        return f"{{{key}: {item} for {key}, {var} in {src}.items()}}"
    assert kind.cls is not None
    return f"{_converter(kind.cls, ns, decode=False)}({src})"


def _memoizable(fields: list[tuple[dataclasses.Field[Any], _Kind]]) -> bool:
    """True for small records of flags and numbers (``Flags``, ``Retention``): few distinct
    values, so decoded instances are shared instead of rebuilt."""
    for _, kind in fields:
        base = kind.inner if kind.tag == "opt" else kind
        if base is None or base.tag != "prim" or base.avro not in ("boolean", "long"):
            return False
    return True


def _construct(cls: type, values: list[str], ns: dict[str, Any]) -> list[str]:
    """Statements building ``o`` from positional value expressions.

    Frozen dataclass ``__init__`` pays ``object.__setattr__`` per field; for slotted classes
    without ``__post_init__`` the slots are filled directly through their member descriptors,
    which gives the same object (equality, hash, repr) about three times faster.
    """
    name = cls.__name__
    fields = dataclasses.fields(cls)
    fast = (
        "__slots__" in cls.__dict__
        and not hasattr(cls, "__post_init__")
        and all(f.init for f in fields)
    )
    if not fast:
        return [f"o = _C_{name}({', '.join(values)})"]
    lines = [f"o = _new(_C_{name})"]
    for i, (f, value) in enumerate(zip(fields, values, strict=True)):
        setter = f"_s_{name}_{i}"
        ns[setter] = cls.__dict__[f.name].__set__
        lines.append(f"{setter}(o, {value})")
    return lines


_MEMO_LIMIT = 1024


def _converter(cls: type, ns: dict[str, Any], *, decode: bool) -> str:
    """Name of the generated converter for ``cls`` in ``ns``, generating it (and its nested
    converters) on first use."""
    fn = f"_{'from' if decode else 'to'}_{cls.__name__}"
    if fn in ns:
        return fn
    ns[fn] = None  # reserve the name; records cannot nest recursively in our events
    name = cls.__name__
    ns[f"_C_{name}"] = cls
    fields = _fields(cls)
    if decode:
        values = [_decode_expr(k, f"d[{f.name!r}]", ns, 0) for f, k in fields]
        body = _construct(cls, values, ns)
        if _memoizable(fields):
            memo = f"_m_{name}"
            ns[memo] = {}
            key = "(" + "".join(f"{v}, " for v in values) + ")"
            build = _construct(cls, [f"k[{i}]" for i in range(len(values))], ns)
            body = [
                f"k = {key}",
                f"o = {memo}.get(k)",
                "if o is None:",
                f"    if len({memo}) >= {_MEMO_LIMIT}:",
                f"        {memo}.clear()",
                *("    " + line for line in build),
                f"    {memo}[k] = o",
            ]
        src = f"def {fn}(d):\n" + "".join(f"    {line}\n" for line in body) + "    return o\n"
    else:
        items = ", ".join(f"{f.name!r}: {_encode_expr(k, f'o.{f.name}', ns, 0)}" for f, k in fields)
        src = f"def {fn}(o):\n    return {{{items}}}\n"
    exec(compile(src, f"<sockudo.events.mapping {fn}>", "exec"), ns)
    return fn


def _namespace() -> dict[str, Any]:
    return {"__builtins__": {"tuple": tuple, "list": list, "len": len}, "_new": object.__new__}


def from_dict(cls: type) -> Callable[[dict[str, Any]], Any]:
    """A function building a ``cls`` instance from the dict fastavro reads for its schema."""
    ns = _namespace()
    return typing.cast(Callable[[dict[str, Any]], Any], ns[_converter(cls, ns, decode=True)])


def to_dict(cls: type) -> Callable[[Any], dict[str, Any]]:
    """A function turning a ``cls`` instance into the dict fastavro writes for its schema."""
    ns = _namespace()
    return typing.cast(Callable[[Any], dict[str, Any]], ns[_converter(cls, ns, decode=False)])
