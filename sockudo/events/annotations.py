"""Annotation events of the ``channel-events`` topic (spec 03 §7).

The fold allocates the annotation serial (``{generation:06d}:a{seq:020d}``), updates the
per-(message, type) summary and queues the summary and raw live frames.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from sockudo.events.channel import Origin


@dataclass(frozen=True, slots=True)
class AnnotationCreated:
    """An annotation was added to a message (``POST …/annotations``)."""

    TYPE: ClassVar[str] = "annotation.create"

    event_id: str
    app_id: str
    channel: str
    origin: Origin
    message_serial: str
    """The annotated message."""
    annotation_id: str
    """The request's ``id``, or a UUIDv4 minted by the handler."""
    type: str
    """``<namespace>:<summarizer>.v1``."""
    name: str | None = None
    client_id: str | None = None
    """Effective annotating identity (signed-in user of the actor socket, else the request's)."""
    count: int | None = None
    data_json: str | None = None
    """Opaque ``data`` as JSON text."""
    encoding: str | None = None
    fingerprint: str | None = None
    """Hex digest of the create payload, so a repeated ``id`` is answered by the fold (dedupe
    or conflict); ``None`` when the id was minted by the server."""


@dataclass(frozen=True, slots=True)
class AnnotationDeleted:
    """An annotation create was deleted (``DELETE …/annotations/{annotationSerial}``)."""

    TYPE: ClassVar[str] = "annotation.delete"

    event_id: str
    app_id: str
    channel: str
    origin: Origin
    message_serial: str
    annotation_serial: str
    """Serial of the ``annotation.create`` being deleted."""
    client_id: str | None = None
    """Identity of the deleting actor, when known."""


AnnotationEvent = AnnotationCreated | AnnotationDeleted
