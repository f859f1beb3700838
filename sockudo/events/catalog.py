"""Every event class of the mission, one Avro family each (family = class name).

``EVENT_CLASSES`` is the single list the codec builds its registry from; a class missing here
cannot be encoded, and a schema family without a class here makes the codec refuse to load.
"""

from __future__ import annotations

from sockudo.events.annotations import AnnotationCreated, AnnotationDeleted, AnnotationEvent
from sockudo.events.channel import (
    ChannelEvent,
    HistoryPurged,
    HistoryReset,
    MessagePublished,
    PartitionGenesis,
    PartitionRebased,
    StreamStateMarked,
)
from sockudo.events.messages import MessageAppended, MessageDeleted, MessageMutation, MessageUpdated
from sockudo.events.nodes import NodeEvent, NodeHeartbeat, NodeStopping
from sockudo.events.presence import (
    NodeDeclaredDead,
    PresenceEvent,
    PresenceHistoryReset,
    PresenceMemberJoined,
    PresenceMemberLeft,
    PresenceMemberUpdated,
)
from sockudo.events.push import (
    PushAdmitted,
    PushCancelRequested,
    PushDeadLettered,
    PushDeadLetterReplayed,
    PushDeliveriesPlanned,
    PushDeliveryResult,
    PushDispatchAttempted,
    PushDue,
    PushLifecycleEvent,
    PushPlanningCompleted,
    PushPlanningStarted,
    PushRetryScheduled,
)
from sockudo.events.registry import (
    PushCredentialUpserted,
    PushDeviceRemoved,
    PushDeviceUpserted,
    PushSubscriptionRemoved,
    PushSubscriptionUpserted,
    PushTemplateDeleted,
    PushTemplateUpserted,
    RegistryEvent,
)
from sockudo.events.users import CapabilityRevoked, UserConnectionsTerminated, UserEvent

__all__ = ["EVENT_CLASSES", "ChannelTopicEvent", "Event"]

ChannelTopicEvent = ChannelEvent | PresenceEvent | MessageMutation | AnnotationEvent | UserEvent
"""What a ``channel-events`` record decodes to."""

Event = ChannelTopicEvent | PushLifecycleEvent | RegistryEvent | NodeEvent
"""Any event the codec knows."""

EVENT_CLASSES: tuple[type[Event], ...] = (
    # channel-events: publishes, stream control, partition markers
    MessagePublished,
    HistoryReset,
    HistoryPurged,
    StreamStateMarked,
    PartitionRebased,
    PartitionGenesis,
    # channel-events: presence (``node.dead`` also goes to ``nodes``)
    PresenceMemberJoined,
    PresenceMemberLeft,
    PresenceMemberUpdated,
    PresenceHistoryReset,
    NodeDeclaredDead,
    # channel-events: connection control
    UserConnectionsTerminated,
    CapabilityRevoked,
    # channel-events: versioned-message mutations and annotations
    MessageUpdated,
    MessageDeleted,
    MessageAppended,
    AnnotationCreated,
    AnnotationDeleted,
    # push
    PushAdmitted,
    PushDue,
    PushCancelRequested,
    PushPlanningStarted,
    PushDeliveriesPlanned,
    PushPlanningCompleted,
    PushDispatchAttempted,
    PushDeliveryResult,
    PushRetryScheduled,
    PushDeadLettered,
    PushDeadLetterReplayed,
    # registry (compacted)
    PushCredentialUpserted,
    PushTemplateUpserted,
    PushTemplateDeleted,
    PushDeviceUpserted,
    PushDeviceRemoved,
    PushSubscriptionUpserted,
    PushSubscriptionRemoved,
    # nodes
    NodeHeartbeat,
    NodeStopping,
)
