"""The hot replay tier: bounded per channel, by channel count and by payload bytes, TTL on read."""

from __future__ import annotations

from typing import Any

from projections.folds.state import Delivery
from sockudo.node.replay import HotReplay


def delivery(channel: str, serial: int | None, *, data: str = "x", ts: int = 1_000_000) -> Delivery:
    fields: dict[str, Any] = {
        "app_id": "app",
        "channel": channel,
        "event": "e",
        "data": data,
        "data_is_json": False,
        "message_id": f"m{serial}",
        "stream_id": "s",
        "serial": serial,
        "history_serial": serial,
        "published_at_ms": ts,
        "exclude_socket_id": None,
        "user_id": None,
        "client_event": False,
        "extras_json": None,
        "tags": None,
    }
    return Delivery(**fields)


def clock_at(ms: int) -> Any:
    return lambda: ms / 1000


def test_keeps_the_newest_per_channel_and_skips_ephemeral() -> None:
    hot = HotReplay(per_channel=3, clock=clock_at(1_000_000))
    for serial in range(1, 6):
        hot.add(delivery("a", serial))
    hot.add(delivery("a", None))  # ephemeral
    assert [d.serial for d in hot.get("app", "a")] == [3, 4, 5]
    assert hot.get("app", "b") == []


def test_entries_past_the_ttl_are_not_served() -> None:
    hot = HotReplay(ttl_s=120, clock=clock_at(1_000_000 + 121_000))
    hot.add(delivery("a", 1, ts=1_000_000))
    hot.add(delivery("a", 2, ts=1_000_000 + 2_000))
    assert [d.serial for d in hot.get("app", "a")] == [2]


def test_channel_count_and_byte_budget_drop_the_least_recent_channel() -> None:
    hot = HotReplay(max_channels=2, clock=clock_at(1_000_000))
    for channel in ("a", "b", "c"):
        hot.add(delivery(channel, 1))
    assert hot.get("app", "a") == []
    assert len(hot.get("app", "c")) == 1

    budget = HotReplay(max_bytes=3_000, clock=clock_at(1_000_000))
    budget.add(delivery("big", 1, data="x" * 1_500))
    budget.add(delivery("other", 1, data="y" * 1_500))
    assert budget.get("app", "big") == []  # over budget: the older channel went
    assert len(budget.get("app", "other")) == 1
    assert budget.bytes <= 3_000


def test_byte_accounting_follows_evictions_inside_a_channel() -> None:
    hot = HotReplay(per_channel=2, clock=clock_at(1_000_000))
    for serial in range(1, 10):
        hot.add(delivery("a", serial, data="z" * 100))
    assert hot.bytes == 2 * (100 + 200)
