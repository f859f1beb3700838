"""The node runtime in process on a real embedded log: stalls, automatic rebuilds, restarts."""

from __future__ import annotations

import asyncio
import shutil
import uuid
from pathlib import Path
from typing import Any

import pytest

from projections.folds.state import APPLIED, StreamHead
from projections.projector import STALL_AHEAD, STALL_UNDECODABLE
from projections.reads.history import HistoryQuery
from projections.store import keys
from projections.store.rocks import FOLD_VERSION, ProjectionStore, Stall
from sockudo.config import Settings, load_settings
from sockudo.errors import StreamNotHealthy
from sockudo.events.channel import MessagePublished, Origin
from sockudo.events.codec import encode
from sockudo.log.embedded import EmbeddedLog
from sockudo.log.partitioning import channel_key, partition_for
from sockudo.node.runtime import Runtime
from sockudo.node.services import ChannelService, PublishRequest
from tools.inspect_stream import EXIT, inspect_stream
from tools.rebuild import rebuild


def settings(tmp_path: Path, partitions: int = 3) -> Settings:
    return load_settings(
        None,
        overrides={"data_dir": str(tmp_path / "data"), "channel_partitions": partitions},
        environ={},
    )


def channels_in_distinct_partitions(runtime: Runtime) -> list[str]:
    found: dict[int, str] = {}
    i = 0
    while len(found) < runtime.partitions:
        name = f"room-{i}"
        found.setdefault(runtime.partition_of("app-id", name), name)
        i += 1
    return [found[p] for p in sorted(found)]


async def publish(service: ChannelService, channel: str, data: str = "x") -> int | None:
    app = service.settings.app_by_id("app-id")
    assert app is not None
    out = await service.publish(
        app, PublishRequest(name="ev", data=data, data_is_json=False, channels=(channel,))
    )
    assert out[channel].kind == APPLIED
    return out[channel].history_serial


async def append_raw(
    runtime: Runtime, channel: str, *, version: bytes | None = None, **fields: Any
) -> int:
    """Append a publish of ``channel`` straight to the log, past every handler check;
    ``version`` replaces its schema-version byte. Returns its partition."""
    event = MessagePublished(
        event_id=str(uuid.uuid4()),
        app_id="app-id",
        channel=channel,
        origin=Origin(node="x"),
        message_id="m",
        name="ev",
        **({"data": "d"} | fields),
    )
    encoded = encode(event)
    value = encoded.value if version is None else version + encoded.value[1:]
    p = runtime.partition_of("app-id", channel)
    key = channel_key("app-id", channel)
    await runtime.log.append(runtime.topic, p, key, value, encoded.headers, timeout_ms=5000)
    return p


async def stall_one_partition(service: ChannelService, **record: Any) -> tuple[str, int, Stall]:
    """One message on the first of one channel per partition, then a crafted record
    (``append_raw``) after it. The record's partition must stall, its channel fail closed
    with that stall's reason, and every other partition keep folding and serving.
    Returns (its channel, its partition, the stall)."""
    runtime = service.runtime
    bad, *good = channels_in_distinct_partitions(runtime)
    assert await publish(service, bad) == 1
    p = await append_raw(runtime, bad, **record)
    assert runtime.runner is not None
    assert await runtime.runner.wait_caught_up(5)
    stall = runtime.runner.projector.state[p].stall
    assert stall is not None
    app = service.settings.app_by_id("app-id")
    assert app is not None
    with pytest.raises(StreamNotHealthy) as err:
        service.history_page(app, bad, HistoryQuery(limit=10))
    assert err.value.state["reason"] == stall.reason
    for channel in good:
        assert await publish(service, channel) == 1
        assert service.history_page(app, channel, HistoryQuery(limit=10))["items"]
    return bad, p, stall


async def test_undecodable_record_stalls_only_its_partition(tmp_path: Path) -> None:
    s = settings(tmp_path)
    runtime = Runtime(s)
    await runtime.start()
    service = ChannelService(runtime)
    try:
        # A record from a future schema version (255) lands in the first channel's partition.
        bad, p, stall = await stall_one_partition(service, version=b"\xff")
        assert stall.reason == STALL_UNDECODABLE
        assert stall.offset == 1
    finally:
        await runtime.stop()

    # The stall survives a restart: the record is still undecodable, the checkpoint stays.
    again = Runtime(s)
    await again.start()
    try:
        assert again.runner is not None
        assert await again.runner.wait_caught_up(5)
        kept = again.runner.projector.state[p].stall
        assert kept is not None
        assert kept.offset == 1
    finally:
        await again.stop()

    # inspect-stream names the partition's stall and the offset it cannot decode.
    log = EmbeddedLog(s.embedded_log_dir, read_only=True)
    await log.start()
    try:
        report = await inspect_stream(s, log, "app-id", bad, projection_path=Path(s.projection_dir))
    finally:
        await log.close()
    assert report["verdict"] == "stalled"
    assert EXIT[report["verdict"]] == 2
    assert report["projection"]["stall"]["reason"] == STALL_UNDECODABLE
    assert report["projection"]["stall"]["offset"] == 1
    assert report["recomputed"]["undecodable"][0]["offset"] == 1
    assert report["stream"]["state"]["durable_state"] == "degraded"


