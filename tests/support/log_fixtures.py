"""pytest plugin: ``event_log``, one started log per backend (memory, embedded, real Kafka)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio

from sockudo.log.base import EventLog

BACKENDS = ["memory", "embedded", pytest.param("kafka", marks=pytest.mark.kafka)]


@dataclass
class LogUnderTest:
    """A started log plus what the test needs to know about it."""

    log: EventLog
    backend: str
    prefix: str
    path: Path | None = None

    def topic(self, name: str = "events") -> str:
        return f"{self.prefix}.{name}"


@pytest_asyncio.fixture(params=BACKENDS)
async def event_log(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[LogUnderTest]:
    backend: str = request.param
    log: EventLog
    path: Path | None = None
    if backend == "kafka":
        from sockudo.log.kafka import KafkaLog

        bootstrap = request.getfixturevalue("kafka_bootstrap")
        prefix = request.getfixturevalue("topic_prefix")
        log = KafkaLog(bootstrap)
    elif backend == "embedded":
        from sockudo.log.embedded import EmbeddedLog

        prefix = f"t{uuid.uuid4().hex[:8]}"
        path = tmp_path / "log"
        log = EmbeddedLog(path)
    else:
        from sockudo.log.memory import MemoryLog

        prefix = f"t{uuid.uuid4().hex[:8]}"
        log = MemoryLog()
    await log.start()
    try:
        yield LogUnderTest(log, backend, prefix, path)
    finally:
        await log.close()
