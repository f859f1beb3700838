"""The projector on a real RocksDB store: records its folds cannot apply stall their partition."""

from __future__ import annotations

import uuid
from pathlib import Path

from projections.folds.state import APPLIED
from projections.projector import STALL_UNDECODABLE, Projector
from projections.store.rocks import ProjectionStore
from sockudo.events import codec
from sockudo.events.channel import MessagePublished, Origin
from sockudo.log.base import LogRecord
from sockudo.log.partitioning import channel_key, partition_for
from sockudo.node.runtime import decode_record

TOPIC = "sockudo.channel-events"
PARTITIONS = 2
T0 = 1_700_000_000_000


def channel_in(partition: int) -> str:
    i = 0
    while partition_for(channel_key("app", f"room-{i}"), PARTITIONS) != partition:
        i += 1
    return f"room-{i}"


def record(partition: int, offset: int, *, poison: bool = False) -> LogRecord:
    channel = channel_in(partition)
    event = MessagePublished(
        event_id=str(uuid.uuid4()),
        app_id="app",
        channel=channel,
        origin=Origin(node="n"),
        message_id=f"m{partition}-{offset}",
        name="ev",
        data="{not json" if poison else f'"{offset}"',
        data_is_json=True,
    )
    enc = codec.encode(event)
    key = channel_key("app", channel)
    return LogRecord(TOPIC, partition, offset, T0 + offset, key, enc.value, enc.headers)


def test_unfoldable_records_stall_their_partitions_after_what_came_before(
    tmp_path: Path,
) -> None:
    store = ProjectionStore(tmp_path / "p")
    try:
        projector = Projector(store, TOPIC, PARTITIONS, decode_record, partition_for)
        # One batch: partition 0 poisoned at offset 2, partition 1 at offset 1.
        batch = [
            record(0, 0),
            record(1, 0),
            record(0, 1),
            record(1, 1, poison=True),
            record(0, 2, poison=True),
            record(1, 2),
            record(0, 3),
        ]
        result = projector.apply(batch, {0: 4, 1: 3})
        assert sorted(result.outcomes) == [(0, 0), (0, 1), (1, 0)]
        assert {o.kind for o in result.outcomes.values()} == {APPLIED}
        assert [d.serial for d in result.deliveries] == [1, 1, 2]
        assert {p: (s.reason, s.offset) for p, s in result.stalled.items()} == {
            0: (STALL_UNDECODABLE, 2),
            1: (STALL_UNDECODABLE, 1),
        }
        assert "JSONDecodeError" in result.stalled[0].detail
        # The stalls and the checkpoints before them were committed together.
        for p, position in ((0, 2), (1, 1)):
            checkpoint = store.checkpoint(TOPIC, p)
            assert checkpoint is not None
            assert checkpoint.position == position
            assert store.stall(TOPIC, p) == result.stalled[p]
        # Later batches leave stalled partitions where they stopped.
        later = projector.apply([record(0, 4), record(1, 3)], {0: 5, 1: 4})
        assert later.outcomes == {}
        assert (projector.state[0].position, projector.state[1].position) == (2, 1)
    finally:
        store.close()
