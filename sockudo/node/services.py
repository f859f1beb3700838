"""The facade the edges use: append commands as events, read projections.

Handlers never touch RocksDB or the log directly: they call these services, which append
an event, wait for this node's fold to pass its offset, and answer from the outcome
(spec 05 §6.5, DESIGN "Serials are a fold").
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from projections.folds.state import CONFLICT, DUPLICATE, HEALTHY, Delivery, Outcome, StreamHead
from projections.reads import cache as cache_reads
from projections.reads import history as history_reads
from projections.reads import presence as presence_reads
from projections.reads import recovery as recovery_reads
from projections.store import keys
from projections.store.rocks import Stall
from sockudo import metrics
from sockudo.channels import ChannelPolicy, resolve_channel_policy
from sockudo.config import AppConfig, Settings
from sockudo.errors import Backpressure, IdempotencyConflict
from sockudo.events import codec
from sockudo.events.catalog import ChannelTopicEvent
from sockudo.events.channel import (
    Flags,
    HistoryPurged,
    HistoryReset,
    IdempotencyClaim,
    MessagePublished,
    Origin,
    Retention,
)
from sockudo.events.users import UserConnectionsTerminated
from sockudo.ids import random_uuid
from sockudo.log.partitioning import channel_key
from sockudo.node.runtime import Runtime

_Page = TypeVar("_Page")
"""A history page as a read renders it (a dict, or the JSON body)."""


@dataclass(frozen=True, slots=True)
class PublishRequest:
    """One validated message to append to one or more channels (the edge built it)."""

    name: str
    data: str
    data_is_json: bool
    channels: tuple[str, ...]
    socket_id: str | None = None
    idempotency_key: str | None = None
    idempotency_ns: str = "e"
    fingerprint: str | None = None
    extras_json: str | None = None
    tags: dict[str, str] | None = None
    message_id: str | None = None
    client_event: bool = False
    user_id: str | None = None


REWIND_SCAN_FACTOR = 16
"""Rewind scans at most this many times ``max_page_size`` stored rows (spec 02 §5.6)."""


class ChannelService:
    """Publishes channel events and reads channel projections for one node."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.settings: Settings = runtime.settings
        self._appended_end: dict[int, int] = {}

    # --- publish ----------------------------------------------------------------------------

    def lag(self) -> int:
        """Records this node appended that its fold has not applied yet (a cheap local bound)."""
        runner = self.runtime.runner
        if runner is None:
            return 0
        return sum(max(0, end - runner.position(p)) for p, end in self._appended_end.items())

    async def publish(self, app: AppConfig, req: PublishRequest) -> dict[str, Outcome]:
        """Append one record per channel, wait for the fold, return the outcome per channel."""
        return (await self.publish_many(app, (req,)))[0]

    async def publish_many(
        self, app: AppConfig, reqs: Sequence[PublishRequest]
    ) -> list[dict[str, Outcome]]:
        """:meth:`publish` of several requests at once, their records appended in order.

        Every record goes into the log's group commit before any is awaited (tasks start in
        creation order and an append queues its record before its first await), so records of
        one channel keep the order of ``reqs`` while all of them share fsyncs and fold batches.
        """
        if self.lag() > self.settings.projection_max_lag_records:
            raise Backpressure("projection lags behind the log")
        prepared = [self._prepare(app, req) for req in reqs]
        events = [e for _claim, evs in prepared for e in evs]
        if len(events) == 1:  # nearly every publish: no task per record
            outcomes = [await self.append_and_wait(events[0])]
        else:
            outcomes = list(await asyncio.gather(*(self.append_and_wait(e) for e in events)))
        results: list[dict[str, Outcome]] = []
        at = 0
        for claim, evs in prepared:
            result = {e.channel: o for e, o in zip(evs, outcomes[at : at + len(evs)], strict=True)}
            at += len(evs)
            if any(o.kind == CONFLICT for o in result.values()):
                raise IdempotencyConflict(
                    "idempotency key was already used with a different payload"
                )
            if claim is not None:
                metrics.idempotent_publish(app.id)
                if any(o.kind == DUPLICATE for o in result.values()):
                    metrics.idempotency_duplicate(app.id)
            results.append(result)
        return results

    def _prepare(
        self, app: AppConfig, req: PublishRequest
    ) -> tuple[IdempotencyClaim | None, list[MessagePublished]]:
        """The idempotency claim of ``req`` (checked app-wide) and its record per channel."""
        claim = self._claim(app, req)
        if claim is not None:
            self._check_app_wide_conflict(app, claim)
        # extras.ephemeral: live delivery only, no serial, no history row (spec 02 §4.1).
        ephemeral = (
            req.extras_json is not None and json.loads(req.extras_json).get("ephemeral") is True
        )
        origin = Origin(
            node=self.runtime.incarnation,
            socket_id=req.socket_id,
            user_id=req.user_id,
            request_id=random_uuid(),
        )
        events = [
            MessagePublished(
                event_id=random_uuid(),
                app_id=app.id,
                channel=channel,
                origin=origin,
                # One message per channel: clients dedupe by message_id across all their
                # channels, so only a publisher-supplied id is shared (spec 02 §4.1).
                message_id=req.message_id or random_uuid(),
                name=req.name,
                data=req.data,
                data_is_json=req.data_is_json,
                extras_json=req.extras_json,
                tags=req.tags,
                flags=message_flags(policy, ephemeral=ephemeral),
                retention=message_retention(policy),
                idempotency=claim,
                client_event=req.client_event,
            )
            for channel in req.channels
            for policy in (resolve_channel_policy(channel, app, self.settings),)
        ]
        return claim, events

    async def append_and_wait(self, event: ChannelTopicEvent) -> Outcome:
        """Append ``event`` to its channel's partition and wait for this node's fold of it."""
        runner = self.runtime.runner
        assert runner is not None, "runtime not started"
        partition, offset = await self.append(event)
        return await runner.wait_applied(
            partition, offset, self.settings.fold_wait_timeout_ms / 1000
        )

    async def append(
        self,
        event: ChannelTopicEvent,
        *,
        partition: int | None = None,
        key: bytes | None = None,
    ) -> tuple[int, int]:
        """Append ``event``, by default to its channel's partition; ``(partition, offset)``.

        Partition markers (``node.dead``) name their partition and key explicitly.
        """
        runtime = self.runtime
        if partition is None or key is None:
            app_id = getattr(event, "app_id")  # noqa: B009 - channel-scoped events have one
            channel = getattr(event, "channel")  # noqa: B009
            key = key or channel_key(app_id, channel)
            if partition is None:
                partition = runtime.partition_of(app_id, channel)
        encoded = codec.encode(event)
        headers = (
            *encoded.headers,
            ("sk.node", runtime.incarnation.encode()),
        )
        # LogUnavailable / AppendOutcomeUnknown / RecordTooLarge propagate to the edge.
        res = await runtime.log.append(
            runtime.topic,
            partition,
            key,
            encoded.value,
            headers,
            timeout_ms=self.settings.ack_timeout_ms,
        )
        self._appended_end[partition] = max(self._appended_end.get(partition, 0), res.offset + 1)
        return partition, res.offset

    def _claim(self, app: AppConfig, req: PublishRequest) -> IdempotencyClaim | None:
        if req.idempotency_key is None or not app_idempotency_enabled(app, self.settings):
            return None
        return IdempotencyClaim(
            ns=req.idempotency_ns,
            key=req.idempotency_key,
            fingerprint=req.fingerprint or "",
            ttl_ms=app_idempotency_ttl_s(app, self.settings) * 1000,
        )

    def check_idempotency(self, app: AppConfig, req: PublishRequest) -> None:
        """Raise :class:`IdempotencyConflict` if ``req``'s key is live with other content."""
        claim = self._claim(app, req)
        if claim is not None:
            self._check_app_wide_conflict(app, claim)

    def _check_app_wide_conflict(self, app: AppConfig, claim: IdempotencyClaim) -> None:
        """Keys are app-scoped: a live entry with another fingerprint anywhere is a conflict."""
        store = self.runtime.store
        assert store is not None
        prefix = keys.idem_prefix(app.id, claim.ns, claim.key)
        now_ms = int(time.time() * 1000)
        for _key, raw in store.scan(keys.IDEM, prefix, keys.prefix_end(prefix)):
            entry = json.loads(raw)
            if entry["x"] > now_ms and entry["f"] != claim.fingerprint:
                raise IdempotencyConflict(
                    "idempotency key was already used with a different payload"
                )

    # --- reads ------------------------------------------------------------------------------

    def history_page(
        self, app: AppConfig, channel: str, query: history_reads.HistoryQuery
    ) -> dict[str, Any]:
        return self._history(history_reads.read_page, app, channel, query)

    def history_page_json(
        self, app: AppConfig, channel: str, query: history_reads.HistoryQuery
    ) -> bytes:
        """:meth:`history_page` as the JSON body of ``GET …/history``, rendered from the rows."""
        return self._history(history_reads.read_page_json, app, channel, query)

    def _history(
        self,
        read: Callable[..., _Page],
        app: AppConfig,
        channel: str,
        query: history_reads.HistoryQuery,
    ) -> _Page:
        store = self.runtime.store
        assert store is not None
        return read(
            store,
            app.id,
            channel,
            query,
            stall=self.stall(app.id, channel),
            node_id=self.settings.node_id,
        )

    def history_read(
        self, app: AppConfig, channel: str, query: history_reads.HistoryQuery
    ) -> Callable[[], dict[str, Any]]:
        """:meth:`history_page` as of now, computed later by the returned call on any thread.

        Call this on the event loop, which the fold writes from: the stall and a pinned view
        of the stream heads and history rows are taken here, so the page shows exactly the
        batch committed now however many the fold writes while a worker thread reads it.
        """
        store = self.runtime.store
        assert store is not None
        view = store.pin((keys.STREAMS, keys.HISTORY))
        stall = self.stall(app.id, channel)
        node_id = self.settings.node_id

        def read() -> dict[str, Any]:
            try:
                return history_reads.read_page(
                    view, app.id, channel, query, stall=stall, node_id=node_id
                )
            finally:
                view.close()

        return read

    def history_state(self, app: AppConfig, channel: str) -> dict[str, Any]:
        store = self.runtime.store
        assert store is not None
        return {
            "channel": channel,
            "stream": history_reads.stream_summary(
                store, app.id, channel, self.stall(app.id, channel), self.settings.node_id
            ),
        }

    def attach_position(self, app: AppConfig, channel: str) -> tuple[str | None, int, int | None]:
        """``(stream_id, delivery head, history head)`` of ``channel`` as folded now.

        The history head is ``None`` when history is off for the app (spec 02 §5.3).
        """
        store = self.runtime.store
        assert store is not None
        raw = store.get(keys.STREAMS, keys.channel_prefix(app.id, channel))
        history = resolve_channel_policy(channel, app, self.settings).history_enabled
        if raw is None:
            return None, 0, 0 if history else None
        head = StreamHead.decode(raw)
        return head.stream_id, head.next_d - 1, head.next_h - 1 if history else None

    def presence_members(self, app: AppConfig, channel: str) -> list[presence_reads.Member]:
        """Current members of a presence channel across the cluster (the presence projection)."""
        store = self.runtime.store
        assert store is not None
        return presence_reads.members(store, app.id, channel)

    def presence_channels(self, app: AppConfig, prefix: str = "") -> dict[str, int]:
        """Presence channels with members anywhere in the cluster → their user counts."""
        store = self.runtime.store
        assert store is not None
        return presence_reads.occupied_channels(store, app.id, prefix)

    def presence_user_count(self, app: AppConfig, channel: str) -> int:
        store = self.runtime.store
        assert store is not None
        return presence_reads.user_count(store, app.id, channel)

    async def terminate_user(self, app: AppConfig, user_id: str, *, reconnect: bool) -> None:
        """Close every socket of ``user_id`` on every node (4009, or 4200 when ``reconnect``).

        One ``user.terminate`` record: every node folds it and closes its own sockets of the
        user; this returns once this node has.
        """
        await self.append_and_wait(
            UserConnectionsTerminated(
                event_id=random_uuid(),
                app_id=app.id,
                user_id=user_id,
                origin=Origin(node=self.runtime.incarnation, request_id=random_uuid()),
                reconnect=reconnect,
            )
        )

    def cached_event(self, app: AppConfig, channel: str) -> cache_reads.CachedFrame | None:
        """The last HTTP publish of a cache channel while within its TTL (spec 01 §3.9)."""
        store = self.runtime.store
        assert store is not None
        return cache_reads.cached(store, app.id, channel, int(time.time() * 1000))

    def stream_healthy(self, app: AppConfig, channel: str) -> bool:
        """The channel's stream is healthy and this node's fold of it is not stalled."""
        store = self.runtime.store
        assert store is not None
        head = history_reads.read_head(store, app.id, channel)
        healthy = head is None or head.durable_state == HEALTHY
        return healthy and self.stall(app.id, channel) is None

    def recover(
        self,
        app: AppConfig,
        channel: str,
        position: recovery_reads.Position,
        *,
        hot: Sequence[Delivery],
        upto: int,
        max_buffer: int,
    ) -> recovery_reads.Recovered | recovery_reads.Failed:
        """Spec 02 §7.3 for one channel: the replay, or why there is none."""
        store = self.runtime.store
        assert store is not None
        return recovery_reads.evaluate(
            store,
            app.id,
            channel,
            position,
            hot=hot,
            upto=upto,
            max_buffer=max_buffer,
            history_enabled=resolve_channel_policy(channel, app, self.settings).history_enabled,
            stalled=self.stall(app.id, channel) is not None,
        )

    def newest_messages(
        self,
        app: AppConfig,
        channel: str,
        *,
        limit: int,
        since_ms: int | None,
        accept: Callable[[Delivery], bool] | None,
    ) -> recovery_reads.Newest:
        """Rewind's selection: newest matching stored messages, scanning a bounded window."""
        store = self.runtime.store
        assert store is not None
        return recovery_reads.newest_messages(
            store,
            app.id,
            channel,
            limit=limit,
            since_ms=since_ms,
            scan_limit=REWIND_SCAN_FACTOR * self.settings.history_max_page_size,
            accept=accept,
        )

    def stall(self, app_id: str, channel: str) -> Stall | None:
        """This node's stall of the channel's partition, if its fold stopped there."""
        runner = self.runtime.runner
        if runner is None:
            return None
        return runner.projector.state[self.runtime.partition_of(app_id, channel)].stall

    def stalled_partitions(self) -> Sequence[int]:
        runner = self.runtime.runner
        return sorted(runner.projector.stalled()) if runner else []


