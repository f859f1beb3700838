"""Every Prometheus metric of the node, defined in one place (names of spec 01 §7.4 follow)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry()

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
