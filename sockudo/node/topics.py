"""The topics a node creates at startup and their fixed settings (spec 05 §6.2)."""

from __future__ import annotations

from sockudo.log.base import MAX_RECORD_BYTES, TopicSpec

CHANNEL_EVENTS = "channel-events"
REGISTRY = "registry"
PUSH = "push"
NODES = "nodes"
SNAPSHOTS = "snapshots"

_THIRTY_ONE_DAYS_MS = 31 * 24 * 3600 * 1000


def topic_name(prefix: str, name: str) -> str:
    return f"{prefix}.{name}"


def topic_specs(prefix: str, channel_partitions: int, *, push_partitions: int) -> list[TopicSpec]:
    """Every topic of the node. Partition counts are fixed at creation: keys map by them."""
    return [
        TopicSpec(
            topic_name(prefix, CHANNEL_EVENTS),
            channel_partitions,
            {
                "cleanup.policy": "delete",
                "retention.ms": "-1",
                "message.timestamp.type": "LogAppendTime",
                "max.message.bytes": str(MAX_RECORD_BYTES),
            },
        ),
        TopicSpec(
            topic_name(prefix, REGISTRY),
            1,
            {
                "cleanup.policy": "compact",
                "min.compaction.lag.ms": "0",
                "delete.retention.ms": "86400000",
            },
        ),
        TopicSpec(
            topic_name(prefix, PUSH),
            push_partitions,
            {"cleanup.policy": "delete", "retention.ms": str(_THIRTY_ONE_DAYS_MS)},
        ),
        TopicSpec(
            topic_name(prefix, NODES), 1, {"cleanup.policy": "delete", "retention.ms": "3600000"}
        ),
        TopicSpec(topic_name(prefix, SNAPSHOTS), 1, {"cleanup.policy": "compact"}),
    ]
