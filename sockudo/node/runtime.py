"""The node's runtime: opens the log and the projection, decides continuity, runs the fold.

Used by ``sockudo-node`` (with the HTTP edge on top) and by ``sockudo-tools`` (without it).
"""

from __future__ import annotations

import logging
import os
import secrets
import time
from collections.abc import Callable
from pathlib import Path

from projections.projector import Projector
from projections.store.rocks import FOLD_VERSION, ProjectionStore
from sockudo.config import Settings
from sockudo.errors import CodecError, ConfigError, LogError
from sockudo.events import codec
from sockudo.log.base import EventLog, LogRecord
from sockudo.log.partitioning import channel_key, partition_for
from sockudo.node.consumer import DeliverySink, FoldRunner
from sockudo.node.topics import CHANNEL_EVENTS, topic_name, topic_specs

log = logging.getLogger(__name__)


def open_event_log(settings: Settings) -> EventLog:
    """The configured backend (not yet started)."""
    if settings.log_backend == "kafka":
        from sockudo.log.kafka import KafkaLog

        if not settings.kafka_bootstrap_servers:
            raise ConfigError("the kafka log needs KAFKA_BOOTSTRAP_SERVERS (or --kafka-bootstrap)")
        return KafkaLog(settings.kafka_bootstrap_servers, client_id=f"sockudo-{settings.node_id}")
    from sockudo.log.embedded import EmbeddedLog

    return EmbeddedLog(
        settings.embedded_log_dir,
        fsync=settings.embedded_fsync,
        fsync_interval_ms=settings.embedded_fsync_interval_ms,
        max_record_bytes=settings.embedded_max_record_bytes,
    )


def projection_dir(settings: Settings) -> Path:
    return Path(settings.projection_dir)


def decode_record(record: LogRecord) -> object:
    """Decode a ``channel-events`` record; a tombstone or garbage is a codec error."""
    if record.value is None:
        raise CodecError(f"tombstone at offset {record.offset} of a non-compacted topic")
    return codec.decode(record.headers, record.value)


def new_incarnation(node_id: str) -> str:
    return f"{node_id}/{int(time.time() * 1000)}-{secrets.token_hex(2)}"


class Runtime:
    """Log + projection + fold loop of one node, started and stopped together."""

    def __init__(
        self,
        settings: Settings,
        *,
        event_log: EventLog | None = None,
        on_deliveries: DeliverySink | None = None,
        projection_path: str | os.PathLike[str] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.log = event_log or open_event_log(settings)
        self.partitions = settings.effective_channel_partitions
        self.topic = topic_name(settings.topic_prefix, CHANNEL_EVENTS)
        self.incarnation = new_incarnation(settings.node_id)
        self._projection_path = Path(projection_path or projection_dir(settings))
        self._on_deliveries = on_deliveries
        self._clock = clock
        self.store: ProjectionStore | None = None
        self.runner: FoldRunner | None = None
        self._partition_of: dict[tuple[str, str, int], int] = {}

    async def start(self) -> None:
        await self.log.start()
        for spec in topic_specs(
            self.settings.topic_prefix, self.partitions, push_partitions=min(self.partitions, 12)
        ):
            await self.log.ensure_topic(spec.name, spec.partitions, spec.config)
        self.partitions = await self.log.partitions(self.topic)
        self.store = self._open_projection()
        runner = self._new_runner(self.store)
        ahead = await runner.check_continuity()
        if ahead and self.settings.log_backend != "kafka":
            # The embedded log was replaced under the projection: the log is authoritative.
            log.warning("projection ahead of the log on partitions %s; rebuilding", sorted(ahead))
            self.store.close()
            ProjectionStore.destroy(self._projection_path)
            self.store = self._open_projection()
            runner = self._new_runner(self.store)
            await runner.check_continuity()
        else:
            for p, stall in ahead.items():
                runner.projector.mark_stalled(p, stall)
        self.runner = runner
        await runner.start()

    def _open_projection(self) -> ProjectionStore:
        store = ProjectionStore(self._projection_path)
        info = store.projection_info()
        if info is not None and info.get("fold_version") != FOLD_VERSION:
            log.warning(
                "projection fold_version %s != %s: rebuilding from the log",
                info.get("fold_version"),
                FOLD_VERSION,
            )
            store.close()
            ProjectionStore.destroy(self._projection_path)
            store = ProjectionStore(self._projection_path)
            info = None
        if info is None:
            store.set_projection_info(
                {"schema": 1, "fold_version": FOLD_VERSION, "created_from": "log"}
            )
        return store

    def _new_runner(self, store: ProjectionStore) -> FoldRunner:
        projector = Projector(store, self.topic, self.partitions, decode_record, partition_for)
        return FoldRunner(
            self.log,
            projector,
            batch_max_records=self.settings.projection_batch_max_records,
            on_deliveries=self._on_deliveries,
            node_id=self.settings.node_id,
        )

    def fatal(self) -> str | None:
        """Why this node can no longer do its job, or ``None``.

        The fold loop died (the projection could not be written, say), or the log refuses
        appends for good (the embedded log after a failed write). Either lasts until the
        process starts again, so the node should stop rather than linger half-working.
        """
        runner = self.runner
        if runner is not None and runner.failure is not None:
            return f"the fold loop failed: {runner.failure}"
        failure = self.log.failure
        if failure is not None:
            return f"the event log failed: {failure}"
        return None

    def partition_of(self, app_id: str, channel: str) -> int:
        """The channel's partition (every publish and history read asks: murmur2 in Python is
        a few µs, so answers are remembered)."""
        partitions = self.partitions
        if partitions == 1:
            return 0
        key = (app_id, channel, partitions)
        found = self._partition_of.get(key)
        if found is None:
            if len(self._partition_of) >= 100_000:
                self._partition_of.clear()
            found = partition_for(channel_key(app_id, channel), partitions)
            self._partition_of[key] = found
        return found

    async def stop(self, *, drain_timeout_s: float = 5.0) -> None:
        """Fold what is already in the log (bounded), checkpoint, close everything."""
        failed = self.fatal()
        if self.runner is not None:
            if failed is None:
                try:
                    await self.runner.wait_caught_up(drain_timeout_s)
                except LogError as exc:
                    # The log is out of reach (a broker outage): stop without draining; the
                    # checkpoints say where the next start picks up.
                    log.warning("stopping without folding to the log end: %s", exc)
            await self.runner.stop()
        errors: list[Exception] = []
        if self.store is not None:
            try:
                self.store.close()
            except Exception as exc:
                errors.append(exc)
        try:
            await self.log.close()
        except Exception as exc:
            errors.append(exc)
        if errors and failed is None:
            raise errors[0]
        for error in errors:
            # Stopping because storage failed: what could not be flushed at close is what
            # failed, and nothing of it was acknowledged.
            log.warning("storage not closed cleanly after the failure: %s", error)
