"""Operator endpoints and Prometheus metrics end to end (spec 01 §7.2-7.4, checks 57-58)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import ClientConnection, connect

from sockudo.http.ops import parse_meminfo
from tests.support.api import SignedClient
from tests.support.node import APP_ID, APP_KEY, APP_SECRET, NodeProcess, running_node

TIMEOUT = 10.0


def _start(path: Path, **env: str) -> Iterator[NodeProcess]:
    with running_node(NodeProcess(path, extra_env=env)) as node:
        yield node


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    yield from _start(Path(tmp_path_factory.mktemp("ops")) / "node")


@pytest.fixture(scope="module")
def quiet_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    yield from _start(
        Path(tmp_path_factory.mktemp("ops-quiet")) / "node",
        HTTP_API_USAGE_ENABLED="false",
        METRICS_ENABLED="false",
    )


@pytest.fixture(scope="module")
def api(node: NodeProcess) -> Iterator[SignedClient]:
    client = SignedClient(node.base_url, APP_ID, APP_KEY, APP_SECRET)
    yield client
    client.close()


async def recv(ws: ClientConnection) -> dict[str, Any]:
    frame = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
    assert isinstance(frame, dict)
    return frame


async def open_socket(node: NodeProcess, channel: str | None = None) -> ClientConnection:
    ws = await connect(f"ws://127.0.0.1:{node.port}/app/{APP_KEY}?protocol=7")
    assert (await recv(ws))["event"] == "pusher:connection_established"
    if channel is not None:
        await ws.send(json.dumps({"event": "pusher:subscribe", "data": {"channel": channel}}))
        assert (await recv(ws))["event"] == "pusher_internal:subscription_succeeded"
    return ws


def eventually(check: Callable[[], Any], timeout: float = 5.0) -> Any:
    """``check()`` once it stops raising AssertionError (the server side closes asynchronously)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return check()
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def scrape(node: NodeProcess) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Sample name → sorted labels → value, parsed (not string-compared) from ``/metrics``."""
    r = httpx.get(f"http://127.0.0.1:{node.metrics_port}/metrics", timeout=5)
    assert r.status_code == 200
    assert r.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def labels(node: NodeProcess, app_id: str = APP_ID, **extra: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted({"app_id": app_id, "port": str(node.port), **extra}.items()))


# --- /usage and /stats --------------------------------------------------------------------------


def test_parse_meminfo() -> None:
    info = parse_meminfo("MemTotal:       16000 kB\nMemAvailable:    4000 kB\nHugePages_Total: 0\n")
    assert info == {"MemTotal": 16000 * 1024, "MemAvailable": 4000 * 1024, "HugePages_Total": 0}


def test_usage(node: NodeProcess) -> None:
    r = httpx.get(f"{node.base_url}/usage")
    assert r.status_code == 200
    memory = r.json()["memory"]
    assert set(memory) == {"free", "used", "total", "percent"}
    assert memory["total"] > 0
    assert memory["free"] + memory["used"] == memory["total"]
    assert memory["percent"] == pytest.approx(memory["used"] / memory["total"] * 100, abs=0.01)


async def test_stats_with_one_subscribed_connection(node: NodeProcess) -> None:
    ws = await open_socket(node, "ops-stats")
    try:

        def check() -> dict[str, Any]:
            body = httpx.get(f"{node.base_url}/stats").json()
            assert [a["app_id"] for a in body["apps"]] == [APP_ID]
            assert body["apps"][0]["connections"] == 1
            return dict(body)

        body = await asyncio.to_thread(eventually, check)
        alias = (await asyncio.to_thread(httpx.get, f"{node.base_url}/operator/stats")).json()
    finally:
        await ws.close()

    assert set(body["memory"]) == {"free", "used", "total", "percent"}
    for section in ("history", "presence_history"):
        assert body[section] == {
            "enabled": True,
            "backend": "event_log",
            "state_authority": "event_log",
            "degraded_channels": 0,
            "reset_required_channels": 0,
            "queue_depth": body[section]["queue_depth"],
        }
        assert body[section]["queue_depth"] >= 0
    occupancy = {
        "channels": 1,
        "subscriptions": 1,
        "presence_channels": 0,
        "presence_subscriptions": 0,
        "presence_members": 0,
    }
    per_app = {
        "connections": 1,
        "authenticated_connections": 0,
        "users": 0,
        "connections_with_meta": 0,
        "occupancy": occupancy,
    }
    assert body["apps"] == [{"app_id": APP_ID, **per_app}]
    assert body["totals"] == {"apps": 1, **per_app}
    assert "server_role" not in body
    assert alias["apps"] == body["apps"]


@pytest.mark.parametrize("path", ["/usage", "/stats", "/operator/stats"])
def test_usage_disabled_is_plain_404(quiet_node: NodeProcess, path: str) -> None:
    r = httpx.get(f"{quiet_node.base_url}{path}")
    assert r.status_code == 404
    assert r.headers["content-type"].startswith("text/plain")
    assert r.text == "404 NOT FOUND"


# --- /metrics -----------------------------------------------------------------------------------


async def test_metrics_after_one_connection_and_one_publish(
    node: NodeProcess, api: SignedClient
) -> None:
    ws = await open_socket(node, "ops-metrics")
    try:
        r = await asyncio.to_thread(
            api.publish, {"name": "e", "channel": "ops-metrics", "data": "{}"}
        )
        assert r.status_code == 200, r.text
        assert (await recv(ws))["event"] == "e"
        await asyncio.to_thread(httpx.get, f"{node.base_url}/up")

        def check() -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
            samples = scrape(node)
            assert samples["sockudo_connected"][labels(node)] == 1
            return samples

        samples = await asyncio.to_thread(eventually, check)
    finally:
        await ws.close()

    mine = labels(node)
    assert samples["sockudo_new_connections_total"][mine] >= 1
    # connection_established, subscription_succeeded and the event at least.
    assert samples["sockudo_ws_messages_sent_total"][mine] >= 3
    assert samples["sockudo_ws_messages_received_total"][mine] >= 1
    assert samples["sockudo_http_calls_received_total"][mine] >= 1
    assert samples["sockudo_socket_transmitted_bytes"][mine] > 0
    assert samples["sockudo_socket_received_bytes"][mine] > 0
    assert samples["sockudo_http_received_bytes"][mine] > 0
    assert samples["sockudo_http_transmitted_bytes"][mine] > 0
    # `/up` names no app: counted under an empty app_id.
    assert samples["sockudo_http_calls_received_total"][labels(node, "")] >= 1
    public = labels(node, channel_type="public")
    assert samples["sockudo_channel_subscriptions_total"][public] >= 1
    assert samples["sockudo_active_channels"][public] >= 1
    assert "process_resident_memory_bytes" in samples


async def test_metrics_count_rejections(node: NodeProcess) -> None:
    async with connect(f"ws://127.0.0.1:{node.port}/app/no-such-key") as ws:
        assert (await recv(ws))["data"]["code"] == 4001
    errors = scrape(node)["sockudo_connection_errors_total"]
    assert errors[labels(node, "", error_type="app_not_found")] >= 1


def test_metrics_path_only(node: NodeProcess) -> None:
    r = httpx.get(f"http://127.0.0.1:{node.metrics_port}/other")
    assert r.status_code == 404


def test_metrics_disabled_nothing_listens(quiet_node: NodeProcess) -> None:
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{quiet_node.metrics_port}/metrics", timeout=2)
