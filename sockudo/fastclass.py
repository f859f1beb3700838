"""Positional constructors for frozen slotted dataclasses built once per record."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, TypeVar

_T = TypeVar("_T")


def fast_constructor(cls: type[_T]) -> Callable[..., _T]:
    """A positional constructor of a frozen slotted dataclass that fills its slots directly.

    A frozen dataclass's ``__init__`` pays ``object.__setattr__`` per field; the fold builds an
    outcome (and a delivery) per record, so it uses this instead. The object is the same
    (equality, hash, repr); every field must be passed, defaults included.
    """
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    ns: dict[str, Any] = {"_new": object.__new__, "_cls": cls}
    lines = ["    o = _new(_cls)"]
    for i, name in enumerate(names):
        ns[f"_s{i}"] = cls.__dict__[name].__set__
        lines.append(f"    _s{i}(o, {name})")
    src = f"def make({', '.join(names)}):\n" + "\n".join(lines) + "\n    return o\n"
    exec(compile(src, f"<fast_constructor {cls.__name__}>", "exec"), ns)
    make: Callable[..., _T] = ns["make"]
    return make
