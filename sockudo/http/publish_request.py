"""Parse and validate ``POST /apps/{appId}/events`` and ``/batch_events`` bodies into commands.

Pure: bytes, the authenticated app and the settings in, a frozen command out, or an
:class:`~sockudo.errors.ApiError` with the status and code of spec 01 §5.5. Every field of every
event (and every item of a batch) is validated before anything is returned, so a rejected
request publishes nothing and claims no idempotency key (spec 01 §5.1, §5.3).

The body size limit (``http_api.request_limit_in_mb``) and the signature are checked by the edge
before this module sees the body.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sockudo.channels import classify_channel, validate_channel_name
from sockudo.config import AppConfig, Settings
from sockudo.errors import ApiError
from sockudo.http.body import invalid_input as _invalid
from sockudo.http.body import json_object

__all__ = [
    "INFO_ATTRIBUTES",
    "RESERVED_EVENT_PREFIXES",
    "BatchCommand",
    "PublishCommand",
    "fingerprint",
    "parse_batch_events_body",
    "parse_events_body",
]

RESERVED_EVENT_PREFIXES = ("pusher:", "pusher_internal:", "sockudo:", "sockudo_internal:")
INFO_ATTRIBUTES = frozenset({"subscription_count", "user_count"})
"""``info`` tokens the publish response understands; others are ignored."""

_SOCKET_ID_RE = re.compile(r"[0-9]+\.[0-9]+")
_RESERVED_HEADER_PREFIX = "sockudo_"


@dataclass(frozen=True, slots=True)
class PublishCommand:
    """One validated event to publish to one or more channels."""

    name: str
    data: str
    """What subscribers receive: the string as published, or compact JSON of another value."""
    data_is_json: bool
    """True when the publisher sent a non-string JSON value (or no ``data``: ``"null"``)."""
    channels: tuple[str, ...]
    """Validated names, duplicates collapsed, first-seen order."""
    socket_id: str | None
    """The publisher's socket, excluded from fanout."""
    info: frozenset[str]
    """Recognised ``info`` attributes (subset of :data:`INFO_ATTRIBUTES`)."""
    idempotency_key: str | None
    """Request-level key (``e`` namespace); ``None`` when absent or idempotency is disabled."""
    extras_json: str | None
    """Sanitised V2 ``extras`` as compact JSON (publisher ``sockudo_*`` headers stripped)."""
    tags: dict[str, str] | None
    """Flat string map; ``None`` when absent or empty. Treat as read-only."""
    message_id: str | None
    """Publisher-supplied message id, kept verbatim."""
    info_requested: bool = False
    """The request carried ``info`` (even with no recognised token): the response lists channels."""

    @property
    def wants_channel_response(self) -> bool:
        """Answer with ``{"channels": {...}}`` rather than ``{}`` (spec 01 §5.1)."""
        return self.info_requested or self.message_id is not None


@dataclass(frozen=True, slots=True)
class BatchCommand:
    """A validated ``/batch_events`` request; items are published in order."""

    items: tuple[PublishCommand, ...]
    batch_key: str | None
    """``X-Idempotency-Key`` of the whole batch (``b`` namespace), or ``None``."""


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


def _limit(message: str) -> ApiError:
    return ApiError(400, "limit_exceeded", message)


def _utf8_len(value: str, what: str) -> int:
    try:
        return len(value.encode("utf-8"))
    except UnicodeEncodeError as exc:  # a lone surrogate from a \ud8xx escape
        raise _invalid(f"{what} is not valid Unicode") from exc


def _compact(value: object) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


# --------------------------------------------------------------------------------------------
# Fields
# --------------------------------------------------------------------------------------------


def _event_name(obj: Mapping[str, Any], app: AppConfig) -> str:
    name = obj.get("name")
    if name is None:
        raise _invalid("Event name is required")
    if not isinstance(name, str) or not name:
        raise _invalid("Event name must be a non-empty string")
    for prefix in RESERVED_EVENT_PREFIXES:
        if name.startswith(prefix):
            raise _invalid(f"Event name must not start with '{prefix}'")
    _utf8_len(name, "Event name")
    maximum = app.limits.max_event_name_length
    if len(name) > maximum:
        raise _limit(f"Event name is too long: {len(name)} characters, the maximum is {maximum}")
    return name


