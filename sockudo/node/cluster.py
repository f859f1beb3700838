"""Cluster liveness of one node: heartbeats, the cleaner and self-fencing (spec 05 §9.3).

Three loops, started after the fold caught up and before the node serves sockets (so every
incarnation heartbeats before it can hold a presence connection) and stopped with it:

- **heartbeat**: every ``cluster.heartbeat_interval_ms`` append a ``node.heartbeat`` of this
  incarnation (its socket count and per-channel subscriber counts) to ``{prefix}.nodes``.
- **watch**: read ``nodes`` from ``2 * node_timeout_ms`` ago and feed :class:`Membership`
  (heartbeats, ``node.stopping``, ``node.dead`` summaries), judged by this node's clock.
- **cleaner**: when this incarnation is the live one with the smallest id, declare every
  expired peer dead: ``node.dead`` to every ``channel-events`` partition (the presence fold
  removes its connections with cause ``orphan_cleanup`` and fences its later joins), then the
  summary to ``nodes``. It also declares incarnations that still hold presence connections in
  the projection but have not heartbeated for a whole ``node_timeout_ms`` (a node that died
  while nobody watched, say the whole cluster restarting). It acts only while its own view is
  fresh (its own latest heartbeat came back within ``node_timeout_ms / 2``): a lagging reader
  must not declare a live cluster dead. It never declares its own incarnation.

**Self-fencing.** A node whose incarnation was declared dead (it folded ``node.dead`` naming it,
or read the summary), or that could not append a heartbeat for ``node_timeout_ms / 2`` (a long
pause, SIGSTOP, a partition from the log), may already have lost its presence members on other
nodes. It restarts *in process* under a new incarnation: ``runtime.incarnation`` changes, so
every later join, leave and heartbeat carries the new id; every WebSocket is closed with 4200
(Pusher's "reconnect now"), so clients come back and re-join presence under the new
incarnation; and ``node.stopping`` is appended for the old incarnation so the cleaner (maybe
this node) declares it dead at once, removing whatever connections of it the log still holds.
Leaves appended by the closing sockets carry the new incarnation and are ignored by the fold;
the old incarnation's members go with its ``node.dead`` (cause ``orphan_cleanup``).

**Graceful stop.** The node first closes its sockets (their leaves are appended, cause
``disconnect``), then :meth:`ClusterService.stop` appends ``node.stopping``; the cleaner then
declares the incarnation dead without waiting for the timeout.

One node alone (the embedded log) heartbeats to itself: it is always its own cleaner and
never declares itself dead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from projections.store import keys
from projections.store.rocks import ProjectionStore
from sockudo.errors import CodecError, LogError, OffsetOutOfRange, SockudoError
from sockudo.events import codec
from sockudo.events.nodes import NodeHeartbeat, NodeStopping
from sockudo.events.presence import NodeDeclaredDead
from sockudo.ids import random_uuid
from sockudo.log.base import LogReader
from sockudo.node.connections import ConnectionService
from sockudo.node.hub import Hub
from sockudo.node.membership import Membership
from sockudo.node.runtime import Runtime, new_incarnation
from sockudo.node.topics import NODES, topic_name

log = logging.getLogger(__name__)

FENCE_CLOSE_CODE = 4200
FENCE_CLOSE_REASON = "Node restarting, reconnect"
MAX_HEARTBEAT_CHANNELS = 2000
"""Per-channel counts a heartbeat carries at most (a record stays far below 1 MiB)."""
_NODES_RETENTION_S = 3600.0
"""``nodes`` keeps an hour (topics.py); peers dead for longer are forgotten."""


def incarnations_holding_connections(store: ProjectionStore, partitions: int) -> set[str]:
    """Incarnations with presence connections in the projection (a skip scan of ``by_node``)."""
    found: set[str] = set()
    for p in range(partitions):
        start, end = keys.u32(p), keys.prefix_end(keys.u32(p))
        while True:
            first = next(iter(store.scan(keys.BY_NODE, start, end)), None)
            if first is None:
                break
            incarnation = first[0][4:].split(b"\x00", 1)[0].decode()
            found.add(incarnation)
            start = keys.prefix_end(keys.by_node_prefix(p, incarnation))
    return found


def started_at_ms(incarnation: str) -> int | None:
    """The ``start_ms`` of ``{node_id}/{start_ms}-{hex}`` (``None`` if it has another form)."""
    start = incarnation.rsplit("/", 1)[-1].split("-", 1)[0]
    return int(start) if start.isdigit() else None


class ClusterService:
    """Heartbeats, membership, the cleaner and self-fencing of one node."""

    def __init__(
        self,
        runtime: Runtime,
        connections: ConnectionService,
        hub: Hub,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        settings = runtime.settings
        self.runtime = runtime
        self.connections = connections
        self.hub = hub
        self.topic = topic_name(settings.topic_prefix, NODES)
        self.interval_s = settings.heartbeat_interval_ms / 1000
        self.timeout_s = settings.node_timeout_ms / 1000
        # Spec: fence after node_timeout_ms / 2 without a heartbeat. A configuration whose
        # interval leaves no room for that would fence on every tick, so never below 1.5 beats.
        self.fence_after_s = max(self.timeout_s / 2, 1.5 * self.interval_s)
        self.membership = Membership(
            runtime.incarnation, self.timeout_s, fresh_s=self.fence_after_s
        )
        self.fences = 0
        """How many times this process fenced itself (new incarnations)."""
        self._clock = clock
        self._wall = wall_clock
        self._started_at = 0.0
        self._last_ok: float | None = None
        self._reader: LogReader | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._orphans_since: dict[str, float] = {}
        self._declaring: set[str] = set()
        if self.interval_s * 2 > self.timeout_s:
            log.warning(
                "cluster.heartbeat_interval_ms %s is more than half of cluster.node_timeout_ms "
                "%s: live nodes may be declared dead",
                settings.heartbeat_interval_ms,
                settings.node_timeout_ms,
            )

    @property
    def incarnation(self) -> str:
        return self.runtime.incarnation

    # --- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the ``nodes`` reader, append the first heartbeat, start the loops."""
        now_ms = int(self._wall() * 1000)
        _log_start, end = await self.runtime.log.bounds(self.topic, 0)
        since = await self.runtime.log.offset_for_time(
            self.topic, 0, now_ms - 2 * int(self.timeout_s * 1000)
        )
        self._reader = self.runtime.log.reader(self.topic, {0: end if since is None else since})
        self._started_at = self._clock()
        self._last_ok = self._started_at
        await self._beat()
        self._spawn(self._forever(self._tick, self.interval_s), "cluster-heartbeat")
        self._spawn(self._forever(self._watch_once, 0.0), "cluster-watch")
        self._spawn(self._forever(self.clean_once, self.interval_s), "cluster-cleaner")
        log.info(
            "cluster: %s heartbeats every %.3fs to %s (node timeout %.3fs)",
            self.incarnation,
            self.interval_s,
            self.topic,
            self.timeout_s,
        )

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        self._tasks.append(asyncio.create_task(coro, name=name))

    async def _forever(self, step: Callable[[], Awaitable[object]], pause_s: float) -> None:
        """Run ``step`` every ``pause_s`` until cancelled; a failed step is logged, not fatal."""
        while True:
            await asyncio.sleep(pause_s)
            try:
                await step()
            except SockudoError as exc:
                log.warning("cluster %s: %s; retrying", getattr(step, "__name__", step), exc)
            except Exception:
                log.exception("cluster %s failed; retrying", getattr(step, "__name__", step))

    async def stop(self, *, announce: bool = True) -> None:
        """Stop the loops; with ``announce`` append ``node.stopping`` (after the leaves)."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        if announce:
            try:
                await self._append_stopping(self.incarnation)
            except LogError as exc:
                log.warning("could not announce node.stopping: %s", exc)
        if self._reader is not None:
            await self._reader.close()
            self._reader = None

    # --- heartbeats and self-fencing ---------------------------------------------------------

    async def _tick(self) -> None:
        await self.check_fenced()
        await self._beat()

    async def _beat(self) -> None:
        incarnation = self.incarnation
        started = started_at_ms(incarnation) or int(self._wall() * 1000)
        heartbeat = NodeHeartbeat(
            event_id=random_uuid(),
            incarnation=incarnation,
            node_id=self.runtime.settings.node_id,
            started_at_ms=started,
            sent_at_ms=int(self._wall() * 1000),
            connections=self.hub.connection_count(),
            subscriptions=self._subscriptions(),
        )
        try:
            await self._append(heartbeat, incarnation, timeout_s=self.fence_after_s)
        except LogError as exc:
            log.warning("heartbeat of %s failed: %s", incarnation, exc)
            return
        if incarnation == self.incarnation:
            self._last_ok = self._clock()
        # The log answers again: presence leaves it refused meanwhile go now.
        await self.connections.pay_owed_leaves()

    def _subscriptions(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for app_id in self.hub.counts_per_app():
            for channel, count in self.hub.channels(app_id).items():
                if len(out) >= MAX_HEARTBEAT_CHANNELS:
                    return out
                out[f"{app_id}\x00{channel}"] = count
        return out

    def remote_subscriptions(self, app_id: str) -> dict[str, int]:
        """Other live nodes' subscribers per channel of ``app_id`` (from their heartbeats)."""
        return self.membership.subscriptions(app_id, self._clock())

    def remote_subscription_count(self, app_id: str, channel: str) -> int:
        """Other live nodes' subscribers of one channel (a lookup per peer, not a scan)."""
        return self.membership.subscription_count(app_id, channel, self._clock())

    async def check_fenced(self) -> None:
        """Fence when this incarnation was declared dead or could not heartbeat in time."""
        incarnation = self.incarnation
        if self._folded_own_death(incarnation):
            await self.fence(incarnation, "its node.dead was folded")
        elif (
            self.runtime.log.shared
            and self._last_ok is not None
            and self._clock() - self._last_ok > self.fence_after_s
        ):
            # Only on a shared log can another node have declared this one dead meanwhile:
            # a lone node (the embedded log) that stalled for a while has nothing to fence.
            gap = self._clock() - self._last_ok
            await self.fence(incarnation, f"no heartbeat appended for {gap:.1f}s")

    def _folded_own_death(self, incarnation: str) -> bool:
        store = self.runtime.store
        if store is None:
            return False
        return any(
            store.get(keys.DEAD_NODES, keys.dead_node_key(p, incarnation)) is not None
            for p in range(self.runtime.partitions)
        )

    async def fence(self, incarnation: str, reason: str) -> None:
        """Restart this node under a new incarnation (no-op if ``incarnation`` is not current)."""
        if incarnation != self.incarnation:
            return
        fresh = new_incarnation(self.runtime.settings.node_id)
        self.runtime.incarnation = fresh
        self.membership.renamed(fresh, self._clock())
        self._last_ok = None  # the new incarnation has not heartbeated yet
        self.fences += 1
        closed = self.hub.close_all(FENCE_CLOSE_CODE, FENCE_CLOSE_REASON)
        log.warning(
            "cluster: fencing %s (%s): closed %s socket(s) with %s, continuing as %s",
            incarnation,
            reason,
            closed,
            FENCE_CLOSE_CODE,
            fresh,
        )
        try:
            await self._append_stopping(incarnation)
        except LogError as exc:
            log.warning("could not announce node.stopping of %s: %s", incarnation, exc)
        await self._beat()

    # --- watching the nodes topic ------------------------------------------------------------

    async def _watch_once(self) -> None:
        reader = self._reader
        assert reader is not None
        try:
            records = await reader.poll(500, int(self.interval_s * 1000))
        except OffsetOutOfRange as exc:
            # Retention passed us by (a long pause): what is left is what matters.
            await reader.seek(0, exc.log_start)
            return
        except LogError as exc:
            log.warning("reading %s failed: %s; retrying", self.topic, exc)
            await asyncio.sleep(self.interval_s)
            return
        now = self._clock()
        for record in records:
            if record.value is None:
                continue
            try:
                event = codec.decode(record.headers, record.value)
            except CodecError as exc:
                # Liveness records only, never folded: an unreadable one is skipped.
                log.warning("skipping %s@%s: %s", self.topic, record.offset, exc)
                continue
            await self._observe(event, record.timestamp_ms, now)
        self.membership.prune(now, _NODES_RETENTION_S)

    async def _observe(self, event: object, log_ms: int, now: float) -> None:
        m = self.membership
        if isinstance(event, NodeHeartbeat):
            m.heartbeat(
                event.incarnation,
                event.node_id,
                log_ms,
                now,
                connections=event.connections,
                subscriptions=event.subscriptions,
            )
        elif isinstance(event, NodeStopping):
            m.stopping(event.incarnation, now)
        elif isinstance(event, NodeDeclaredDead) and m.dead(event.incarnation, now):
            await self.fence(event.incarnation, f"declared dead by {event.declared_by}")

    # --- the cleaner -------------------------------------------------------------------------

    async def clean_once(self) -> list[str]:
        """One cleaner pass; the incarnations it declared dead."""
        now = self._clock()
        m = self.membership
        if not m.view_fresh(now) or m.cleaner(now) != self.incarnation:
            self._orphans_since.clear()
            return []
        declared = []
        for peer in m.expired(now):
            await self.declare_dead(peer.incarnation, peer.last_heartbeat_ms)
            declared.append(peer.incarnation)
        for incarnation in self._orphans(now):
            known = m.peers.get(incarnation)
            await self.declare_dead(incarnation, known.last_heartbeat_ms if known else 0)
            declared.append(incarnation)
        return declared

    def _orphans(self, now: float) -> list[str]:
        """Incarnations holding connections that stayed silent for a whole node timeout."""
        store = self.runtime.store
        if store is None or now - self._started_at < self.timeout_s:
            return []  # give every live node one timeout to be heard first
        m = self.membership
        live = set(m.live(now))
        holding = incarnations_holding_connections(store, self.runtime.partitions) - live
        for gone in set(self._orphans_since) - holding:
            del self._orphans_since[gone]
        due = []
        for incarnation in sorted(holding):
            since = self._orphans_since.setdefault(incarnation, now)
            if now - since >= self.timeout_s:
                due.append(incarnation)
        return due

    async def declare_dead(self, incarnation: str, last_seen_ms: int = 0) -> None:
        """``node.dead`` to every ``channel-events`` partition, then the summary to ``nodes``."""
        if incarnation == self.incarnation or incarnation in self._declaring:
            return
        self._declaring.add(incarnation)
        try:
            summary = await self.connections.declare_dead(incarnation, last_seen_ms=last_seen_ms)
            await self._append(summary, incarnation)
            self.membership.dead(incarnation, self._clock())
            self._orphans_since.pop(incarnation, None)
        finally:
            self._declaring.discard(incarnation)

    # --- appends to the nodes topic ----------------------------------------------------------

    async def _append_stopping(self, incarnation: str) -> None:
        event = NodeStopping(
            event_id=random_uuid(),
            incarnation=incarnation,
            node_id=self.runtime.settings.node_id,
            stopping_at_ms=int(self._wall() * 1000),
        )
        await self._append(event, incarnation)
        self.membership.stopping(incarnation, self._clock())

    async def _append(
        self,
        event: NodeHeartbeat | NodeStopping | NodeDeclaredDead,
        incarnation: str,
        *,
        timeout_s: float | None = None,
    ) -> None:
        settings = self.runtime.settings
        timeout_ms = settings.ack_timeout_ms
        if timeout_s is not None:
            timeout_ms = max(1, min(timeout_ms, int(timeout_s * 1000)))
        encoded = codec.encode(event)
        await self.runtime.log.append(
            self.topic,
            0,
            incarnation.encode(),
            encoded.value,
            (*encoded.headers, ("sk.node", self.incarnation.encode())),
            timeout_ms=timeout_ms,
        )
