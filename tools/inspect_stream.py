"""``sockudo-tools inspect-stream``: a channel's log against the projection (spec 05 §7.8).

The channel's records are re-folded from the log with the same pure fold the node runs, and
the result is compared with what the projection serves. Verdicts and exit codes: ``ok`` 0,
``lagging`` 0 (1 with ``--strict``), ``gaps``/``mismatch`` 1, ``unanchored``/``stalled`` 2.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from projections.folds.channel import CHANNEL_EVENT_TYPES, ChannelState, RecordContext, fold
from projections.folds.state import HistoryRow, StreamHead
from projections.projector import STALL_AHEAD
from projections.reads.history import read_head, stream_summary
from projections.store import keys
from projections.store.kv import KVReader, MemoryKV
from projections.store.rocks import ProjectionStore, Stall
from sockudo.config import Settings
from sockudo.errors import CodecError
from sockudo.log.base import EventLog, LogRecord
from sockudo.log.partitioning import channel_key, partition_for
from sockudo.node.runtime import decode_record
from sockudo.node.topics import CHANNEL_EVENTS, topic_name
from tools.common import scan_partition

EXIT = {"ok": 0, "lagging": 0, "gaps": 1, "mismatch": 1, "unanchored": 2, "stalled": 2}


@dataclass(slots=True)
class Recomputed:
    """The channel as the log says it should be, up to the projection's checkpoint."""

    kv: MemoryKV = field(default_factory=MemoryKV)
    channel_records: int = 0
    generation_starts_at_offsets: list[int] = field(default_factory=list)
    undecodable: list[dict[str, Any]] = field(default_factory=list)
    duplicates_suppressed: int = 0


def recompute(
    records: list[LogRecord], app_id: str, channel: str, partitions: int, topic: str
) -> Recomputed:
    key = channel_key(app_id, channel)
    out = Recomputed()
    prev_ts: int | None = None
    for rec in records:
        if rec.key != key and not _is_partition_marker(rec):
            prev_ts = rec.timestamp_ms
            continue
        try:
            event = decode_record(rec)
        except CodecError as exc:
            out.undecodable.append({"offset": rec.offset, "error": str(exc)})
            break
        if rec.key == key:
            out.channel_records += 1
        ctx = RecordContext(
            topic, rec.partition, rec.offset, rec.timestamp_ms, prev_ts, partitions, partition_for
        )
        if not isinstance(event, CHANNEL_EVENT_TYPES):
            prev_ts = rec.timestamp_ms
            continue
        before = read_head(out.kv, app_id, channel)
        state = ChannelState(out.kv)
        result = fold(state, ctx, event)
        state.flush()
        after = read_head(out.kv, app_id, channel)
        if result.outcome.kind == "duplicate":
            out.duplicates_suppressed += 1
        if after is not None and (before is None or before.generation != after.generation):
            out.generation_starts_at_offsets.append(rec.offset)
        prev_ts = rec.timestamp_ms
    return out


def _undecodable(records: list[LogRecord], key: bytes) -> list[dict[str, Any]]:
    for rec in records:
        if rec.key != key and not _is_partition_marker(rec):
            continue
        try:
            decode_record(rec)
        except CodecError as exc:
            return [{"offset": rec.offset, "error": str(exc)}]
    return []


def _is_partition_marker(rec: LogRecord) -> bool:
    return any(k == "sk.type" and v.startswith(b"partition.") for k, v in rec.headers)


def _rows(kv: KVReader, ck: bytes, head: StreamHead | None) -> dict[int, str | None]:
    if head is None:
        return {}
    prefix = keys.history_gen_prefix(ck, head.generation)
    return {
        keys.read_u64(k, len(prefix)): HistoryRow.decode(v).message.get("message_id")
        for k, v in kv.scan(keys.HISTORY, prefix, keys.prefix_end(prefix))
    }


