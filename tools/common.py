"""Options shared by every ``sockudo-tools`` command and opening the log they name."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from sockudo.config import Settings, load_settings
from sockudo.log.base import EventLog, LogReader, LogRecord


def add_node_options(p: argparse.ArgumentParser) -> None:
    """The options ``sockudo-node`` takes to find its log and data."""
    p.add_argument("--config", help="the node's TOML configuration file")
    p.add_argument(
        "--log",
        dest="log",
        help="embedded | kafka | embedded:DIR | kafka://HOST:PORT (default: the node's)",
    )
    p.add_argument("--kafka-bootstrap", dest="kafka_bootstrap_servers", help="Kafka bootstrap")
    p.add_argument("--data-dir", help="the node's data directory (default ./data)")
    p.add_argument("--projection", help="projection directory (default DATA_DIR/projection)")


def settings_from(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {}
    spec: str | None = args.log
    if spec:
        if spec.startswith("kafka://"):
            overrides["log_backend"] = "kafka"
            overrides["kafka_bootstrap_servers"] = spec.removeprefix("kafka://")
        elif spec.startswith("embedded:"):
            overrides["log_backend"] = "embedded"
            overrides["data_dir"] = str(Path(spec.removeprefix("embedded:")).parent)
        else:
            overrides["log_backend"] = spec
    if args.kafka_bootstrap_servers:
        overrides["kafka_bootstrap_servers"] = args.kafka_bootstrap_servers
    if args.data_dir:
        overrides["data_dir"] = args.data_dir
    return load_settings(args.config, overrides=overrides)


def open_log_for_tools(settings: Settings) -> EventLog:
    """The node's log, opened so that a running node is not disturbed (embedded: read-only)."""
    if settings.log_backend == "kafka":
        from sockudo.log.kafka import KafkaLog

        return KafkaLog(settings.kafka_bootstrap_servers or "", client_id="sockudo-tools")
    from sockudo.log.embedded import EmbeddedLog

    return EmbeddedLog(settings.embedded_log_dir, read_only=True)


async def scan_partition(
    reader: LogReader, partition: int, end: int, batch: int = 2000
) -> list[LogRecord]:
    """Every record of ``partition`` from the reader's position up to ``end`` (exclusive)."""
    out: list[LogRecord] = []
    while reader.position(partition) < end:
        records = await reader.poll(batch, 500)
        out.extend(r for r in records if r.partition == partition and r.offset < end)
    return out