def _channels(obj: Mapping[str, Any], app: AppConfig, settings: Settings) -> tuple[str, ...]:
    raw = obj.get("channels")
    names: list[object]
    if raw is not None:  # `channels` wins over `channel`
        if not isinstance(raw, list):
            raise _invalid("channels must be an array of channel names")
        if not raw:
            raise ApiError(400, "missing_channel_info", "channels must not be empty")
        names = raw
    elif obj.get("channel") is not None:
        names = [obj["channel"]]
    else:
        raise ApiError(400, "missing_channel_info", "Missing channel or channels")

    unique: dict[str, None] = {}
    for name in names:
        if not isinstance(name, str):
            raise _invalid("Channel names must be strings")
        unique.setdefault(name, None)
    channels = tuple(unique)
    maximum = app.limits.max_event_channels_at_once
    if len(channels) > maximum:
        raise _limit(f"Too many channels: {len(channels)}, the maximum is {maximum}")
    for name in channels:
        validate_channel_name(name, app, settings)  # InvalidChannelName is a 400 invalid_input
    if len(channels) > 1 and any(classify_channel(c).is_encrypted for c in channels):
        raise _invalid("cannot trigger to multiple channels when using encrypted channels")
    return channels


def _data(obj: Mapping[str, Any], app: AppConfig) -> tuple[str, bool]:
    raw = obj.get("data")
    if isinstance(raw, str):
        data, is_json = raw, False
    else:
        # Missing and null both become "null"; anything else is re-serialised compactly.
        data, is_json = _compact(raw), True
    size = _utf8_len(data, "data")
    maximum = app.limits.max_event_payload_in_kb * 1024
    if size > maximum:
        raise ApiError(
            413,
            "payload_too_large",
            f"Event payload is too large: {size} bytes, the maximum is {maximum} bytes",
        )
    return data, is_json


def _socket_id(obj: Mapping[str, Any]) -> str | None:
    raw = obj.get("socket_id")
    if raw is None:
        return None
    if not isinstance(raw, str) or not _SOCKET_ID_RE.fullmatch(raw):
        raise _invalid("Invalid socket_id: expected digits.digits (e.g. 1234.5678)")
    return raw


def _info(obj: Mapping[str, Any]) -> tuple[frozenset[str], bool]:
    raw = obj.get("info")
    if raw is None:
        return frozenset(), False
    if not isinstance(raw, str):
        raise _invalid("info must be a comma-separated string")
    tokens = {token.strip() for token in raw.split(",")}
    return frozenset(tokens & INFO_ATTRIBUTES), True


def _key(raw: object, what: str, max_bytes: int) -> str:
    """An idempotency-style key: non-empty string of at most ``max_bytes`` UTF-8 bytes."""
    if not isinstance(raw, str):
        raise _invalid(f"{what} must be a string")
    if not raw:
        raise _invalid(f"{what} must not be empty")
    if _utf8_len(raw, what) > max_bytes:
        raise _invalid(f"{what} exceeds maximum length of {max_bytes} characters")
    return raw


def _idempotency_enabled(app: AppConfig, settings: Settings) -> bool:
    if app.idempotency_enabled is not None:
        return app.idempotency_enabled
    return settings.idempotency_enabled


def _extras(obj: Mapping[str, Any], settings: Settings) -> str | None:
    """Sanitise V2 ``extras`` (spec 02 §4.3); ``None`` when nothing is left."""
    raw = obj.get("extras")
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise _invalid("extras must be an object")
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if value is None:
            continue
        if key == "headers":
            headers = _headers(value)
            if headers:
                out["headers"] = headers
        elif key in ("ephemeral", "echo"):
            if not isinstance(value, bool):
                raise _invalid(f"extras.{key} must be a boolean")
            out[key] = value
        elif key in ("idempotency_key", "idempotencyKey"):
            # `idempotencyKey` is an accepted inbound alias; the snake_case form wins.
            if key == "idempotencyKey" and raw.get("idempotency_key") is not None:
                continue
            out["idempotency_key"] = _key(
                value, "extras.idempotency_key", settings.idempotency_max_key_length
            )
        elif key in ("ai", "push"):
            # Forwarded opaquely (ai) or consumed by the push subsystem, which validates it;
            # egress drops `push` before subscribers see it.
            if not isinstance(value, dict):
                raise _invalid(f"extras.{key} must be an object")
            out[key] = value
        # Unknown keys are dropped: extras reach every V2 subscriber, so only known ones pass.
    if not out:
        return None
    text = _compact(out)
    _utf8_len(text, "extras")
    return text


def _headers(value: object) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _invalid("extras.headers must be an object")
    headers: dict[str, Any] = {}
    for name, item in value.items():
        # `sockudo_*` headers carry server metadata (mutation serials); a publisher must not be
        # able to spoof them, in any letter case.
        if name.lower().startswith(_RESERVED_HEADER_PREFIX):
            continue
        if not isinstance(item, str | int | float | bool):
            raise _invalid("extras.headers values must be strings, numbers or booleans")
        headers[name] = item
    return headers


