"""pytest plugin: ``event_log``, one started log per backend (memory, embedded, real Kafka).

``event_log`` is parametrized with ids ``memory``, ``embedded`` and ``kafka``; the Kafka case
carries the ``kafka`` marker and gets its broker from ``kafka_bootstrap`` (which skips or fails
by itself when there is none). It yields a ``LogUnderTest``: the started log plus the backend
name and ``topic(name)``, which gives names unique to the test (a random prefix on every
backend; on Kafka the ``topic_prefix`` fixture's, so the topics are deleted afterwards).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio

from sockudo.log.base import EventLog, LogRecord

BACKENDS = ["memory", "embedded", pytest.param("kafka", marks=pytest.mark.kafka)]

WAIT_BUDGET_MS = {"memory": 200, "embedded": 200, "kafka": 1000}
"""How soon an acknowledged append must reach a waiting reader (spec 05 check 19)."""


@dataclass
class LogUnderTest:
    """A started log plus what the test needs to know about it."""

    log: EventLog
    backend: str
    prefix: str
    path: Path | None = None
    """The embedded log's directory (``None`` for the other backends)."""

    def topic(self, name: str = "events") -> str:
        """A topic name no other test uses."""
        return f"{self.prefix}.{name}"

    @property
    def wait_budget_ms(self) -> int:
        return WAIT_BUDGET_MS[self.backend]


@pytest_asyncio.fixture(params=BACKENDS)
async def event_log(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[LogUnderTest]:
    """A started log of the parametrized backend, closed after the test."""
    backend: str = request.param
    log: EventLog
    path: Path | None = None
    if backend == "kafka":
        from sockudo.log.kafka import KafkaLog

        bootstrap: str = request.getfixturevalue("kafka_bootstrap")
        prefix: str = request.getfixturevalue("topic_prefix")
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


async def read_all(
    log: EventLog,
    topic: str,
    positions: dict[int, int],
    count: int,
    *,
    timeout_s: float = 15.0,
    max_records: int = 500,
) -> list[LogRecord]:
    """Poll a fresh reader until ``count`` records arrived (at most ``timeout_s``)."""
    reader = log.reader(topic, positions)
    out: list[LogRecord] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(out) < count and time.monotonic() < deadline:
            out.extend(await reader.poll(max_records, 200))
    finally:
        await reader.close()
    return out
