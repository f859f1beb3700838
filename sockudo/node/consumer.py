"""The fold loop: read the log, fold batches into the projection, wake waiters, hand off fanout.

One task per topic, one reader over all partitions (spec 05 §7.2). After each committed batch
the waiting publishers are resolved and the deliveries handed to the fanout callback with no
``await`` in between, so nothing registered meanwhile can miss or double-see a message.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from projections.folds.channel import decode_offset_outcome
from projections.folds.state import Delivery, Outcome
from projections.projector import STALL_AHEAD, STALL_TRUNCATED, Projector
from projections.store import keys
from projections.store.rocks import Stall
from sockudo.errors import FoldTimeout, LogCorrupt, LogError, OffsetOutOfRange
from sockudo.log.base import EventLog, LogReader

log = logging.getLogger(__name__)

DeliverySink = Callable[[list[Delivery]], None]

CATCH_UP_FACTOR = 4
"""While the fold is behind the log (a poll came back full), batches grow up to this multiple of
``batch_max_records``: fewer commits and head writes per record where latency is already
dominated by the backlog. They shrink back as soon as a poll returns less than asked."""


def _now_ms() -> int:
    return int(time.time() * 1000)


class FoldRunner:
    """Owns the fold loop of one topic on this node."""

    def __init__(
        self,
        event_log: EventLog,
        projector: Projector,
        *,
        batch_max_records: int = 500,
        poll_timeout_ms: int = 100,
        on_deliveries: DeliverySink | None = None,
        node_id: str = "node",
    ) -> None:
        self._log = event_log
        self.projector = projector
        self.topic = projector.topic
        self._batch_max = batch_max_records
        self._catch_up_max = batch_max_records * CATCH_UP_FACTOR
        self._poll_timeout_ms = poll_timeout_ms
        self._on_deliveries = on_deliveries
        self.node_id = node_id
        self._reader: LogReader | None = None
        self._task: asyncio.Task[None] | None = None
        self._waiters: dict[tuple[int, int], list[asyncio.Future[Outcome]]] = {}
        self._advanced = asyncio.Event()
        self._stopping = False
        self.folded_total = 0
        self.failure: BaseException | None = None

    # --- lifecycle --------------------------------------------------------------------------

    async def check_continuity(self) -> dict[int, Stall]:
        """Startup decision per partition (spec 05 §7.5) against the log's bounds.

        Returns the partitions whose checkpoint lies past the log end (projection ahead of the
        log); the caller decides whether to rebuild (embedded) or stall (Kafka).
        """
        ahead: dict[int, Stall] = {}
        for p, st in self.projector.state.items():
            start, end = await self._log.bounds(self.topic, p)
            if st.position > end:
                ahead[p] = Stall(
                    STALL_AHEAD, st.position, f"checkpoint {st.position} > log end {end}", _now_ms()
                )
            elif st.position < start:
                self.projector.mark_stalled(
                    p,
                    Stall(
                        STALL_TRUNCATED,
                        st.position,
                        f"checkpoint {st.position} < log start {start}",
                        _now_ms(),
                    ),
                )
            elif st.stall is not None:
                # Retry: an upgraded node may now decode the record that stalled it.
                self.projector.clear_stall(p)
        return ahead

    async def start(self) -> None:
        positions = {p: st.position for p, st in self.projector.state.items() if st.stall is None}
        self._reader = self._log.reader(self.topic, positions)
        self._task = asyncio.create_task(self._run(), name=f"fold:{self.topic}")

    async def stop(self) -> None:
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            except Exception:
                if self.failure is None:
                    raise  # a failure of the loop was logged when it died; others were not
        if self._reader is not None:
            await self._reader.close()
        for futures in self._waiters.values():
            for fut in futures:
                if not fut.done():
                    fut.set_exception(FoldTimeout("node is shutting down"))
        self._waiters.clear()

    # --- waiting ----------------------------------------------------------------------------

    def position(self, partition: int) -> int:
        return self.projector.state[partition].position

    async def wait_applied(self, partition: int, offset: int, timeout_s: float) -> Outcome:
        """The outcome of the record at ``offset`` once this node's fold has committed it."""
        st = self.projector.state[partition]
        if st.position > offset:
            raw = self.projector.store.get(keys.OFFSETS, keys.offset_key(partition, offset))
            if raw is None:
                raise FoldTimeout(f"outcome of {partition}/{offset} is no longer kept")
            return decode_offset_outcome(raw)
        if st.stall is not None:
            raise FoldTimeout(f"partition {partition} is stalled: {st.stall.reason}")
        if self.failure is not None:
            raise FoldTimeout(f"the fold loop failed: {self.failure}")
        fut: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault((partition, offset), []).append(fut)
        try:
            return await asyncio.wait_for(fut, timeout_s)
        except TimeoutError:
            raise FoldTimeout(f"fold did not reach {partition}/{offset} in {timeout_s}s") from None
        finally:
            waiting = self._waiters.get((partition, offset))
            if waiting is not None and fut in waiting:
                waiting.remove(fut)
                if not waiting:
                    del self._waiters[(partition, offset)]

    async def wait_caught_up(self, timeout_s: float) -> bool:
        """Wait until every healthy partition has folded up to the log end seen now."""
        targets = {}
        for p, st in self.projector.state.items():
            if st.stall is None:
                targets[p] = (await self._log.bounds(self.topic, p))[1]
        deadline = time.monotonic() + timeout_s
        while True:
            if all(
                self.projector.state[p].position >= end or self.projector.state[p].stall
                for p, end in targets.items()
            ):
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._task is None or self._task.done():
                return False
            self._advanced.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._advanced.wait(), min(remaining, 0.1))

    async def lag(self) -> int:
        total = 0
        for p, st in self.projector.state.items():
            total += max(0, (await self._log.bounds(self.topic, p))[1] - st.position)
        return total

    # --- the loop ---------------------------------------------------------------------------

    async def _run(self) -> None:
        assert self._reader is not None
        reader = self._reader
        batch = self._batch_max
        try:
            while not self._stopping:
                try:
                    records = await reader.poll(batch, self._poll_timeout_ms)
                except OffsetOutOfRange:
                    await self._stall_truncated()
                    continue
                except LogCorrupt:
                    raise  # no retry reads past a bad block, and none may skip it: stop
                except LogError as exc:
                    log.warning("log read failed on %s: %s; retrying", self.topic, exc)
                    await asyncio.sleep(0.5)
                    continue
                if not records:
                    batch = self._batch_max
                    continue
                full = len(records) >= batch
                batch = min(batch * 2, self._catch_up_max) if full else self._batch_max
                parts = {r.partition for r in records}
                positions = {p: reader.position(p) for p in parts}
                result = self.projector.apply(records, positions, now_ms=_now_ms())
                self.folded_total += result.applied
                # No await from here to the end of the iteration: waiters and fanout see
                # exactly the committed batch.
                outcomes, waiters = result.outcomes, self._waiters
                if waiters:
                    # Walk the smaller side: usually a few waiters against a whole batch.
                    if len(waiters) < len(outcomes):
                        ready = [k for k in waiters if k in outcomes]
                    else:
                        ready = [k for k in outcomes if k in waiters]
                    for key in ready:
                        outcome = outcomes[key]
                        for fut in waiters.pop(key):
                            if not fut.done():
                                fut.set_result(outcome)
                for p, stall in result.stalled.items():
                    log.error("partition %s/%s stalled: %s", self.topic, p, stall.detail)
                    self._fail_waiters(p, stall)
                if result.deliveries and self._on_deliveries is not None:
                    self._on_deliveries(result.deliveries)
                self._advanced.set()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            self.failure = exc
            log.exception("fold loop of %s died", self.topic)
            # Nobody will answer those waiting: they learn now, not at their timeout.
            for futures in self._waiters.values():
                for fut in futures:
                    if not fut.done():
                        fut.set_exception(FoldTimeout(f"the fold loop failed: {exc}"))
            raise

    def _fail_waiters(self, partition: int, stall: Stall) -> None:
        for key in [k for k in self._waiters if k[0] == partition]:
            for fut in self._waiters.pop(key):
                if not fut.done():
                    fut.set_exception(FoldTimeout(f"partition {partition} stalled: {stall.reason}"))

    async def _stall_truncated(self) -> None:
        for p, st in self.projector.state.items():
            if st.stall is not None:
                continue
            start, _end = await self._log.bounds(self.topic, p)
            if st.position < start:
                stall = Stall(
                    STALL_TRUNCATED,
                    st.position,
                    f"position {st.position} < log start {start}",
                    _now_ms(),
                )
                self.projector.mark_stalled(p, stall)
                self._fail_waiters(p, stall)
                log.error("partition %s/%s stalled: %s", self.topic, p, stall.detail)
        # The reader keeps failing on a stalled partition; move it back to the log start so
        # the other partitions keep flowing (the projector ignores the stalled one).
        assert self._reader is not None
        for p, st in self.projector.state.items():
            if st.stall is not None:
                start, _ = await self._log.bounds(self.topic, p)
                await self._reader.seek(p, start)
        self._advanced.set()