async def test_a_record_the_fold_cannot_apply_stalls_only_its_partition(tmp_path: Path) -> None:
    # It decodes, but says its data is JSON when it is not: the fold fails on it. The fold
    # loop must not die with it (every partition would stop), nor apply half of it.
    s = settings(tmp_path)
    runtime = Runtime(s)
    await runtime.start()
    service = ChannelService(runtime)
    try:
        bad, _p, stall = await stall_one_partition(service, data="{not json", data_is_json=True)
        assert (stall.reason, stall.offset) == (STALL_UNDECODABLE, 1)
        assert "JSONDecodeError" in stall.detail
        # Nothing of the bad record was applied: its channel still holds one message.
        store = runtime.store
        assert store is not None
        raw = store.get(keys.STREAMS, keys.channel_prefix("app-id", bad))
        assert raw is not None
        assert StreamHead.decode(raw).next_h == 2
    finally:
        await runtime.stop()


async def test_projection_ahead_of_a_replaced_embedded_log_is_rebuilt(tmp_path: Path) -> None:
    s = settings(tmp_path, partitions=1)
    runtime = Runtime(s)
    await runtime.start()
    for i in range(5):
        await publish(ChannelService(runtime), "chat", f"old-{i}")
    await runtime.stop()

    shutil.rmtree(s.embedded_log_dir)  # the log is replaced; the projection is now ahead
    runtime = Runtime(s)
    await runtime.start()
    service = ChannelService(runtime)
    try:
        assert await publish(service, "chat", "new") == 1
        app = s.app_by_id("app-id")
        assert app is not None
        items = service.history_page(app, "chat", HistoryQuery(limit=10))["items"]
        assert [i["message"]["data"] for i in items] == ["new"]
    finally:
        await runtime.stop()


async def test_the_tools_report_a_projection_ahead_of_its_log(tmp_path: Path) -> None:
    s = settings(tmp_path, partitions=1)
    runtime = Runtime(s)
    await runtime.start()
    try:
        for i in range(2):
            await publish(ChannelService(runtime), "chat", f"m{i}")
    finally:
        await runtime.stop()
    shorter = tmp_path / "shorter-log"
    shutil.copytree(s.embedded_log_dir, shorter)
    runtime = Runtime(s)
    await runtime.start()
    try:
        for i in range(2, 5):
            await publish(ChannelService(runtime), "chat", f"m{i}")
    finally:
        await runtime.stop()
    # The log loses its last records (restored from an older copy): the projection is ahead.
    shutil.rmtree(s.embedded_log_dir)
    shutil.copytree(shorter, s.embedded_log_dir)

    log = EmbeddedLog(s.embedded_log_dir, read_only=True)
    await log.start()
    try:
        projection = Path(s.projection_dir)
        report = await inspect_stream(s, log, "app-id", "chat", projection_path=projection)
        assert (report["verdict"], EXIT[report["verdict"]]) == ("stalled", 2)  # was "ok", 0
        assert report["projection"]["stall"]["reason"] == STALL_AHEAD
        # --verify folds what the log has (it waited forever for the lost records) and
        # reports the partition and the difference.
        verified = await asyncio.wait_for(rebuild(s, log, projection, verify=True), 30)
    finally:
        await log.close()
    assert verified.stalled[0].startswith(STALL_AHEAD)
    assert verified.differences


async def test_fold_version_change_rebuilds_from_the_log(tmp_path: Path) -> None:
    s = settings(tmp_path, partitions=1)
    runtime = Runtime(s)
    await runtime.start()
    for i in range(3):
        await publish(ChannelService(runtime), "chat", f"m{i}")
    await runtime.stop()

    store = ProjectionStore(s.projection_dir)
    store.set_projection_info(
        {"schema": 1, "fold_version": FOLD_VERSION - 1, "created_from": "log"}
    )
    # Corrupt a row: only a rebuild from the log can restore it.
    store.write(
        {keys.HISTORY: {keys.history_key(keys.channel_prefix("app-id", "chat"), 1, 2): None}}
    )
    store.close()

    runtime = Runtime(s)
    await runtime.start()
    service = ChannelService(runtime)
    try:
        assert runtime.runner is not None
        assert await runtime.runner.wait_caught_up(5)
        app = s.app_by_id("app-id")
        assert app is not None
        page = service.history_page(app, "chat", HistoryQuery(limit=10))
        assert [i["serial"] for i in page["items"]] == [3, 2, 1]
        assert runtime.store is not None
        assert runtime.store.projection_info() == {
            "schema": 1,
            "fold_version": FOLD_VERSION,
            "created_from": "log",
        }
    finally:
        await runtime.stop()


@pytest.mark.parametrize("partitions", [1, 3, 24])
def test_partition_of_is_the_log_partitioner(tmp_path: Path, partitions: int) -> None:
    runtime = Runtime(settings(tmp_path, partitions))
    names = [f"room-{i}" for i in range(200)] + ["présence-é", "private-x:y"]
    for _ in range(2):  # computed, then remembered
        for name in names:
            assert runtime.partition_of("app-id", name) == partition_for(
                channel_key("app-id", name), partitions
            )
