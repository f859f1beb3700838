"""Cache-channel read model: the last HTTP publish of a cache channel (spec 01 §3.9, §6.2)."""

from __future__ import annotations

from dataclasses import dataclass

from projections.folds.state import CachedEvent
from projections.store import keys
from projections.store.kv import KVReader


@dataclass(frozen=True, slots=True)
class CachedFrame:
    """A cached event still within its TTL."""

    event: str
    data: str
    ttl_s: int


def cached(kv: KVReader, app_id: str, channel: str, now_ms: int) -> CachedFrame | None:
    """The cached event of ``channel`` unless there is none or it has expired."""
    raw = kv.get(keys.CACHE, keys.channel_prefix(app_id, channel))
    if raw is None:
        return None
    event = CachedEvent.decode(raw)
    ttl = event.ttl_s(now_ms)
    if ttl <= 0:
        return None
    return CachedFrame(event.event, event.data, ttl)