def _tags(obj: Mapping[str, Any]) -> dict[str, str] | None:
    raw = obj.get("tags")
    if raw is None:
        return None
    if not isinstance(raw, dict) or not all(isinstance(v, str) for v in raw.values()):
        raise _invalid("tags must be an object with string values")
    for name, value in raw.items():
        _utf8_len(name, "tags")
        _utf8_len(value, "tags")
    return dict(raw) if raw else None


def _message_id(obj: Mapping[str, Any], settings: Settings) -> str | None:
    raw = obj.get("message_id")
    if raw is None:
        return None
    # It is also the message-level idempotency key (spec 03 §8.2), hence the same bounds.
    return _key(raw, "message_id", settings.idempotency_max_key_length)


def _event(
    obj: Mapping[str, Any],
    app: AppConfig,
    settings: Settings,
    *,
    header_key: str | None,
) -> PublishCommand:
    name = _event_name(obj, app)
    channels = _channels(obj, app, settings)
    data, data_is_json = _data(obj, app)
    socket_id = _socket_id(obj)
    info, info_requested = _info(obj)
    extras_json = _extras(obj, settings)
    tags = _tags(obj)
    message_id = _message_id(obj, settings)
    idempotency_key: str | None = None
    if _idempotency_enabled(app, settings):
        raw_key = obj.get("idempotency_key")
        if raw_key is None:
            raw_key = header_key  # the body key wins over the header (spec 01 §5.3)
        if raw_key is not None:
            idempotency_key = _key(raw_key, "Idempotency key", settings.idempotency_max_key_length)
    return PublishCommand(
        name=name,
        data=data,
        data_is_json=data_is_json,
        channels=channels,
        socket_id=socket_id,
        info=info,
        idempotency_key=idempotency_key,
        extras_json=extras_json,
        tags=tags,
        message_id=message_id,
        info_requested=info_requested,
    )


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def parse_events_body(
    body: bytes,
    app: AppConfig,
    settings: Settings,
    *,
    idempotency_header: str | None = None,
) -> PublishCommand:
    """Validate a ``/events`` body; ``idempotency_header`` is ``X-Idempotency-Key`` if sent."""
    return _event(json_object(body), app, settings, header_key=idempotency_header)


def parse_batch_events_body(
    body: bytes,
    app: AppConfig,
    settings: Settings,
    *,
    idempotency_header: str | None = None,
) -> BatchCommand:
    """Validate a ``/batch_events`` body; ``idempotency_header`` keys the whole batch.

    An invalid item raises the item's own error (status and code) with its zero-based index
    in the message.
    """
    doc = json_object(body)
    raw = doc.get("batch")
    if not isinstance(raw, list) or not raw:
        raise _invalid("batch is required and must be a non-empty array of events")
    maximum = app.limits.max_event_batch_size
    if len(raw) > maximum:
        raise _limit(f"Too many events in batch: {len(raw)}, the maximum is {maximum}")

    items: list[PublishCommand] = []
    for index, item in enumerate(raw):
        try:
            if not isinstance(item, dict):
                raise _invalid("must be a JSON object")
            # The header is the batch key, never an item key.
            items.append(_event(item, app, settings, header_key=None))
        except ApiError as exc:
            raise ApiError(
                exc.status, exc.code, f"Batch item {index}: {exc.message}", exc.headers, exc.extra
            ) from exc

    batch_key: str | None = None
    if idempotency_header is not None and _idempotency_enabled(app, settings):
        batch_key = _key(idempotency_header, "Idempotency key", settings.idempotency_max_key_length)
    return BatchCommand(items=tuple(items), batch_key=batch_key)


def fingerprint(command: PublishCommand | BatchCommand) -> str:
    """SHA-256 hex identifying a request's content for idempotency (spec 03 §8.1).

    Covers ``name``, ``data`` (with its string/JSON kind), the channel set, ``extras`` and
    ``tags``; ``socket_id``, ``info`` and the keys themselves are left out, so a retry that only
    changes those is still "the same request". Channel order and object key order in
    ``extras``/``tags`` do not matter. A batch's fingerprint covers its items in order.
    """
    if isinstance(command, BatchCommand):
        parts = [fingerprint(item) for item in command.items]
        return hashlib.sha256(_compact(["batch", parts]).encode("utf-8")).hexdigest()
    canonical = json.dumps(
        {
            "name": command.name,
            "data": command.data,
            "data_is_json": command.data_is_json,
            "channels": sorted(command.channels),
            "extras": json.loads(command.extras_json) if command.extras_json else None,
            "tags": dict(command.tags) if command.tags else None,
        },
        separators=(",", ":"),
        ensure_ascii=False,
        sort_keys=True,
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()
