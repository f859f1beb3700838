"""Request bodies of the HTTP API: the JSON object every POST carries, and its 400 error."""

from __future__ import annotations

import json
from typing import Any

from sockudo.errors import ApiError


def invalid_input(message: str) -> ApiError:
    """400 ``invalid_input`` (spec 01 §4.4)."""
    return ApiError(400, "invalid_input", message)


def _reject_constant(name: str) -> Any:
    # Python's json accepts NaN/Infinity; they are not JSON and could not be re-serialised.
    raise ValueError(f"invalid JSON constant {name}")


def json_object(body: bytes, *, empty_is_object: bool = False) -> dict[str, Any]:
    """The body as a JSON object; ``empty_is_object``: an empty body reads as ``{}``."""
    if empty_is_object and not body:
        return {}
    try:
        # Strict UTF-8 first: json.loads(bytes) would let encoded surrogates through.
        doc = json.loads(body.decode("utf-8"), parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise invalid_input("Request body must be valid JSON") from exc
    if not isinstance(doc, dict):
        raise invalid_input("Request body must be a JSON object")
    return doc
