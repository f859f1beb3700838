"""The metrics module: exact names, labels, untyped byte counters, prefix and the ASGI listener."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from sockudo import metrics
from sockudo.node.hub import Hub, Outbox


@pytest.fixture(autouse=True)
def port_label() -> Iterator[None]:
    before = metrics.port_label()
    metrics.configure("7777")
    yield
    metrics.configure(before)


def value(name: str, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


def families(prefix: str = metrics.DEFAULT_PREFIX) -> dict[str, str]:
    text = metrics.exposition(prefix).decode()
    return {f.name: f.type for f in text_string_to_metric_families(text)}


def test_connection_lifecycle_and_labels() -> None:
    base = {"app_id": "unit-conn", "port": "7777"}
    metrics.connection_opened("unit-conn")
    metrics.connection_opened("unit-conn")
    metrics.connection_closed("unit-conn")
    assert value("sockudo_connected", **base) == 1
    assert value("sockudo_new_connections_total", **base) == 2
    assert value("sockudo_new_disconnections_total", **base) == 1
    metrics.connection_error("", "app_not_found")
    assert value("sockudo_connection_errors_total", app_id="", port="7777",
                 error_type="app_not_found") >= 1  # fmt: skip


def test_byte_counters_are_untyped_without_total_suffix() -> None:
    metrics.ws_received("unit-bytes", 10)
    metrics.ws_sent("unit-bytes", 7)
    metrics.ws_sent("unit-bytes", 3)
    metrics.http_call("unit-bytes", 5, 40)
    base = {"app_id": "unit-bytes", "port": "7777"}
    assert value("sockudo_socket_received_bytes", **base) == 10
    assert value("sockudo_socket_transmitted_bytes", **base) == 10
    assert value("sockudo_http_received_bytes", **base) == 5
    assert value("sockudo_http_transmitted_bytes", **base) == 40
    assert value("sockudo_ws_messages_sent_total", **base) == 2
    assert value("sockudo_ws_messages_received_total", **base) == 1
    assert value("sockudo_http_calls_received_total", **base) == 1
    types = families()
    for name in (
        "sockudo_socket_received_bytes",
        "sockudo_socket_transmitted_bytes",
        "sockudo_http_received_bytes",
        "sockudo_http_transmitted_bytes",
    ):
        assert types[name] == "unknown"
    assert types["sockudo_new_connections"] == "counter"
    assert types["sockudo_connected"] == "gauge"
    assert types["sockudo_broadcast_latency_ms"] == "histogram"
    assert "process_cpu_seconds" in types or "process_cpu_seconds_total" in types


def test_no_created_series() -> None:
    metrics.connection_opened("unit-created")
    assert b"_created" not in metrics.exposition()


@pytest.mark.parametrize(
    ("channel", "kind"),
    [
        ("orders", "public"),
        ("private-orders", "private"),
        ("private-encrypted-x", "private_encrypted"),
        ("presence-room", "presence"),
        ("cache-prices", "cache"),
        ("private-cache-x", "cache"),
        ("presence-cache-x", "cache"),
        ("private-encrypted-cache-x", "cache"),
        ("#server-to-user-u1", "public"),
    ],
)
def test_channel_type(channel: str, kind: str) -> None:
    assert metrics.channel_type(channel) == kind


def test_hub_counts_subscriptions_and_active_channels() -> None:
    hub = Hub()
    hub.add(Outbox("1.1", "unit-hub"))
    hub.add(Outbox("1.2", "unit-hub"))
    labels = {"app_id": "unit-hub", "port": "7777", "channel_type": "presence"}
    hub.subscribe("1.1", "presence-r", member="u1")
    hub.subscribe("1.2", "presence-r", member="u2")
    hub.subscribe("1.2", "presence-r", member="u2")  # already in: not counted again
    assert value("sockudo_channel_subscriptions_total", **labels) == 2
    assert value("sockudo_active_channels", **labels) == 1
    hub.unsubscribe("1.1", "presence-r")
    assert value("sockudo_channel_unsubscriptions_total", **labels) == 1
    assert value("sockudo_active_channels", **labels) == 1
    hub.remove("1.2")  # a disconnect ends the last subscription
    assert value("sockudo_channel_unsubscriptions_total", **labels) == 2
    assert value("sockudo_active_channels", **labels) == 0


@pytest.mark.parametrize(
    ("n", "bucket"),
    [(0, "0"), (1, "1"), (2, "2-10"), (10, "2-10"), (11, "11-100"), (1000, "101-1000"),
     (1001, "1001+")],
)  # fmt: skip
def test_recipient_bucket(n: int, bucket: str) -> None:
    assert metrics.recipient_bucket(n) == bucket


def test_other_recorders() -> None:
    metrics.broadcast_latency("unit-other", "public", 3, 12.5)
    assert (
        value(
            "sockudo_broadcast_latency_ms_count",
            app_id="unit-other",
            port="7777",
            channel_type="public",
            recipient_count_bucket="2-10",
        )
        == 1
    )
    metrics.idempotent_publish("unit-other")
    metrics.idempotency_duplicate("unit-other")
    metrics.rate_limit_check("unit-other", "ip", "api")
    metrics.rate_limit_triggered("unit-other", "ip", "api")
    base = {"app_id": "unit-other", "port": "7777"}
    assert value("sockudo_idempotency_publish_total", **base) == 1
    assert value("sockudo_idempotency_duplicates_total", **base) == 1
    rl = {**base, "limiter_type": "ip", "request_context": "api"}
    assert value("sockudo_rate_limit_checks_total", **rl) == 1
    assert value("sockudo_rate_limit_triggered_total", **rl) == 1


def test_prefix_renames_sockudo_metrics_only() -> None:
    metrics.connection_opened("unit-prefix")
    types = families("custom_")
    assert "custom_connected" in types
    assert "custom_socket_transmitted_bytes" in types
    assert not any(name.startswith("sockudo_") for name in types)
    assert any(name.startswith("process_") for name in types)


def test_utf8_len() -> None:
    assert metrics.utf8_len("abc") == 3
    assert metrics.utf8_len("é") == 2


async def test_asgi_app_serves_metrics_only() -> None:
    transport = httpx.ASGITransport(app=metrics.asgi_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://m") as client:
        r = await client.get("/metrics", headers={"Accept": "application/openmetrics-text"})
        assert r.status_code == 200
        assert r.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
        assert b"sockudo_connected" in r.content
        missing = await client.get("/other")
        assert missing.status_code == 404
        assert missing.text == "404 NOT FOUND"
