"""Live presence read model: members of a presence channel as the fold left them (spec 01 §3.8).

Reads only; ``projections.folds.presence`` is the only writer. Membership is per user id: a
member exists while at least one of its connections (on any node) is in the channel.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from projections.store import keys
from projections.store.kv import KVReader


@dataclass(frozen=True, slots=True)
class Member:
    """One user of a presence channel."""

    user_id: str
    user_info: Any
    """The first connection's ``user_info`` (``{}`` when the client sent none)."""
    connections: int


def decode_member(user_id: str, raw: bytes) -> Member:
    value = json.loads(raw)
    info = value["i"]
    return Member(user_id, {} if info is None else json.loads(info), value["n"])


def members(kv: KVReader, app_id: str, channel: str) -> list[Member]:
    """Every member in user-id order."""
    ck = keys.channel_prefix(app_id, channel)
    return [
        decode_member(key[len(ck) :].decode(), raw)
        for key, raw in kv.scan(keys.PRESENCE_USERS, ck, keys.prefix_end(ck))
    ]


def member(kv: KVReader, app_id: str, channel: str, user_id: str) -> Member | None:
    raw = kv.get(
        keys.PRESENCE_USERS, keys.member_key(keys.channel_prefix(app_id, channel), user_id)
    )
    return None if raw is None else decode_member(user_id, raw)


def user_count(kv: KVReader, app_id: str, channel: str) -> int:
    ck = keys.channel_prefix(app_id, channel)
    return sum(1 for _ in kv.scan(keys.PRESENCE_USERS, ck, keys.prefix_end(ck)))


def subscription_data(found: list[Member]) -> dict[str, Any]:
    """The ``data`` object of a presence ``subscription_succeeded`` (spec 01 §3.8)."""
    return {
        "presence": {
            "ids": [m.user_id for m in found],
            "hash": {m.user_id: m.user_info for m in found},
            "count": len(found),
        }
    }


def occupied_channels(kv: KVReader, app_id: str, prefix: str = "") -> dict[str, int]:
    """Presence channels of ``app_id`` starting with ``prefix`` that have members → user count."""
    start = app_id.encode() + b"\x00" + prefix.encode()
    end = keys.prefix_end(start) if prefix else keys.prefix_end(app_id.encode() + b"\x00")
    counts: dict[str, int] = {}
    for key, _ in kv.scan(keys.PRESENCE_USERS, start, end):
        channel = key.split(b"\x00", 2)[1].decode()
        counts[channel] = counts.get(channel, 0) + 1
    return counts
