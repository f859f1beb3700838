"""Request bodies of the HTTP API: the JSON object every POST carries, and its 400 error."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sockudo import inbound
from sockudo.errors import ApiError


def invalid_input(message: str) -> ApiError:
    """400 ``invalid_input`` (spec 01 §4.4)."""
    return ApiError(400, "invalid_input", message)


def json_object(body: bytes, *, empty_is_object: bool = False) -> dict[str, Any]:
    """The body as a JSON object; ``empty_is_object``: an empty body reads as ``{}``."""
    if empty_is_object and not body:
        return {}
    try:
        doc = inbound.loads(body)
    except inbound.JsonInputError as exc:
        raise invalid_input(f"Request body must be valid JSON: {exc}") from exc
    except (ValueError, RecursionError) as exc:
        raise invalid_input("Request body must be valid JSON") from exc
    if not isinstance(doc, dict):
        raise invalid_input("Request body must be a JSON object")
    return doc


def utf8_header(headers: Mapping[str, str], name: str) -> str | None:
    """A header's value read as UTF-8: Starlette decodes header bytes as Latin-1, so a key
    sent as UTF-8 would otherwise count each of its non-ASCII bytes as a character."""
    value = headers.get(name)
    if value is None or value.isascii():
        return value
    try:
        return value.encode("latin-1").decode("utf-8")
    except UnicodeError:
        raise invalid_input(f"{name} must be UTF-8") from None
