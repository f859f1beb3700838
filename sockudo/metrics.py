"""Every Prometheus metric of the node, defined in one place (names of spec 01 §7.4).

Other modules record through the small functions below rather than touching metric objects, so
the label set (``app_id``, ``port`` and the per-metric extras) stays consistent. Call
:func:`configure` once at node start; :func:`asgi_app` serves ``GET /metrics`` on the metrics
listener.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.metrics_core import Metric, UnknownMetricFamily
from prometheus_client.registry import Collector
from starlette.types import Receive, Scope, Send

from sockudo.channels import ChannelType, classify_channel

__all__ = [
    "FOLDED",
    "PUBLISHED",
    "PUBLISH_LATENCY",
    "REGISTRY",
    "STALLED",
    "asgi_app",
    "broadcast_latency",
    "channel_active",
    "channel_type",
    "configure",
    "connection_closed",
    "connection_error",
    "connection_opened",
    "exposition",
    "http_call",
    "idempotency_duplicate",
    "idempotent_publish",
    "port_label",
    "rate_limit_check",
    "rate_limit_triggered",
    "recipient_bucket",
    "subscribed",
    "unsubscribed",
    "utf8_len",
    "ws_received",
    "ws_sent",
]

# Upstream exports no `*_created` series; without this every counter would grow a second one.
disable_created_metrics()  # type: ignore[no-untyped-call]

REGISTRY = CollectorRegistry()
ProcessCollector(registry=REGISTRY)

DEFAULT_PREFIX = "sockudo_"
_BASE = ["app_id", "port"]
_port = ""


def configure(port: str) -> None:
    """Set the ``port`` label (the main listener's port); call once before serving."""
    global _port
    _port = port


def port_label() -> str:
    return _port


# --- node internals (kept: other modules import them) -------------------------------------------

PUBLISHED = Counter(
    "sockudo_http_published_events",
    "Events accepted by the HTTP publish routes (one per channel).",
    ["app_id"],
    registry=REGISTRY,
)
FOLDED = Counter(
    "sockudo_projection_folded_records",
    "Log records folded into the projection on this node.",
    ["topic"],
    registry=REGISTRY,
)
STALLED = Gauge(
    "sockudo_projection_partition_stalled",
    "Partitions this node stopped folding, by reason.",
    ["reason"],
    registry=REGISTRY,
)
PUBLISH_LATENCY = Histogram(
    "sockudo_publish_to_serial_seconds",
    "Time from publish request to the fold's answer.",
    registry=REGISTRY,
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)

# --- spec 01 §7.4 -------------------------------------------------------------------------------

CONNECTED = Gauge("sockudo_connected", "Sockets currently connected.", _BASE, registry=REGISTRY)
NEW_CONNECTIONS = Counter("sockudo_new_connections", "Sockets admitted.", _BASE, registry=REGISTRY)
NEW_DISCONNECTIONS = Counter(
    "sockudo_new_disconnections", "Admitted sockets that closed.", _BASE, registry=REGISTRY
)
CONNECTION_ERRORS = Counter(
    "sockudo_connection_errors",
    "Connection-level errors by type.",
    [*_BASE, "error_type"],
    registry=REGISTRY,
)
WS_MESSAGES_RECEIVED = Counter(
    "sockudo_ws_messages_received", "Inbound WebSocket data frames.", _BASE, registry=REGISTRY
)
WS_MESSAGES_SENT = Counter(
    "sockudo_ws_messages_sent", "Outbound WebSocket data frames.", _BASE, registry=REGISTRY
)
HTTP_CALLS = Counter(
    "sockudo_http_calls_received",
    "Signed HTTP API calls (and /up).",
    _BASE,
    registry=REGISTRY,
)
SUBSCRIPTIONS = Counter(
    "sockudo_channel_subscriptions",
    "Successful channel subscriptions.",
    [*_BASE, "channel_type"],
    registry=REGISTRY,
)
UNSUBSCRIPTIONS = Counter(
    "sockudo_channel_unsubscriptions",
    "Channel subscriptions ended (unsubscribe or disconnect).",
    [*_BASE, "channel_type"],
    registry=REGISTRY,
)
ACTIVE_CHANNELS = Gauge(
    "sockudo_active_channels",
    "Channels with at least one local subscriber.",
    [*_BASE, "channel_type"],
    registry=REGISTRY,
)
BROADCAST_LATENCY = Histogram(
    "sockudo_broadcast_latency_ms",
    "Milliseconds from publish to local fan-out done.",
    [*_BASE, "channel_type", "recipient_count_bucket"],
    registry=REGISTRY,
    buckets=(1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000),
)
RATE_LIMIT_CHECKS = Counter(
    "sockudo_rate_limit_checks",
    "Rate limiter consultations.",
    [*_BASE, "limiter_type", "request_context"],
    registry=REGISTRY,
)
RATE_LIMIT_TRIGGERED = Counter(
    "sockudo_rate_limit_triggered",
    "Requests the rate limiter rejected.",
    [*_BASE, "limiter_type", "request_context"],
    registry=REGISTRY,
)
IDEMPOTENCY_PUBLISH = Counter(
    "sockudo_idempotency_publish", "Publishes carrying a key.", _BASE, registry=REGISTRY
)
IDEMPOTENCY_DUPLICATES = Counter(
    "sockudo_idempotency_duplicates",
    "Keyed publishes answered from the stored outcome.",
    _BASE,
    registry=REGISTRY,
)


class _ByteCounters(Collector):
    """Counters exposed as ``untyped`` so their names carry no ``_total`` (spec 01 §7.4)."""

    NAMES = {
        "sockudo_socket_received_bytes": "Bytes of inbound WebSocket frames.",
        "sockudo_socket_transmitted_bytes": "Bytes of outbound WebSocket frames.",
        "sockudo_http_received_bytes": "HTTP API request body bytes.",
        "sockudo_http_transmitted_bytes": "HTTP API response body bytes.",
    }

    def __init__(self) -> None:
        # Scrapes may run on another thread (tests, future exporters); adds are cheap anyway.
        self._lock = threading.Lock()
        self._values: dict[str, dict[tuple[str, str], float]] = {n: {} for n in self.NAMES}

    def add(self, name: str, app_id: str, nbytes: int) -> None:
        key = (app_id, _port)
        with self._lock:
            series = self._values[name]
            series[key] = series.get(key, 0.0) + nbytes

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            snapshot = {n: dict(v) for n, v in self._values.items()}
        for name, doc in self.NAMES.items():
            family = UnknownMetricFamily(name, doc, labels=_BASE)
            for (app_id, port), value in sorted(snapshot[name].items()):
                family.add_metric([app_id, port], value)
            yield family


_BYTES = _ByteCounters()
REGISTRY.register(_BYTES)


# --- recording ----------------------------------------------------------------------------------


_CHILDREN: dict[tuple[object, tuple[str, ...]], Any] = {}
"""Labelled children by metric and label values. ``labels()`` validates and locks on every call
(a few µs, several times per publish and per connection); label values are bounded (configured
app ids, fixed type names), so each child is looked up once."""


def _child(metric: object, *labels: str) -> Any:
    key = (metric, labels)
    child = _CHILDREN.get(key)
    if child is None:
        child = _CHILDREN[key] = metric.labels(*labels)  # type: ignore[attr-defined]
    return child


def utf8_len(text: str) -> int:
    """UTF-8 size of ``text`` without encoding it when it is ASCII (the common frame)."""
    return len(text) if text.isascii() else len(text.encode())


def connection_opened(app_id: str) -> None:
    _child(CONNECTED, app_id, _port).inc()
    _child(NEW_CONNECTIONS, app_id, _port).inc()


def connection_closed(app_id: str) -> None:
    _child(CONNECTED, app_id, _port).dec()
    _child(NEW_DISCONNECTIONS, app_id, _port).inc()


def connection_error(app_id: str, error_type: str) -> None:
    """``app_id`` is ``""`` for an unknown app: a caller-chosen key must not become a label."""
    _child(CONNECTION_ERRORS, app_id, _port, error_type).inc()


def ws_received(app_id: str, nbytes: int) -> None:
    _child(WS_MESSAGES_RECEIVED, app_id, _port).inc()
    _BYTES.add("sockudo_socket_received_bytes", app_id, nbytes)


def ws_sent(app_id: str, nbytes: int, frames: int = 1) -> None:
    """``frames`` outbound frames of ``nbytes`` in all (the writer counts a whole batch once)."""
    _child(WS_MESSAGES_SENT, app_id, _port).inc(frames)
    _BYTES.add("sockudo_socket_transmitted_bytes", app_id, nbytes)


def http_call(app_id: str, received: int, sent: int) -> None:
    _child(HTTP_CALLS, app_id, _port).inc()
    _BYTES.add("sockudo_http_received_bytes", app_id, received)
    _BYTES.add("sockudo_http_transmitted_bytes", app_id, sent)


_TYPE_LABELS = {
    ChannelType.PUBLIC: "public",
    ChannelType.PRIVATE: "private",
    ChannelType.PRIVATE_ENCRYPTED: "private_encrypted",
    ChannelType.PRESENCE: "presence",
    # The spec has no label for user channels; upstream classifies them as public.
    ChannelType.USER: "public",
}


def channel_type(channel: str) -> str:
    """The ``channel_type`` label of ``channel``; any cache channel is ``cache``."""
    info = classify_channel(channel)
    return "cache" if info.cache else _TYPE_LABELS[info.type]


def subscribed(app_id: str, channel_type: str) -> None:
    _child(SUBSCRIPTIONS, app_id, _port, channel_type).inc()


def unsubscribed(app_id: str, channel_type: str) -> None:
    _child(UNSUBSCRIPTIONS, app_id, _port, channel_type).inc()


def channel_active(app_id: str, channel_type: str, delta: int) -> None:
    """``+1`` when a channel gains its first local subscriber, ``-1`` when it loses the last."""
    _child(ACTIVE_CHANNELS, app_id, _port, channel_type).inc(delta)


_RECIPIENT_BUCKETS = ((0, "0"), (1, "1"), (10, "2-10"), (100, "11-100"), (1000, "101-1000"))


def recipient_bucket(recipients: int) -> str:
    """Coarse buckets keep the label's cardinality fixed."""
    for upper, label in _RECIPIENT_BUCKETS:
        if recipients <= upper:
            return label
    return "1001+"


def broadcast_latency(app_id: str, channel_type: str, recipients: int, millis: float) -> None:
    _child(BROADCAST_LATENCY, app_id, _port, channel_type, recipient_bucket(recipients)).observe(
        max(millis, 0.0)
    )


def rate_limit_check(app_id: str, limiter_type: str, request_context: str) -> None:
    _child(RATE_LIMIT_CHECKS, app_id, _port, limiter_type, request_context).inc()


def rate_limit_triggered(app_id: str, limiter_type: str, request_context: str) -> None:
    _child(RATE_LIMIT_TRIGGERED, app_id, _port, limiter_type, request_context).inc()


def idempotent_publish(app_id: str) -> None:
    _child(IDEMPOTENCY_PUBLISH, app_id, _port).inc()


def idempotency_duplicate(app_id: str) -> None:
    _child(IDEMPOTENCY_DUPLICATES, app_id, _port).inc()


# --- exposition ---------------------------------------------------------------------------------


class _Prefixed(Collector):
    """The registry with ``sockudo_`` replaced by ``METRICS_PROMETHEUS_PREFIX``."""

    def __init__(self, registry: CollectorRegistry, prefix: str) -> None:
        self._registry = registry
        self._prefix = prefix

    def _rename(self, name: str) -> str:
        return (
            self._prefix + name[len(DEFAULT_PREFIX) :] if name.startswith(DEFAULT_PREFIX) else name
        )

    def collect(self) -> Iterable[Metric]:
        for family in self._registry.collect():
            renamed = Metric(
                self._rename(family.name), family.documentation, family.type, family.unit
            )
            renamed.samples = [s._replace(name=self._rename(s.name)) for s in family.samples]
            yield renamed


def exposition(prefix: str = DEFAULT_PREFIX) -> bytes:
    """The text format 0.0.4 body of a scrape."""
    if prefix == DEFAULT_PREFIX:
        return generate_latest(REGISTRY)
    renamed = CollectorRegistry()
    renamed.register(_Prefixed(REGISTRY, prefix))
    return generate_latest(renamed)


def asgi_app(prefix: str = DEFAULT_PREFIX) -> _MetricsApp:
    """The metrics listener: ``GET /metrics`` only, always text format 0.0.4."""
    return _MetricsApp(prefix)


class _MetricsApp:
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        if scope["path"] == "/metrics" and scope["method"] in ("GET", "HEAD"):
            # Always 0.0.4: an OpenMetrics Accept header would otherwise change the names.
            status, ctype, body = 200, CONTENT_TYPE_PLAIN_0_0_4, exposition(self.prefix)
        else:
            status, ctype, body = 404, "text/plain; charset=utf-8", b"404 NOT FOUND"
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", ctype.encode()),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send(
            {"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body}
        )
