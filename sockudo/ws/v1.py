"""Protocol V1 (Pusher protocol 7) frames: parse inbound JSON into typed commands, build replies.

Pure: no sockets, no clock. Inbound frames become one of the command classes below or raise
:class:`FrameError` (an in-band ``pusher:error``, spec 01 §3.15). Outbound builders return the
exact text the wire carries (compact JSON, ``data`` encoded per the table of spec 01 §2.5).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from sockudo import inbound

_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)

# Inbound, both prefix families are accepted and routed by the name after the prefix (§2.5).
_ALIASES = {"sockudo:": "pusher:", "sockudo_internal:": "pusher_internal:"}
_SYSTEM_PREFIXES = ("pusher:", "pusher_internal:")

MALFORMED = 4000
UNAUTHORIZED = 4009
OVER_CAPACITY = 4100
CHANNEL_ERROR = 4300
CLIENT_EVENT_ERROR = 4301
WATCHLIST_LIMIT = 4302


class FrameError(Exception):
    """An inbound frame the server answers with ``pusher:error`` and keeps the socket open."""

    def __init__(self, code: int, message: str, channel: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.channel = channel


# --- typed inbound commands ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Ping:
    pass


@dataclass(frozen=True, slots=True)
class Pong:
    pass


@dataclass(frozen=True, slots=True)
class Subscribe:
    channel: str
    auth: str | None
    channel_data: str | None
    options: dict[str, Any] | None = field(default=None, compare=False)
    """The whole ``data`` object: V2 reads ``filter``, ``rewind``, ``delta``, ``modes`` from it."""


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    channel: str


@dataclass(frozen=True, slots=True)
class Signin:
    auth: str | None
    user_data: str | None


@dataclass(frozen=True, slots=True)
class ClientEvent:
    event: str
    channel: str | None
    data: Any
    echo: bool | None = field(default=None, compare=False)
    """V2 ``extras.echo``: per-message override of the sender's ``echo_messages``."""


@dataclass(frozen=True, slots=True)
class IgnoredSystemEvent:
    """A ``pusher:*`` name we do not know: ignored without a reply (spec 01 §10 item 27).

    V2 reads some of them (``resume``, ``channel_history``), hence ``data``.
    """

    event: str
    data: Any = field(default=None, compare=False)
    channel: str | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class UnknownEvent:
    """Neither a system nor a ``client-`` name: V1 answers 4301 (DESIGN, unknown event names)."""

    event: str
    data: Any = field(default=None, compare=False)


Command = (
    Ping | Pong | Subscribe | Unsubscribe | Signin | ClientEvent | IgnoredSystemEvent | UnknownEvent
)


def normalize_event(name: str) -> str:
    """``sockudo:x`` → ``pusher:x``; other names unchanged."""
    for alias, canonical in _ALIASES.items():
        if name.startswith(alias):
            return canonical + name[len(alias) :]
    return name


def _data_object(envelope: dict[str, Any], event: str) -> dict[str, Any] | str:
    """``data`` of a system frame: an object, or a JSON-encoded string of one (pusher-js 1.x)."""
    data = envelope.get("data")
    if isinstance(data, dict):
        return data
    if isinstance(data, str):
        try:
            decoded = inbound.loads(data)
        except ValueError:
            return data  # a bare string: unsubscribe allows the channel name itself
        if isinstance(decoded, dict):
            return decoded
        return data
    raise FrameError(MALFORMED, f"'data' of {event} must be an object")


def _opt_str(data: dict[str, Any], key: str, event: str) -> str | None:
    value = data.get(key)
    if value is None or isinstance(value, str):
        return value
    raise FrameError(MALFORMED, f"'{key}' of {event} must be a string")


def _channel(data: dict[str, Any] | str, event: str) -> str:
    channel = data.get("channel") if isinstance(data, dict) else None
    if not isinstance(channel, str) or not channel:
        raise FrameError(MALFORMED, f"{event} requires a 'channel' string")
    return channel


def parse_frame(raw: str | bytes) -> Command:
    """One inbound text (or, leniently, binary UTF-8) frame → a typed command."""
    try:
        envelope = inbound.loads(raw)
    except (ValueError, RecursionError):
        raise FrameError(MALFORMED, "Invalid JSON") from None
    if not isinstance(envelope, dict):
        raise FrameError(MALFORMED, "A frame must be a JSON object")
    return parse_envelope(envelope)


