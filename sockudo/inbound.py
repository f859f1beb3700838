"""Parsing text that clients send: JSON and decimal integers, stricter than Python's own.

``json.loads`` takes ``NaN``/``Infinity`` (not JSON, and not re-serialisable) and ``\\ud800``
escapes of lone surrogates, which make strings no UTF-8 encoder accepts: a later ``encode()``
(a frame, a key, an error echoing a channel name) would then fail far from the input. ``int``
takes ``" 5"``, ``"1_0"`` and non-ASCII digits. Both are refused here, as malformed input.
"""

from __future__ import annotations

import json
import re
from typing import Any, Final

_DECIMAL: Final = re.compile(r"-?[0-9]{1,4000}")
"""Bounded: int() of a digit string takes time quadratic in its length (and raises past 4,300
digits); callers range-check what it gives."""

_SURROGATE_ESCAPE: Final = re.compile(r"\\u[dD][89a-fA-F]")


class JsonInputError(ValueError):
    """JSON that parsed but holds what nothing after the parse can use."""


def _reject_constant(name: str) -> Any:
    raise JsonInputError(f"invalid JSON constant {name}")


_decode: Final = json.JSONDecoder(parse_constant=_reject_constant).decode


def loads(text: str | bytes) -> Any:
    """``json.loads`` of client text; raises ``ValueError`` (``UnicodeDecodeError`` for bytes
    that are not UTF-8, :class:`JsonInputError` for NaN/Infinity or a lone surrogate)."""
    if not isinstance(text, str):
        # Strictly: json.loads(bytes) would let UTF-8-encoded surrogates through.
        text = bytes(text).decode("utf-8")
    value = _decode(text)
    # A surrogate escape is rare (astral characters are usually sent as UTF-8); only then is
    # the value walked, and escaped pairs have already been joined into one character.
    if "\\u" in text and _SURROGATE_ESCAPE.search(text) is not None and _lone_surrogate(value):
        raise JsonInputError("a string holds a lone surrogate escape, which is not Unicode")
    return value


def _lone_surrogate(value: Any) -> bool:
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            if not v.isascii():
                try:
                    v.encode("utf-8")
                except UnicodeEncodeError:
                    return True
        elif isinstance(v, dict):
            stack.extend(v)
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
    return False


def decimal(text: str) -> int | None:
    """The integer an optionally signed run of ASCII digits spells, else ``None``."""
    return int(text) if _DECIMAL.fullmatch(text) else None
