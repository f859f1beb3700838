"""Push lifecycle events of the ``push`` topic (spec 04 §13.3).

Every event of one publish is keyed ``{app}:{publishId}``, so its whole lifecycle is totally
ordered in one partition and the publish fold decides races (first ``PushAdmitted`` wins; cancel
versus planning is settled by log order). Every time a projection shows comes from an ``*_ms``
field of these events, never from the folding node's clock. Free-form JSON (targets, payloads,
overrides) travels as canonical JSON text; recipients are credential envelopes (spec 04 §3.2).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from sockudo.events.channel import Origin


@dataclass(frozen=True, slots=True)
class PlannedDelivery:
    """One device or recipient a publish will be sent to."""

    delivery_key: str
    """``{app}:{publishId}:{provider}:{deviceId or "recipient-" + tokenHash}``."""
    provider: str
    """``fcm``, ``apns``, ``webPush``, ``hms`` or ``wns``."""
    token_hash: str
    recipient: str
    """The provider address, encrypted with the credential envelope."""
    device_id: str | None = None
    """``None`` for a raw ``recipient`` target."""


@dataclass(frozen=True, slots=True)
class PushAdmitted:
    """``POST /publish`` (or another admission source) admitted a publish (spec 04 §7)."""

    TYPE: ClassVar[str] = "push.admitted"

    event_id: str
    app_id: str
    publish_id: str
    origin: Origin
    admitted_at_ms: int
    """Becomes the status's ``createdAtMs``."""
    intent_hash: str
    """Hex digest of the canonical resolved intent; a reused publishId with another hash is a
    conflict (spec 04 §7.6)."""
    targets_json: str
    """The request's ``recipients`` (canonical JSON array)."""
    payload_json: str
    """The resolved payload after template resolution (spec 04 §4.2)."""
    initial_state: str
    """``queued``, ``scheduled`` or ``quota_exceeded``."""
    expected_recipients: int
    fanout_regime: str
    """``fastPath`` or ``shardPath``."""
    overrides_json: str | None = None
    """Resolved provider overrides as a JSON object keyed by provider."""
    idempotency_key: str | None = None
    not_before_ms: int | None = None
    expires_at_ms: int | None = None
    priority: str | None = None
    """``high`` or ``normal``; ``None`` = provider defaults."""
    quota_override: bool = False
    reason: str | None = None
    """``errorReason`` when ``initial_state`` is ``quota_exceeded``."""
    source: str = "api"
    """``api``, ``channel_extras`` (``extras.push`` on a publish) or ``push_rule`` (spec 04 §16)."""


@dataclass(frozen=True, slots=True)
class PushDue:
    """The scheduler saw a scheduled publish's ``notBeforeMs`` pass: ``scheduled`` → ``queued``."""

    TYPE: ClassVar[str] = "push.due"

    event_id: str
    app_id: str
    publish_id: str
    origin: Origin
    due_at_ms: int


@dataclass(frozen=True, slots=True)
class PushCancelRequested:
    """``DELETE /scheduled/{publishId}``; the fold cancels it only if still queued/scheduled."""

    TYPE: ClassVar[str] = "push.cancel_requested"

    event_id: str
    app_id: str
    publish_id: str
    origin: Origin
    requested_at_ms: int
    """Becomes ``cancelledAtMs`` when the cancel wins."""


@dataclass(frozen=True, slots=True)
class PushPlanningStarted:
    """The planner started expanding the publish's targets: → ``planning``."""

    TYPE: ClassVar[str] = "push.planning_started"

    event_id: str
    app_id: str
    publish_id: str
    origin: Origin
    started_at_ms: int


@dataclass(frozen=True, slots=True)
class PushDeliveriesPlanned:
    """A batch (at most 500) of the publish's deliveries."""

    TYPE: ClassVar[str] = "push.deliveries_planned"

    event_id: str
    app_id: str
    publish_id: str
    origin: Origin
    deliveries: tuple[PlannedDelivery, ...]


