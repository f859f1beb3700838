"""Node-wide HTTP policies of spec 01 §9: per-IP rate limits, the API server role, CORS."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from tests.support.api import SignedClient
from tests.support.node import APP_ID, APP_KEY, APP_SECRET, NodeProcess, running_node


def _start(path: Path, **env: str) -> Iterator[NodeProcess]:
    with running_node(NodeProcess(path, extra_env=env)) as node:
        yield node


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    yield from _start(
        Path(tmp_path_factory.mktemp("limited")) / "node",
        RATE_LIMITER_ENABLED="true",
        RATE_LIMITER_API_MAX_REQUESTS="3",
        RATE_LIMITER_API_WINDOW_SECONDS="60",
        RATE_LIMITER_API_TRUST_HOPS="1",
        RATE_LIMITER_WS_MAX_REQUESTS="2",
        RATE_LIMITER_WS_WINDOW_SECONDS="60",
        RATE_LIMITER_WS_TRUST_HOPS="1",
    )


@pytest.fixture(scope="module")
def api_role(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    yield from _start(
        Path(tmp_path_factory.mktemp("api-role")) / "node",
        SOCKUDO_SERVER_ROLE="api",
        CORS_ORIGINS="https://app.example",
    )


def ws_url(node: NodeProcess) -> str:
    return f"ws://127.0.0.1:{node.port}/app/{APP_KEY}?protocol=7"


async def test_websocket_connects_over_the_limit_get_429_before_upgrade(
    limited: NodeProcess,
) -> None:
    me = {"X-Forwarded-For": "203.0.113.7"}
    for _ in range(2):
        async with connect(ws_url(limited), additional_headers=me) as ws:
            assert '"pusher:connection_established"' in str(await ws.recv())
    with pytest.raises(InvalidStatus) as refused:
        await connect(ws_url(limited), additional_headers=me)
    response = refused.value.response
    assert response.status_code == 429
    assert response.headers["X-RateLimit-Limit"] == "2"
    assert response.headers["X-RateLimit-Remaining"] == "0"
    assert int(response.headers["Retry-After"]) > 0
    assert response.body is not None
    assert b'"error":"Too Many Requests"' in response.body
    # Another client address still connects, and the node keeps serving.
    other = {"X-Forwarded-For": "203.0.113.8"}
    async with connect(ws_url(limited), additional_headers=other) as ws:
        assert '"pusher:connection_established"' in str(await asyncio.wait_for(ws.recv(), 5))


def test_api_calls_over_the_limit_are_refused_before_anything_is_published(
    limited: NodeProcess,
) -> None:
    client = SignedClient(limited.base_url, APP_ID, APP_KEY, APP_SECRET)
    try:
        me = {"X-Forwarded-For": "198.51.100.1"}
        body = {"name": "e", "channel": "limited", "data": "x"}
        for _ in range(3):
            assert client.publish(body, headers=me).status_code == 200
        refused = client.publish(body, headers=me)
        assert refused.status_code == 429
        assert refused.json()["code"] == "rate_limited"
        assert refused.headers["X-RateLimit-Remaining"] == "0"
        assert "Retry-After" in refused.headers
        # Another client address is served: the refused publish appended nothing.
        other = {"X-Forwarded-For": "198.51.100.2"}
        path = f"/apps/{APP_ID}/channels/limited/history"
        history = client.request("GET", path, params={"limit": "10"}, headers=other)
        assert history.status_code == 200
        assert len(history.json()["items"]) == 3
    finally:
        client.close()


async def test_api_role_refuses_websockets_with_404(api_role: NodeProcess) -> None:
    with pytest.raises(InvalidStatus) as refused:
        await connect(ws_url(api_role))
    assert refused.value.response.status_code == 404


def test_api_role_serves_publish_and_history_but_no_channel_state(api_role: NodeProcess) -> None:
    client = SignedClient(api_role.base_url, APP_ID, APP_KEY, APP_SECRET)
    try:
        published = client.publish({"name": "e", "channel": "orders", "data": "x"})
        assert published.status_code == 200
        assert client.history("orders").json()["items"][0]["message"]["data"] == "x"
        for path in ("/channels", "/channels/orders", "/channels/presence-x/users"):
            assert client.request("GET", f"/apps/{APP_ID}{path}").status_code == 404
    finally:
        client.close()
    stats = httpx.get(f"{api_role.base_url}/stats", timeout=10).json()
    assert stats["server_role"] == "api"


def test_cors_preflight_and_simple_responses(api_role: NodeProcess) -> None:
    allowed = "https://app.example"
    preflight = httpx.options(
        f"{api_role.base_url}/apps/{APP_ID}/events",
        headers={
            "Origin": allowed,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "Content-Type",
        },
        timeout=10,
    )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == allowed
    assert "POST" in preflight.headers["access-control-allow-methods"]
    assert preflight.headers["access-control-allow-credentials"] == "true"
    live = httpx.get(f"{api_role.base_url}/live", headers={"Origin": allowed}, timeout=10)
    assert live.headers["access-control-allow-origin"] == allowed
    stranger = httpx.get(
        f"{api_role.base_url}/live", headers={"Origin": "https://evil.example"}, timeout=10
    )
    assert "access-control-allow-origin" not in stranger.headers
