"""V2 stream positions on one socket: attach, rewind, resume and history over the WebSocket.

Every function here but :func:`history` is synchronous on purpose. It reads the committed
projection and enqueues frames without yielding to the event loop, so no live delivery can
interleave: the replay of a resume or rewind and the ``subscription_succeeded`` of an attach sit
exactly at the log position the projection shows, and later messages reach the socket through
fanout, after them (spec 02 §5.3, §7.5 — the "held" live messages of the spec are simply not
delivered yet). A history page carries no stream position, so it is answered in its own time:
its inputs are taken synchronously, its rows are read in a worker thread.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from projections.reads import history as history_reads
from projections.reads import recovery
from projections.reads.history import HistoryQuery
from sockudo import metrics
from sockudo.channels import is_v2_only_target
from sockudo.errors import ApiError, StreamNotHealthy
from sockudo.node.replay import MAX_BUFFER_SIZE
from sockudo.ws import v1
from sockudo.ws.egress import REPLAY_FRAMES
from sockudo.ws.predicates import MessageView
from sockudo.ws.session import RESUME_PENDING_TTL_S, Rewind, not_attached

if TYPE_CHECKING:  # effects.py imports this module
    from sockudo.ws.effects import SocketEnv

log = logging.getLogger(__name__)


def attach(
    env: SocketEnv, channel: str, data: dict[str, Any] | None, rewind: Rewind | None
) -> None:
    """Success frame at the current position, then a pending resume or the rewind."""
    with env.outbox.batch():  # the success frame and a replay: one write
        _attach(env, channel, data, rewind)


def _attach(
    env: SocketEnv, channel: str, data: dict[str, Any] | None, rewind: Rewind | None
) -> None:
    services = env.connections.channels
    stream_id, head, attach_serial = services.attach_position(env.app, channel)
    if rewind is not None and not services.stream_healthy(env.app, channel):
        # Fail closed before anything is delivered (spec 02 §5.2): undo the join.
        env.hub.unsubscribe(env.session.socket_id, channel)
        env.session.channels.discard(channel)
        env.outbox.offer(
            env.outbox.egress.error(v1.CHANNEL_ERROR, "Channel history is not available", channel)
        )
        return
    if attach_serial is not None:
        data = {**(data or {}), "attach_serial": attach_serial}
    egress = env.outbox.egress
    env.outbox.offer(egress.subscription_succeeded(channel, data, stream_id, head))
    if egress.protocol != 2:
        return
    env.session.attached[channel] = (head, attach_serial)
    resumed = False
    pending = env.session.pending.pop(channel, None)
    if pending is not None:
        position, deadline = pending
        if time.monotonic() < deadline:
            result = _evaluate(env, channel, position, upto=head)
            resumed = isinstance(result, recovery.Recovered)
            summary = _send_result(env, channel, result)
            env.outbox.offer(egress.resume_success(_aggregate([summary], [])))
        else:
            env.outbox.offer(egress.resume_failed(channel, not_attached(channel)))
    if rewind is not None:
        if resumed:
            env.outbox.offer(
                egress.system(
                    "rewind_complete",
                    channel,
                    {
                        "historical_count": 0,
                        "live_count": 0,
                        "complete": True,
                        "truncated_by_retention": False,
                        "truncated_by_limit": False,
                        "superseded_by_resume": True,
                    },
                )
            )
        else:
            _rewind(env, channel, rewind)


def resume(env: SocketEnv, positions: dict[str, recovery.Position]) -> None:
    """Replay attached channels now; park the others until they are subscribed (§7.5, §7.6)."""
    with env.outbox.batch():  # every replayed frame and resume_success: one write
        _resume(env, positions)


def _resume(env: SocketEnv, positions: dict[str, recovery.Position]) -> None:
    summaries: list[tuple[str, dict[str, Any]]] = []
    pending: list[str] = []
    deadline = time.monotonic() + RESUME_PENDING_TTL_S
    for channel, position in positions.items():
        if is_v2_only_target(channel):
            # A wildcard or meta channel has no stream to recover (spec 02 §5.8); its
            # messages were positioned on their concrete channels.
            failure = _no_stream(channel)
            env.outbox.offer(env.outbox.egress.resume_failed(channel, failure))
            summaries.append(("failed", failure))
            continue
        attached = env.session.attached.get(channel)
        if attached is None:
            env.session.pending[channel] = (position, deadline)
            pending.append(channel)
            continue
        result = _evaluate(env, channel, position, upto=attached[0])
        summaries.append(_send_result(env, channel, result))
    env.outbox.offer(env.outbox.egress.resume_success(_aggregate(summaries, pending)))


def _no_stream(channel: str) -> dict[str, Any]:
    return {
        "channel": channel,
        "code": "continuity_unverifiable",
        "reason": "wildcard_or_meta_channel_has_no_stream",
        "expected_stream_id": None,
        "current_stream_id": None,
        "oldest_available_serial": None,
        "newest_available_serial": None,
    }


def _evaluate(
    env: SocketEnv, channel: str, position: recovery.Position, *, upto: int
) -> recovery.Recovered | recovery.Failed:
    return env.connections.channels.recover(
        env.app,
        channel,
        position,
        hot=env.hot.get(env.app.id, channel),
        upto=upto,
        max_buffer=MAX_BUFFER_SIZE,
    )


def _send_result(
    env: SocketEnv, channel: str, result: recovery.Recovered | recovery.Failed
) -> tuple[str, dict[str, Any]]:
    """Send the replay (or the failure); the entry for the aggregate ``resume_success``."""
    egress = env.outbox.egress
    if isinstance(result, recovery.Failed):
        failure = result.as_dict(channel)
        env.outbox.offer(egress.resume_failed(channel, failure))
        return "failed", failure
    predicate = env.session.predicates.get(channel)
    outbox = env.outbox
    direct = outbox.direct
    replayed = nbytes = 0
    for d in result.deliveries:
        if predicate is not None and not predicate.matches(MessageView.of_delivery(d)):
            continue
        # Sockets resuming the same channel replay the same messages: share their encodings.
        frame, wire, size = REPLAY_FRAMES.get(egress, d)
        if not (outbox.offer_wire(wire) if direct else outbox.offer(frame)):
            outbox.request_close(4100, "Over capacity")
            break
        replayed += 1
        nbytes += size
    if direct and replayed:
        metrics.ws_sent(outbox.app_id, nbytes, replayed)  # offer_wire leaves counting to us
    return "recovered", {
        "channel": channel,
        "source": result.source,
        "replayed": replayed,
        "position": {
            "stream_id": result.stream_id,
            "serial": result.head,
            "last_message_id": result.head_message_id,
        },
    }


def _aggregate(summaries: list[tuple[str, dict[str, Any]]], pending: list[str]) -> dict[str, Any]:
    return {
        "recovered": [entry for kind, entry in summaries if kind == "recovered"],
        "failed": [entry for kind, entry in summaries if kind == "failed"],
        "pending": pending,
    }


# --- rewind ---------------------------------------------------------------------------------


def _rewind(env: SocketEnv, channel: str, rewind: Rewind) -> None:
    """Newest matching stored messages, oldest first, then ``rewind_complete`` (§5.6)."""
    services = env.connections.channels
    cap = services.settings.history_max_page_size
    predicate = env.session.predicates.get(channel)
    wanted = min(rewind.count, cap) if rewind.count is not None else cap
    cutoff = int(time.time() * 1000) - rewind.seconds * 1000 if rewind.seconds is not None else None
    newest = services.newest_messages(
        env.app,
        channel,
        limit=wanted,
        since_ms=cutoff,
        accept=None
        if predicate is None
        else lambda d: predicate.matches(MessageView.of_delivery(d)),
    )
    picked, more, head = newest.deliveries, newest.more, newest.head
    for d in picked:
        env.outbox.offer(env.outbox.egress.message(d))
    # A count rewind asked for exactly n: older messages beyond it are not a truncation unless
    # the cap cut n; a seconds rewind is truncated when its window held more than was sent.
    by_limit = more and (rewind.count is None or rewind.count > cap)
    by_retention = False
    if head is not None and head.evicted_through_serial is not None and not more:
        if cutoff is not None:  # retention removed part of the requested window
            by_retention = (head.evicted_through_time_ms or 0) >= cutoff
        else:
            by_retention = len(picked) < wanted
    env.outbox.offer(
        env.outbox.egress.system(
            "rewind_complete",
            channel,
            {
                "historical_count": len(picked),
                "live_count": 0,
                "complete": not (by_limit or by_retention),
                "truncated_by_retention": by_retention,
                "truncated_by_limit": by_limit,
            },
        )
    )


# --- history over the WebSocket ---------------------------------------------------------------


MAX_CONCURRENT_HISTORY = 2
"""``channel_history`` reads one connection may have in flight (spec 02 §8.3)."""


class HistoryReads:
    """The ``channel_history`` reads in flight on one socket, each a task of the event loop.

    A read counts from :meth:`start` until its task has offered its frame (or failed), so
    a request arriving while ``limit`` are counted is refused, never queued.
    """

    # One per connection, and most never read history: no instance dict, no set until a read.
    __slots__ = ("_tasks", "closed", "limit")

    def __init__(self, limit: int = MAX_CONCURRENT_HISTORY) -> None:
        self.limit = limit
        self._tasks: set[asyncio.Task[None]] | None = None
        self.closed = False

    def __len__(self) -> int:
        return len(self._tasks) if self._tasks is not None else 0

    def full(self) -> bool:
        return self.closed or len(self) >= self.limit

    def start(self, read: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None] | None:
        """Run ``read`` as a task; ``None`` (and ``read`` closed) when full or closed."""
        if self.full():
            read.close()
            return None
        task = asyncio.create_task(self._counted(read), name=name)
        if self._tasks is None:
            self._tasks = set()
        self._tasks.add(task)
        task.add_done_callback(lambda done: self._done(done, read))
        return task

    def _done(self, task: asyncio.Task[None], read: Coroutine[Any, Any, None]) -> None:
        # A task cancelled before its first step never ran ``_counted``: uncount it, and close
        # the read it never awaited (a no-op for one that ran).
        if self._tasks is not None:
            self._tasks.discard(task)
        read.close()

    async def _counted(self, read: Coroutine[Any, Any, None]) -> None:
        try:
            await read
        finally:
            task = asyncio.current_task()
            if task is not None and self._tasks is not None:
                self._tasks.discard(task)  # now, not a loop iteration later

    async def close(self) -> None:
        """The socket is gone: cancel what is in flight and wait until it has stopped.

        A page already being computed in a worker thread finishes there and is dropped; one
        still queued for a thread never runs.
        """
        self.closed = True
        tasks = list(self._tasks or ())
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)


_READ_THREADS = 4
"""Worker threads reading history pages for every socket of this node (GIL-bound work: more
threads only take more turns from the event loop)."""
_executor: ThreadPoolExecutor | None = None


def _reads_executor() -> ThreadPoolExecutor:
    global _executor
    if _executor is None:
        _executor = ThreadPoolExecutor(_READ_THREADS, thread_name_prefix="ws-history")
    return _executor


def history(env: SocketEnv, channel: str, request: dict[str, Any]) -> None:
    """Start one ``sockudo:channel_history`` page (spec 02 §8); its frame follows later.

    Everything that depends on the socket's state or the fold's position is taken now, on the
    loop: the concurrency check, the query with its ``until_attach`` bound, the attach serial
    and a pinned view of the projection. The page is read in a worker thread and its frame
    offered back on the loop, so the read loop keeps reading frames meanwhile.
    """
    egress = env.outbox.egress
    if env.history.full():
        env.outbox.offer(
            egress.error(v1.CLIENT_EVENT_ERROR, "Too many concurrent history requests", channel)
        )
        return
    services = env.connections.channels
    try:
        query, until_attach = _query(env, channel, request, services.settings)
    except _Invalid as exc:
        env.outbox.offer(egress.error(v1.MALFORMED, str(exc), channel))
        return
    read = services.history_read(env.app, channel, query)
    attach_serial = env.session.attached.get(channel, (0, None))[1]
    extra: dict[str, Any] = {}
    request_id = request.get("request_id")
    if isinstance(request_id, str):
        extra["request_id"] = request_id
    env.history.start(
        _read_page(env, channel, read, until_attach, attach_serial, extra),
        name=f"ws-history:{env.session.socket_id}",
    )


async def _read_page(
    env: SocketEnv,
    channel: str,
    read: Callable[[], dict[str, Any]],
    until_attach: bool,
    attach_serial: int | None,
    extra: dict[str, Any],
) -> None:
    egress = env.outbox.egress
    try:
        page = await asyncio.get_running_loop().run_in_executor(_reads_executor(), read)
    except ApiError as exc:
        env.outbox.offer(egress.error(v1.MALFORMED, exc.message, channel))
        return
    except StreamNotHealthy:
        env.outbox.offer(egress.error(v1.CHANNEL_ERROR, "History stream is not healthy", channel))
        return
    except Exception:
        log.exception("history read of %s on %s failed", env.session.socket_id, channel)
        env.outbox.offer(egress.error(4100, "Service temporarily unavailable, try again", channel))
        return
    page["bounds"] = {
        **page["bounds"],
        "until_attach": until_attach,
        "attach_serial": attach_serial,
    }
    page.update(extra)
    # Back on the loop: a closed socket's outbox refuses the frame.
    env.outbox.offer(egress.system("channel_history", channel, page))


class _Invalid(ValueError):
    pass


def _query(
    env: SocketEnv, channel: str, r: dict[str, Any], settings: Any
) -> tuple[HistoryQuery, bool]:
    limit_raw = r.get("limit", 100)
    limit = limit_raw if isinstance(limit_raw, int) and not isinstance(limit_raw, bool) else 100
    if limit == 0:
        raise _Invalid("limit must be positive")
    if limit < 0:
        raise _Invalid("limit must be positive")
    limit = min(limit, 1000, settings.history_max_page_size)
    direction_raw = r.get("direction", "newest_first")
    direction = (
        history_reads.DIRECTIONS.get(direction_raw) if isinstance(direction_raw, str) else None
    )
    if direction is None:
        raise _Invalid(f"unknown direction {direction_raw!r}")

    def bound(*names: str) -> int | None:
        for name in names:
            value = r.get(name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise _Invalid(f"{name} must be a non-negative integer")
            if value > history_reads.MAX_BOUND:
                raise _Invalid(f"{name} must be at most {history_reads.MAX_BOUND}")
            return value
        return None

    end_serial = bound("end_serial", "end")
    until = r.get("until_attach", r.get("untilAttach", False))
    until_attach = until is True
    if until_attach:
        attached = env.session.attached.get(channel)
        if attached is None or attached[1] is None:
            raise _Invalid("no attach serial recorded for this channel")
        end_serial = attached[1] if end_serial is None else min(end_serial, attached[1])
    cursor = r.get("cursor")
    if cursor is not None and not isinstance(cursor, str):
        raise _Invalid("cursor must be a string")
    return (
        HistoryQuery(
            limit=limit,
            direction=direction,
            cursor=cursor,
            start_serial=bound("start_serial", "start"),
            end_serial=end_serial,
            start_time_ms=bound("start_time_ms"),
            end_time_ms=bound("end_time_ms"),
        ),
        until_attach,
    )