async def inspect_stream(
    settings: Settings,
    event_log: EventLog,
    app_id: str,
    channel: str,
    *,
    projection_path: Path,
    from_offset: int | None = None,
) -> dict[str, Any]:
    """Build the report of spec 05 §7.8 (``verdict`` decides the exit status)."""
    topic = topic_name(settings.topic_prefix, CHANNEL_EVENTS)
    partitions = await event_log.partitions(topic)
    p = partition_for(channel_key(app_id, channel), partitions)
    start, end = await event_log.bounds(topic, p)

    store: ProjectionStore | None = None
    if projection_path.exists():
        store = ProjectionStore(projection_path, read_only=True)
    try:
        ckpt = store.checkpoint(topic, p) if store else None
        stall: Stall | None = store.stall(topic, p) if store else None
        checkpoint = ckpt.position if ckpt else 0
        if stall is None and checkpoint > end:
            # The log lost records the projection folded (or was replaced): what the
            # projection serves cannot be checked against it (spec 05 §7.4).
            detail = f"checkpoint {checkpoint} > log end {end}"
            stall = Stall(STALL_AHEAD, checkpoint, detail, 0)
        scan_from = max(start, from_offset or 0)
        reader = event_log.reader(topic, {p: scan_from})
        try:
            records = await scan_partition(reader, p, end)
        finally:
            await reader.close()
        # Compare up to the checkpoint; past it, only check that the records still decode.
        folded_part = [r for r in records if r.offset < checkpoint]
        recomputed = recompute(folded_part, app_id, channel, partitions, topic)
        if not recomputed.undecodable:
            recomputed.undecodable = _undecodable(
                [r for r in records if r.offset >= checkpoint], channel_key(app_id, channel)
            )

        ck = keys.channel_prefix(app_id, channel)
        expected_head = read_head(recomputed.kv, app_id, channel)
        actual_head = read_head(store, app_id, channel) if store else None
        expected_rows = _rows(recomputed.kv, ck, expected_head)
        actual_rows = _rows(store, ck, actual_head) if store else {}

        gaps: list[dict[str, Any]] = []
        mismatches: list[dict[str, Any]] = []
        if start > 0:
            gaps.append({"from_offset": 0, "to_offset": start - 1, "kind": "log_truncated"})
        for serial, message_id in sorted(expected_rows.items()):
            if serial not in actual_rows:
                gaps.append(
                    {"from_serial": serial, "to_serial": serial, "kind": "missing_in_projection"}
                )
            elif actual_rows[serial] != message_id:
                mismatches.append(
                    {
                        "serial": serial,
                        "log_message_id": message_id,
                        "projection_message_id": actual_rows[serial],
                    }
                )
        for serial in sorted(set(actual_rows) - set(expected_rows)):
            gaps.append({"from_serial": serial, "to_serial": serial, "kind": "missing_in_log"})
        if (
            expected_head is not None
            and actual_head is not None
            and (expected_head.stream_id, expected_head.next_h)
            != (actual_head.stream_id, actual_head.next_h)
        ):
            mismatches.append(
                {
                    "field": "stream",
                    "log": [expected_head.stream_id, expected_head.next_h],
                    "projection": [actual_head.stream_id, actual_head.next_h],
                }
            )

        # A generation that began before the log start cannot be re-folded from this log.
        anchored = start == 0 or (
            bool(recomputed.generation_starts_at_offsets)
            and recomputed.generation_starts_at_offsets[-1] >= start
            and not any(g["kind"] == "missing_in_log" for g in gaps)
        )
        if stall is not None or recomputed.undecodable:
            verdict = "stalled"
        elif not anchored and (actual_head is not None or start > 0):
            verdict = "unanchored"
        elif mismatches:
            verdict = "mismatch"
        elif any(g["kind"] != "log_truncated" for g in gaps):
            verdict = "gaps"
        elif checkpoint < end:
            verdict = "lagging"
        else:
            verdict = "ok"

        return {
            "app_id": app_id,
            "channel": channel,
            "topic": topic,
            "partition": p,
            "log": {
                "start_offset": start,
                "end_offset": end,
                "scanned": len(records),
                "channel_records": recomputed.channel_records,
            },
            "projection": {
                "checkpoint": checkpoint,
                "lag_records": max(0, end - checkpoint),
                "health": f"stalled({stall.reason})"
                if stall
                else ("live" if checkpoint >= end else "lagging"),
                "fold_version": ckpt.fold_version if ckpt else None,
                "stall": (
                    {"reason": stall.reason, "offset": stall.offset, "detail": stall.detail}
                    if stall
                    else None
                ),
            },
            "stream": stream_summary(store or MemoryKV(), app_id, channel, stall, settings.node_id),
            "recomputed": {
                "stream_id": expected_head.stream_id if expected_head else None,
                "generation": expected_head.generation if expected_head else None,
                "next_serial": expected_head.next_h if expected_head else None,
                "first_serial": min(expected_rows) if expected_rows else None,
                "last_serial": max(expected_rows) if expected_rows else None,
                "generation_starts_at_offsets": recomputed.generation_starts_at_offsets,
                "undecodable": recomputed.undecodable,
            },
            "gaps": gaps,
            "mismatches": mismatches,
            "duplicates_suppressed": recomputed.duplicates_suppressed,
            "verdict": verdict,
        }
    finally:
        if store is not None:
            store.close()


def render_text(report: dict[str, Any]) -> str:
    log, proj, stream = report["log"], report["projection"], report["stream"]
    lines = [
        f"channel   {report['app_id']}/{report['channel']}",
        f"partition {report['topic']}[{report['partition']}]",
        f"log       start={log['start_offset']} end={log['end_offset']} "
        f"scanned={log['scanned']} channel_records={log['channel_records']}",
        f"checkpoint {proj['checkpoint']} lag={proj['lag_records']} health={proj['health']}",
        f"stream    id={stream['stream_id']} next_serial={stream['next_serial']} "
        f"state={stream['state']['durable_state']} reason={stream['state']['reason']}",
        f"serials   first={report['recomputed']['first_serial']} "
        f"last={report['recomputed']['last_serial']} "
        f"generations_at={report['recomputed']['generation_starts_at_offsets']}",
    ]
    lines += [f"gap       {g}" for g in report["gaps"]]
    lines += [f"mismatch  {m}" for m in report["mismatches"]]
    lines.append(f"verdict   {report['verdict']}")
    return "\n".join(lines)