def message_flags(policy: ChannelPolicy, *, ephemeral: bool = False) -> Flags:
    """What the fold must do with a message on a channel of this policy (spec 05 §6.1)."""
    return Flags(persist=policy.history_enabled and not ephemeral, ephemeral=ephemeral)


def message_retention(policy: ChannelPolicy) -> Retention:
    """History retention of a channel: namespace, then app, then global (spec 03 §1.1)."""
    return Retention(
        window_s=policy.retention_window_seconds,
        max_count=policy.max_messages_per_channel,
        max_bytes=policy.max_bytes_per_channel,
    )


def presence_policy(policy: ChannelPolicy) -> tuple[Flags, Retention]:
    return Flags(presence_history=policy.presence_history_enabled), Retention(
        window_s=policy.presence_retention_window_seconds,
        max_count=policy.presence_max_events_per_channel,
        max_bytes=policy.presence_max_bytes_per_channel,
    )


def app_history_enabled(app: AppConfig, settings: Settings) -> bool:
    override = app.history_enabled
    return settings.history_enabled if override is None else override


def app_idempotency_enabled(app: AppConfig, settings: Settings) -> bool:
    override = app.idempotency_enabled
    return settings.idempotency_enabled if override is None else override


def app_idempotency_ttl_s(app: AppConfig, settings: Settings) -> int:
    override = app.idempotency_ttl_seconds
    return settings.idempotency_ttl_seconds if override is None else override


class StreamControl:
    """Operator actions on a channel's stream: reset and purge, each one event in the log."""

    def __init__(self, channels: ChannelService) -> None:
        self._channels = channels

    def _origin(self) -> Origin:
        return Origin(node=self._channels.runtime.incarnation, request_id=random_uuid())

    async def reset(
        self, app: AppConfig, channel: str, reason: str, requested_by: str | None
    ) -> Outcome:
        return await self._channels.append_and_wait(
            HistoryReset(
                event_id=random_uuid(),
                app_id=app.id,
                channel=channel,
                origin=self._origin(),
                new_stream_id=random_uuid(),
                reason=reason,
                requested_by=requested_by,
            )
        )

    async def purge(
        self,
        app: AppConfig,
        channel: str,
        *,
        mode: str,
        before_serial: int | None,
        before_time_ms: int | None,
        reason: str,
        requested_by: str | None,
    ) -> Outcome:
        return await self._channels.append_and_wait(
            HistoryPurged(
                event_id=random_uuid(),
                app_id=app.id,
                channel=channel,
                origin=self._origin(),
                mode=mode,
                before_serial=before_serial,
                before_time_ms=before_time_ms,
                reason=reason,
                requested_by=requested_by,
            )
        )
