"""Push registry events of the compacted ``registry`` topic (spec 04 §13.2).

Each record is a full snapshot of one entity (credential, template, device, channel
subscription) keyed by the entity key of spec 04 §13.1, or a removal. Removals are records too
(they carry a reason); the appender follows them with a tombstone (a ``None`` value, which never
reaches the codec) so compaction can drop the entity. Free-form JSON travels as JSON text.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from sockudo.events.channel import Origin


@dataclass(frozen=True, slots=True)
class PushCredentialUpserted:
    """A provider credential was written (spec 04 §3); the latest of a provider is active."""

    TYPE: ClassVar[str] = "push.credential.upsert"

    event_id: str
    app_id: str
    origin: Origin
    credential_id: str
    provider: str
    """``fcm``, ``apns``, ``webPush``, ``hms`` or ``wns``."""
    version: int
    public_json: str
    """Non-secret descriptors (project id, team/key id, topic, environment, …) as JSON text."""
    secret_envelope: str
    """``envelope:v1:aes256gcm:…`` holding the secret material; never plaintext."""
    written_at_ms: int


@dataclass(frozen=True, slots=True)
class PushTemplateUpserted:
    """A push template was created or replaced (spec 04 §4)."""

    TYPE: ClassVar[str] = "push.template.upsert"

    event_id: str
    app_id: str
    origin: Origin
    template_id: str
    template_json: str
    """The stored template (``defaultLocale``, ``locales``, ``providerOverrides``) as JSON."""
    written_at_ms: int


@dataclass(frozen=True, slots=True)
class PushTemplateDeleted:
    """A push template was deleted."""

    TYPE: ClassVar[str] = "push.template.delete"

    event_id: str
    app_id: str
    origin: Origin
    template_id: str
    deleted_at_ms: int


@dataclass(frozen=True, slots=True)
class PushRatePolicy:
    """A device's token bucket (``pushRatePolicy``, spec 04 §5.1)."""

    capacity: int
    refill_per_second: int


@dataclass(frozen=True, slots=True)
class PushDeviceUpserted:
    """A device registration, full snapshot (spec 04 §5, §15.7)."""

    TYPE: ClassVar[str] = "push.device.upsert"

    event_id: str
    app_id: str
    origin: Origin
    device_id: str
    form_factor: str
    platform: str
    timezone: str
    locale: str
    last_active_at_ms: int
    transport_type: str
    """``transportType`` of the recipient (``gcm``, ``apns``, ``web``, ``hms``, ``wns``)."""
    provider: str
    token_hash: str
    """Lowercase hex SHA-256 of the recipient's token input (spec 04 §5.2)."""
    recipient: str
    """The recipient object as JSON text, encrypted with the credential envelope."""
    push_state: str
    """``ACTIVE``, ``FAILING`` or ``FAILED``."""
    failure_count: int
    identity_secret_hash: str
    """``pbkdf2-sha256$…`` hash of the device identity token."""
    change: str
    """``inserted``, ``updated``, ``unchanged`` or ``state`` (a worker's push-state change)."""
    written_at_ms: int
    client_id: str | None = None
    metadata_json: str | None = None
    error_reason: str | None = None
    rate_policy: PushRatePolicy | None = None


@dataclass(frozen=True, slots=True)
class PushDeviceRemoved:
    """A device registration was removed."""

    TYPE: ClassVar[str] = "push.device.remove"

    event_id: str
    app_id: str
    origin: Origin
    device_id: str
    reason: str
    """``api``, ``client_bulk`` or ``provider_invalid_token``."""
    removed_at_ms: int
    publish_id: str | None = None
    """The publish whose delivery result caused the removal, if any."""


@dataclass(frozen=True, slots=True)
class PushSubscriptionUpserted:
    """A channel push subscription of a device or of a client (spec 04 §6)."""

    TYPE: ClassVar[str] = "push.subscription.upsert"

    event_id: str
    app_id: str
    origin: Origin
    channel: str
    written_at_ms: int
    device_id: str | None = None
    """Set for a device subscription."""
    client_id: str | None = None
    """Set for a client subscription."""


@dataclass(frozen=True, slots=True)
class PushSubscriptionRemoved:
    """A channel push subscription was removed (also cascaded from a device removal)."""

    TYPE: ClassVar[str] = "push.subscription.remove"

    event_id: str
    app_id: str
    origin: Origin
    channel: str
    removed_at_ms: int
    device_id: str | None = None
    client_id: str | None = None


RegistryEvent = (
    PushCredentialUpserted
    | PushTemplateUpserted
    | PushTemplateDeleted
    | PushDeviceUpserted
    | PushDeviceRemoved
    | PushSubscriptionUpserted
    | PushSubscriptionRemoved
)
