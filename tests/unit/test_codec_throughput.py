"""Codec throughput on a typical publish (run with ``-m slow``; prints one JSON line)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from sockudo.events import codec
from sockudo.events.channel import MessagePublished, Origin, Retention

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
FLOOR_PER_S = 10_000
"""CI floor for encode and for decode alone; the fold budget (spec 05 §10) needs far more."""


def _rate(fn: Callable[[], object], n: int) -> float:
    best = 0.0
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(n):
            fn()
        best = max(best, n / (time.perf_counter() - start))
    return best


@pytest.mark.slow
def test_message_published_encode_decode_throughput() -> None:
    c = codec.Codec(codec.SchemaRegistry(SCHEMAS))
    event = MessagePublished(
        event_id="3f1c6a8e-1a2b-4c3d-9e8f-0a1b2c3d4e5f",
        app_id="app1",
        channel="chat-room",
        origin=Origin("node-a/1723456789012-ab12", socket_id="123.456", request_id="req-1"),
        message_id="5d1b2c3d-1a2b-4c3d-9e8f-0a1b2c3d4e5f",
        name="chat.message",
        data="x" * 120,
        retention=Retention(window_s=86_400),
    )
    encoded = c.encode(event)
    headers, value = encoded.headers, encoded.value
    n = 20_000
    rates = {
        "encode_per_s": _rate(lambda: c.encode(event), n),
        "decode_per_s": _rate(lambda: c.decode(headers, value), n),
        "round_trip_per_s": _rate(lambda: c.decode(headers, c.encode(event).value), n),
    }
    print(
        json.dumps(
            {"bench": "codec.MessagePublished", "value_bytes": len(value)}
            | {k: round(v) for k, v in rates.items()}
        )
    )
    assert rates["encode_per_s"] >= FLOOR_PER_S
    assert rates["decode_per_s"] >= FLOOR_PER_S