@dataclass(frozen=True, slots=True)
class PushPlanningCompleted:
    """Planning ended: exact totals, or the reason it failed."""

    TYPE: ClassVar[str] = "push.planning_completed"

    event_id: str
    app_id: str
    publish_id: str
    origin: Origin
    completed_at_ms: int
    planned_total: int
    planned_by_provider: dict[str, int] = field(default_factory=dict)
    failure_reason: str | None = None
    """Set when planning failed (→ ``failed``)."""


@dataclass(frozen=True, slots=True)
class PushDispatchAttempted:
    """A provider worker is about to send these deliveries (marks them in flight)."""

    TYPE: ClassVar[str] = "push.dispatch_attempted"

    event_id: str
    app_id: str
    publish_id: str
    origin: Origin
    delivery_keys: tuple[str, ...]
    attempt: int
    """1 for the first send."""
    attempted_at_ms: int


@dataclass(frozen=True, slots=True)
class PushDeliveryResult:
    """The outcome of one delivery attempt, from a provider worker or ``POST /deliveryStatus``."""

    TYPE: ClassVar[str] = "push.delivery_result"

    event_id: str
    app_id: str
    publish_id: str
    origin: Origin
    provider: str
    attempt: int
    outcome: str
    """``accepted``, ``rejected``, ``retryable``, ``expired`` or ``cancelled``."""
    occurred_at_ms: int
    source: str = "worker"
    """``worker`` or ``api`` (``/deliveryStatus`` ingest)."""
    delivery_key: str | None = None
    result_id: str | None = None
    """The ingest's ``eventId`` (given or derived); the fold de-duplicates by it."""
    batch_id: str | None = None
    device_id: str | None = None
    token_hash: str | None = None
    failure_class: str | None = None
    """``device_terminal``, ``device_transient``, ``provider_transient``, ``provider_quota``,
    ``credential_auth``, ``caller_payload``, ``network_transport`` or ``unknown``."""
    error_class: str | None = None
    error_reason: str | None = None
    provider_message_id: str | None = None
    retry_after_ms: int | None = None
    next_attempt_at_ms: int | None = None


@dataclass(frozen=True, slots=True)
class PushRetryScheduled:
    """A retryable delivery was put on the retry schedule (spec 04 §15.6)."""

    TYPE: ClassVar[str] = "push.retry_scheduled"

    event_id: str
    app_id: str
    publish_id: str
    origin: Origin
    delivery_key: str
    next_attempt: int
    next_attempt_at_ms: int
    retry_after_ms: int | None = None
    """Provider ``Retry-After`` that set the time, if any."""


@dataclass(frozen=True, slots=True)
class PushDeadLettered:
    """A delivery exhausted its retries or was rejected for a replayable reason (spec 04 §19)."""

    TYPE: ClassVar[str] = "push.dead_lettered"

    event_id: str
    app_id: str
    publish_id: str
    origin: Origin
    dead_letter_id: str
    delivery_key: str
    provider: str
    stage: str
    """Where the delivery stopped: ``retry`` (attempts exhausted) or ``delivery_result``
    (a non-retryable rejection that is not device-terminal, spec 04 §15.6)."""
    reason: str
    replayable: bool
    occurred_at_ms: int


@dataclass(frozen=True, slots=True)
class PushDeadLetterReplayed:
    """``POST /deadLetters/{id}/replay`` re-opened a dead-lettered delivery."""

    TYPE: ClassVar[str] = "push.dead_letter_replayed"

    event_id: str
    app_id: str
    publish_id: str
    origin: Origin
    dead_letter_id: str
    requested_at_ms: int


PushLifecycleEvent = (
    PushAdmitted
    | PushDue
    | PushCancelRequested
    | PushPlanningStarted
    | PushDeliveriesPlanned
    | PushPlanningCompleted
    | PushDispatchAttempted
    | PushDeliveryResult
    | PushRetryScheduled
    | PushDeadLettered
    | PushDeadLetterReplayed
)
