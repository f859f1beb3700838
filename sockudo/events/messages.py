"""Versioned-message mutations of the ``channel-events`` topic (spec 03 §6).

One record per accepted mutation request. The fold validates the target in the current
generation, applies the merge rules of spec 03 §6.6 to the latest version, allocates D and the
``version_serial`` and queues the live frame; the frame's ``message_id`` is derived by the fold
as ``{original message_id}:{version_serial}`` (DESIGN, spec 03 §6.9), so no id is minted here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from sockudo.events.channel import Origin

CLEARABLE_FIELDS = frozenset({"name", "data", "extras"})
"""Values allowed in ``clear_fields``."""


@dataclass(frozen=True, slots=True)
class AiTransportLimits:
    """AI-transport limits in force for the channel at append time (spec 03 §6.8)."""

    max_accumulated_bytes: int
    max_appends_per_message: int
    max_open_streaming_messages_per_channel: int


@dataclass(frozen=True, slots=True)
class MessageUpdated:
    """``POST …/messages/{serial}/update``: replace name, data or extras of a message."""

    TYPE: ClassVar[str] = "message.update"

    event_id: str
    app_id: str
    channel: str
    origin: Origin
    message_serial: str
    """The target message (its create's ``version_serial``)."""
    name: str | None = None
    """New event name; ``None`` keeps the current one."""
    data: str | None = None
    """New data (whole value); ``None`` keeps the current one."""
    data_is_json: bool = False
    """True when ``data`` holds the JSON text of a non-string value."""
    extras_json: str | None = None
    """New ``extras`` object as JSON text; ``None`` keeps the current one."""
    clear_fields: tuple[str, ...] = ()
    """Fields set to absent (subset of ``CLEARABLE_FIELDS``)."""
    client_id: str | None = None
    """``version.client_id``: the attribution resolved by the handler (spec 03 §6.7)."""
    actor_socket_id: str | None = None
    """Socket of the V2 actor that requested the mutation, ``None`` for a trusted server call."""
    actor_user_id: str | None = None
    """Authenticated user of the actor socket."""
    description: str | None = None
    metadata_json: str | None = None
    """``version.metadata`` as JSON text."""
    op_id: str | None = None
    """Replay-dedupe id (spec 03 §8.3)."""
    op_fingerprint: str | None = None
    """Hex digest of payload, attribution and actor; the fold compares it for a repeated op_id."""
    ai_limits: AiTransportLimits | None = None
    """Limits of an AI-transport channel; ``None`` for other channels."""


@dataclass(frozen=True, slots=True)
class MessageDeleted:
    """``POST …/messages/{serial}/delete``: a soft delete (a new version with action delete)."""

    TYPE: ClassVar[str] = "message.delete"

    event_id: str
    app_id: str
    channel: str
    origin: Origin
    message_serial: str
    data: str | None = None
    """Replacement data; ``None`` keeps the current one."""
    data_is_json: bool = False
    extras_json: str | None = None
    clear_fields: tuple[str, ...] = ()
    client_id: str | None = None
    actor_socket_id: str | None = None
    actor_user_id: str | None = None
    description: str | None = None
    metadata_json: str | None = None
    op_id: str | None = None
    op_fingerprint: str | None = None
    ai_limits: AiTransportLimits | None = None


@dataclass(frozen=True, slots=True)
class MessageAppended:
    """``POST …/messages/{serial}/append``: a string fragment appended to the message's data."""

    TYPE: ClassVar[str] = "message.append"

    event_id: str
    app_id: str
    channel: str
    origin: Origin
    message_serial: str
    data: str
    """The fragment (may be empty only for a terminal append)."""
    extras_json: str | None = None
    """Replacement ``extras`` as JSON text; ``None`` keeps the current one."""
    client_id: str | None = None
    actor_socket_id: str | None = None
    actor_user_id: str | None = None
    description: str | None = None
    metadata_json: str | None = None
    op_id: str | None = None
    op_fingerprint: str | None = None
    ai_limits: AiTransportLimits | None = None


MessageMutation = MessageUpdated | MessageDeleted | MessageAppended