def parse_envelope(envelope: dict[str, Any]) -> Command:
    """A decoded frame (``event``, ``channel``, ``data``; any wire format) → a typed command."""
    event = envelope.get("event")
    if not isinstance(event, str) or not event:
        raise FrameError(MALFORMED, "A frame requires a non-empty 'event' string")
    event = normalize_event(event)

    if event == "pusher:ping":
        return Ping()
    if event == "pusher:pong":
        return Pong()
    if event == "pusher:subscribe":
        data = _data_object(envelope, event)
        channel = _channel(data, event)
        assert isinstance(data, dict)
        return Subscribe(
            channel,
            _opt_str(data, "auth", event),
            _opt_str(data, "channel_data", event),
            options=data,
        )
    if event == "pusher:unsubscribe":
        data = _data_object(envelope, event)
        if isinstance(data, str):
            if not data:
                raise FrameError(MALFORMED, f"{event} requires a 'channel' string")
            return Unsubscribe(data)
        return Unsubscribe(_channel(data, event))
    if event == "pusher:signin":
        data = _data_object(envelope, event)
        if not isinstance(data, dict):
            raise FrameError(MALFORMED, f"'data' of {event} must be an object")
        return Signin(_opt_str(data, "auth", event), _opt_str(data, "user_data", event))
    if event.startswith(_SYSTEM_PREFIXES):
        target = envelope.get("channel")
        return IgnoredSystemEvent(
            event, envelope.get("data"), target if isinstance(target, str) else None
        )
    if event.startswith("client-"):
        target = envelope.get("channel")
        extras = envelope.get("extras")
        echo = extras.get("echo") if isinstance(extras, dict) else None
        return ClientEvent(
            event,
            target if isinstance(target, str) else None,
            envelope.get("data"),
            echo if isinstance(echo, bool) else None,
        )
    return UnknownEvent(event, envelope.get("data"))


# --- outbound builders ------------------------------------------------------------------------


def _dump(obj: dict[str, Any]) -> str:
    return _ENCODER.encode(obj)


def connection_established(socket_id: str, activity_timeout: int) -> str:
    inner = _dump({"socket_id": socket_id, "activity_timeout": activity_timeout})
    return _dump({"event": "pusher:connection_established", "data": inner})


def error(code: int, message: str, channel: str | None = None) -> str:
    frame: dict[str, Any] = {"event": "pusher:error", "data": {"code": code, "message": message}}
    if channel is not None:
        frame["channel"] = channel
    return _dump(frame)


def ping() -> str:
    return '{"event":"pusher:ping","data":{}}'


def pong() -> str:
    return '{"event":"pusher:pong","data":{}}'


def subscription_succeeded(channel: str, data: dict[str, Any] | None = None) -> str:
    """``data`` is the presence member list for presence channels, else ``{}``."""
    inner = "{}" if data is None else _dump(data)
    return _dump(
        {"event": "pusher_internal:subscription_succeeded", "channel": channel, "data": inner}
    )


def signin_success(user_data: str) -> str:
    """``user_data`` is echoed as the exact string the client signed (spec 01 §3.10)."""
    return _dump({"event": "pusher:signin_success", "data": {"user_data": user_data}})


def watchlist_events(events: list[tuple[str, list[str]]]) -> str:
    """``[("online", ids), ("offline", ids)]`` in the shape pusher-js reads (spec 01 §3.11)."""
    inner = _dump({"events": [{"name": name, "user_ids": ids} for name, ids in events]})
    return _dump({"event": "pusher_internal:watchlist_events", "data": inner})


def cache_miss(channel: str) -> str:
    return _dump({"event": "pusher:cache_miss", "channel": channel, "data": "{}"})


def message(event: str, channel: str, data: str, user_id: str | None = None) -> str:
    """A channel message exactly as Pusher sends it; ``data`` is the delivered string verbatim."""
    frame: dict[str, Any] = {"event": event, "channel": channel, "data": data}
    if user_id is not None:
        frame["user_id"] = user_id
    return _dump(frame)


def raw_data_message(event: str, channel: str, data_json: str, user_id: str | None = None) -> str:
    """A client event whose ``data`` was JSON, not a string: forwarded as the same JSON value.

    ``data_json`` is the compact JSON the sender's value was stored as (spec 01 §3.12: the
    forwarded frame keeps ``data`` as received).
    """
    head = _dump({"event": event, "channel": channel})[:-1]
    tail = "" if user_id is None else f',"user_id":{_dump_str(user_id)}'
    return f'{head},"data":{data_json}{tail}}}'


def _dump_str(value: str) -> str:
    return _ENCODER.encode(value)
