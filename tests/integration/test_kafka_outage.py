"""A node on Kafka through a broker outage: typed errors while it lasts, then it carries on.

The broker is our own JVM (not the session's, which other tests share), frozen with SIGSTOP:
connections stay open and nothing answers, as with a hung or partitioned broker.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.api import SignedClient
from tests.support.kafka_broker import LocalKafkaBroker
from tests.support.kafka_fixtures import KAFKA_RESOLUTION
from tests.support.node import APP_ID, APP_KEY, APP_SECRET, NodeProcess

CHANNEL = "outage"
CODES = {503: "service_unavailable", 504: "publish_outcome_unknown"}


def publish(api: SignedClient, n: int) -> httpx.Response:
    body = {"name": "ev", "channel": CHANNEL, "data": f"m{n}", "info": "subscription_count"}
    return api.publish(body)


def wait_for(check: Any, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(0.2)


@dataclass
class Outage:
    """A broker of the test's own (frozen and thawed at will) and a node on it."""

    broker: LocalKafkaBroker
    node: NodeProcess
    api: SignedClient

    def freeze(self) -> None:
        assert self.broker.pid is not None
        os.kill(self.broker.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.broker.pid is not None
        os.kill(self.broker.pid, signal.SIGCONT)


@pytest.fixture
def outage(
    kafka_bootstrap: str, request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Outage]:
    session = request.config.stash[KAFKA_RESOLUTION].broker
    if session is None:
        pytest.skip(reason="needs the local broker's classpath; the session broker is not local")
    broker = LocalKafkaBroker(workdir=tmp_path / "broker", lib=session.lib, java=session.java)
    bootstrap = broker.start()
    node = NodeProcess(
        tmp_path / "node",
        log_backend="kafka",
        kafka_bootstrap=bootstrap,
        channel_partitions=3,
        extra_env={"EVENT_LOG_ACK_TIMEOUT_MS": "2000"},
    )
    api = SignedClient(node.base_url, APP_ID, APP_KEY, APP_SECRET)
    try:
        node.start()
        yield Outage(broker, node, api)
    finally:
        api.close()
        node.kill()
        broker.stop()


@dataclass
class Tally:
    """Every message a test published, by what the node answered."""

    api: SignedClient
    acked: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)

    def publish(self, n: int) -> httpx.Response:
        r = publish(self.api, n)
        if r.status_code == 200:
            self.acked.append(f"m{n}")
        else:
            assert r.status_code in CODES, r.text
            assert r.json()["code"] == CODES[r.status_code]
            (self.refused if r.status_code == 503 else self.unknown).append(f"m{n}")
        return r

    def until_accepted(self) -> bool:
        """Publish new messages until one is acknowledged (60 s at most). Each try is a
        message of its own: one answered 504 may still be stored."""
        tries = iter(range(100, 1000))
        return bool(wait_for(lambda: self.publish(next(tries)).status_code == 200))

    def assert_stored(self) -> None:
        """Every acknowledged message once, in order, serials without gaps; a refused (503)
        one never; one whose outcome was unknown (504) at most once."""
        page = self.api.history(CHANNEL, limit="1000", direction="oldest_first").json()
        items = page["items"]
        assert [it["serial"] for it in items] == list(range(1, len(items) + 1))
        stored = [it["message"]["data"] for it in items]
        assert [d for d in stored if d in self.acked] == self.acked
        assert not set(stored) & set(self.refused)
        assert all(stored.count(d) <= 1 for d in self.unknown)
        assert set(stored) <= set(self.acked) | set(self.unknown)


def assert_recovered(node: NodeProcess, tally: Tally) -> None:
    """Once the broker is back: publishes are acknowledged again, ``/up`` is 200, history
    holds what :meth:`Tally.assert_stored` requires and the node logged no traceback."""
    assert tally.until_accepted(), "publishes never recovered"
    for n in range(7, 10):
        assert tally.publish(n).status_code == 200
    up = wait_for(lambda: httpx.get(f"{node.base_url}/up", timeout=5).status_code == 200)
    assert up, "/up never recovered"
    tally.assert_stored()
    assert "Traceback" not in node.log_path.read_text(errors="replace")


@pytest.mark.kafka
def test_a_frozen_broker_fails_publishes_cleanly_and_the_node_recovers(outage: Outage) -> None:
    node, tally = outage.node, Tally(outage.api)
    for n in range(3):
        assert tally.publish(n).status_code == 200
    outage.freeze()
    try:
        for n in range(3, 6):
            assert tally.publish(n).status_code in CODES
        assert httpx.get(f"{node.base_url}/live", timeout=5).status_code == 200
        assert httpx.get(f"{node.base_url}/up", timeout=5).status_code == 503
    finally:
        outage.thaw()

    assert_recovered(node, tally)


@pytest.mark.kafka
def test_a_killed_broker_restarted_on_its_data_loses_nothing_and_its_errors_do_not_flood(
    outage: Outage,
) -> None:
    node, tally = outage.node, Tally(outage.api)
    for n in range(3):
        assert tally.publish(n).status_code == 200
    outage.broker.crash()
    # Connections are refused at once now: aiokafka's clients retry and complain about it many
    # times a second (hundreds of ERROR lines in these seconds without the node's filter).
    outage_began = time.monotonic()
    n = 10_000
    while time.monotonic() - outage_began < 6:
        assert tally.publish(n).status_code in CODES
        n += 1
        time.sleep(0.05)
    assert httpx.get(f"{node.base_url}/up", timeout=5).status_code == 503
    library_lines = [
        line
        for line in node.log_path.read_text(errors="replace").splitlines()
        if " aiokafka" in line
    ]
    assert 0 < len(library_lines) <= 30, library_lines[:50]

    outage.broker.restart()
    assert_recovered(node, tally)


@pytest.mark.kafka
def test_a_node_stops_in_bounded_time_while_its_broker_is_frozen(outage: Outage) -> None:
    proc = outage.node.proc
    assert proc is not None
    assert publish(outage.api, 0).status_code == 200
    outage.freeze()
    try:
        assert publish(outage.api, 1).status_code in CODES  # something is left to deliver
        proc.send_signal(signal.SIGTERM)
        # Each step that needs the broker gives up on its own bound (announce, drain, the
        # producer's last deliveries: about 35 s in all here), so the stop does not wait for
        # the broker to come back.
        assert proc.wait(90) == 0
    finally:
        outage.thaw()
    assert "sockudo-node stopped cleanly" in outage.node.tail()
