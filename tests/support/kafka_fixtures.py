"""pytest plugin: the session's Kafka broker and per-test topic names (spec 05 §4.3).

Fixtures:

- ``kafka_bootstrap`` (session, sync): ``"host:port"`` of a real broker, resolved once per
  session (per xdist worker) by ``resolve_kafka``; skips with the §4.1 reason when there is no
  broker, fails instead when ``SOCKUDO_REQUIRE_KAFKA=1``.
- ``kafka_admin`` (function): a started ``AIOKafkaAdminClient`` on the test's own event loop.
  aiokafka clients are bound to the loop they were started on, and tests run on per-test loops,
  so a session-wide client would break every test that awaited it.
- ``topic_prefix`` (function): ``t`` + 8 hex chars; topics named ``{prefix}.{name}`` are deleted
  after the test when this session has a broker.

It also prints ``kafka backend: ran|skipped (<reason>)|not requested`` in the terminal summary
for ``.ci/run``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Iterator
from typing import Any
from uuid import uuid4

import pytest
import pytest_asyncio

from tests.support.kafka_broker import (
    KafkaResolution,
    KafkaSetupError,
    delete_topics_with_prefix,
    resolve_kafka,
    run_async,
)

log = logging.getLogger(__name__)

KAFKA_RESOLUTION = pytest.StashKey[KafkaResolution]()
"""Set by ``kafka_bootstrap``: where this session's broker came from (tests may inspect it)."""


@pytest.fixture(scope="session")
def kafka_bootstrap(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """Bootstrap address of the session's Kafka broker (spec 05 §4.1)."""
    try:
        resolution = resolve_kafka(lambda: tmp_path_factory.mktemp("kafka"))
    except KafkaSetupError as exc:
        request.config.stash[KAFKA_RESOLUTION] = KafkaResolution("error", skip_reason=str(exc))
        raise
    request.config.stash[KAFKA_RESOLUTION] = resolution
    if resolution.bootstrap is None:
        reason = resolution.skip_reason or "no Kafka broker"
        if os.environ.get("SOCKUDO_REQUIRE_KAFKA") == "1" and not resolution.deliberate:
            message = f"SOCKUDO_REQUIRE_KAFKA=1 but {reason}"
            request.config.stash[KAFKA_RESOLUTION] = KafkaResolution("error", skip_reason=message)
            pytest.fail(message, pytrace=False)
        pytest.skip(reason)
    if resolution.broker is not None:
        log.info(
            "local Kafka broker pid %s ready at %s in %.1f s",
            resolution.broker.pid,
            resolution.bootstrap,
            resolution.broker.startup_seconds,
        )
    try:
        yield resolution.bootstrap
    finally:
        resolution.close()


@pytest_asyncio.fixture
async def kafka_admin(kafka_bootstrap: str) -> AsyncIterator[Any]:
    """A started ``AIOKafkaAdminClient`` for this test, closed afterwards."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap, request_timeout_ms=10000)
    await admin.start()
    try:
        yield admin
    finally:
        await admin.close()


@pytest.fixture
def topic_prefix(request: pytest.FixtureRequest) -> Iterator[str]:
    """A unique topic-name prefix; Kafka topics starting with it are deleted after the test."""
    prefix = f"t{uuid4().hex[:8]}"
    yield prefix
    resolution = request.config.stash.get(KAFKA_RESOLUTION, None)
    if resolution is None or resolution.bootstrap is None:
        return  # no broker in this session, so no Kafka topics can exist
    bootstrap = resolution.bootstrap
    try:
        run_async(lambda: delete_topics_with_prefix(bootstrap, prefix))
    except Exception as exc:  # cleanup only: a leftover topic must not fail the test
        log.warning("could not delete Kafka topics %s*: %r", prefix, exc)


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    resolution = config.stash.get(KAFKA_RESOLUTION, None)
    if resolution is None:
        line = "kafka backend: not requested"
    elif resolution.bootstrap is not None:
        line = f"kafka backend: ran ({resolution.source} {resolution.bootstrap})"
    elif resolution.source == "error":
        first = (resolution.skip_reason or "").splitlines()[:1]
        line = f"kafka backend: error ({first[0] if first else 'unknown'})"
    else:
        line = f"kafka backend: skipped ({resolution.skip_reason})"
    terminalreporter.write_line(line)
