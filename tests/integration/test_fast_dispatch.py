"""The node app's fast lane answers every request exactly as the generic Starlette stack does.

``NodeApp`` sends publishes, history pages and WebSocket connections straight to their
endpoints; each request here goes through both paths on a real runtime (embedded log, RocksDB
projection) and the two answers must be identical, metrics included.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from starlette.applications import Starlette

from sockudo import metrics
from sockudo.auth import signed_query_params
from sockudo.config import load_settings
from sockudo.node.app import NodeApp, build_app
from sockudo.node.runtime import Runtime
from sockudo.node.services import ChannelService

KEY, SECRET, APP_ID = "app-key", "app-secret", "app-id"


@pytest.fixture
async def app(tmp_path: Path) -> AsyncIterator[NodeApp]:
    settings = load_settings(None, overrides={"data_dir": str(tmp_path / "data")}, environ={})
    runtime = Runtime(settings)
    await runtime.start()
    try:
        built = build_app(ChannelService(runtime))
        assert isinstance(built, NodeApp)
        yield built
    finally:
        await runtime.stop()


def request(
    method: str,
    path: str,
    body: bytes = b"",
    *,
    params: dict[str, str] | None = None,
    sign: bool = True,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> dict[str, Any]:
    query = dict(params or {})
    if sign:
        query = signed_query_params(
            KEY, SECRET, method, path, timestamp=int(time.time()), body=body, params=query
        )
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": urlencode(query).encode(),
        "headers": [(b"host", b"node"), (b"content-type", b"application/json"), *(headers or [])],
        "server": ("127.0.0.1", 6001),
        "client": ("127.0.0.1", 50000),
        "_body": body,
    }


routed: list[bool] = []
"""Per answered request: did the router see it (it marks the scope)?"""


async def answer(
    call: Any, scope: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> tuple[int, list[tuple[bytes, bytes]], bytes, list[tuple[str, int, int]]]:
    body = scope.pop("_body")
    sent: list[dict[str, Any]] = []
    calls: list[tuple[str, int, int]] = []
    monkeypatch.setattr(metrics, "http_call", lambda *args: calls.append(args))

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    with contextlib.suppress(Exception):  # ServerErrorMiddleware answers, then re-raises
        await call(scope, receive, send)
    routed.append("router" in scope)
    start = sent[0]
    assert start["type"] == "http.response.start"
    payload = b"".join(m.get("body", b"") for m in sent[1:])
    return start["status"], list(start["headers"]), payload, calls


async def both(
    app: NodeApp, make: Any, monkeypatch: pytest.MonkeyPatch, *, fast_lane: bool = True
) -> tuple[int, list[tuple[bytes, bytes]], bytes, list[tuple[str, int, int]]]:
    """The node app's answer, after checking the generic stack gives the same one.

    ``fast_lane``: whether the node app must answer without its router."""
    generic = await answer(lambda *a: Starlette.__call__(app, *a), make(), monkeypatch)
    assert routed[-1]
    fast = await answer(app, make(), monkeypatch)
    assert routed[-1] is not fast_lane
    assert fast == generic
    return fast


def publish_body(channel: str = "room", data: str = "hello") -> bytes:
    return json.dumps({"name": "ev", "channels": [channel], "data": data}).encode()


async def test_publish_and_its_errors(app: NodeApp, monkeypatch: pytest.MonkeyPatch) -> None:
    path = f"/apps/{APP_ID}/events"
    status, _, body, calls = await both(
        app, lambda: request("POST", path, publish_body()), monkeypatch
    )
    assert (status, json.loads(body)) == (200, {})
    assert calls == [(APP_ID, len(publish_body()), len(body))]

    status, _, body, _ = await both(app, lambda: request("POST", path, b"{not json"), monkeypatch)
    assert status == 400

    def bad_signature() -> dict[str, Any]:
        scope = request("POST", path, publish_body())
        scope["query_string"] = scope["query_string"].replace(
            b"auth_signature=", b"auth_signature=0"
        )
        return scope

    status, _, body, _ = await both(app, bad_signature, monkeypatch)
    assert status == 401

    status, _, _, _ = await both(
        app, lambda: request("POST", "/apps/nope/events", publish_body()), monkeypatch
    )
    assert status in (401, 404)

    batch = json.dumps({"batch": [{"name": "ev", "channel": "room", "data": "x"}]}).encode()
    status, _, body, _ = await both(
        app, lambda: request("POST", f"/apps/{APP_ID}/batch_events", batch), monkeypatch
    )
    assert status == 200


async def test_history_pages_and_errors(app: NodeApp, monkeypatch: pytest.MonkeyPatch) -> None:
    for i in range(3):
        scope = request("POST", f"/apps/{APP_ID}/events", publish_body(data=f"m{i}"))
        status, _, _, _ = await answer(app, scope, monkeypatch)
        assert status == 200
    path = f"/apps/{APP_ID}/channels/room/history"
    status, _, body, calls = await both(
        app, lambda: request("GET", path, params={"limit": "2"}), monkeypatch
    )
    page = json.loads(body)
    assert status == 200
    assert len(page["items"]) == 2
    assert page["has_more"] is True
    assert calls == [(APP_ID, 0, len(body))]

    status, _, body, _ = await both(
        app, lambda: request("GET", path, params={"cursor": "garbage"}), monkeypatch
    )
    assert status == 400


async def test_cors_and_routing_edges(app: NodeApp, monkeypatch: pytest.MonkeyPatch) -> None:
    # Wrong method: the router's 405, which the node's handler answers as its 404.
    status, _, _, _ = await both(
        app, lambda: request("GET", f"/apps/{APP_ID}/events"), monkeypatch, fast_lane=False
    )
    assert status == 404
    # An Origin header: CORS, inside the fast lane too, adds its headers.
    status, headers, _, _ = await both(
        app,
        lambda: request(
            "POST",
            f"/apps/{APP_ID}/events",
            publish_body(),
            headers=[(b"origin", b"https://example.com")],
        ),
        monkeypatch,
    )
    assert status == 200
    assert any(name == b"access-control-allow-origin" for name, _ in headers)
    # Empty path segments are not routes.
    status, _, _, _ = await both(
        app, lambda: request("POST", "/apps//events"), monkeypatch, fast_lane=False
    )
    assert status == 404
    status, _, _, _ = await both(
        app,
        lambda: request("GET", f"/apps/{APP_ID}/channels//history"),
        monkeypatch,
        fast_lane=False,
    )
    assert status == 404


async def test_plain_requests_get_vary_origin_and_errors_the_500_handler(
    app: NodeApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sockudo.node.app import PlainHttp

    lanes = [lane for routes in app._fast.values() for _, lane in routes]
    # publish, batch publish, history (GET and HEAD)
    assert sum(isinstance(lane, PlainHttp) for lane in lanes) == 4
    path = f"/apps/{APP_ID}/events"
    status, headers, _, _ = await both(
        app, lambda: request("POST", path, publish_body()), monkeypatch
    )
    assert (b"vary", b"Origin") in headers  # Starlette's CORS adds it without an Origin too

    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("an unexpected failure")

    monkeypatch.setattr(ChannelService, "publish", broken)
    status, headers, _, calls = await both(
        app, lambda: request("POST", path, publish_body()), monkeypatch
    )
    assert status == 500
    assert b"vary" not in dict(headers)  # the 500 is sent past CORS, as Starlette does
    assert calls == [(APP_ID, len(publish_body()), 0)]


@pytest.mark.parametrize(
    "headers",
    [
        [],
        [(b"content-type", b"text/plain")],
        [(b"vary", b"Accept")],
        [(b"vary", b"Accept"), (b"x", b"1"), (b"vary", b"Cookie")],
    ],
)
def test_vary_origin_is_what_starlette_cors_sets(headers: list[tuple[bytes, bytes]]) -> None:
    from starlette.datastructures import MutableHeaders

    from sockudo.node.app import _vary_origin

    message: dict[str, Any] = {"headers": list(headers)}
    expected = MutableHeaders(scope=message)
    expected["Vary"] = ", ".join([*expected.getlist("Vary"), "Origin"])
    assert _vary_origin(headers) == message["headers"]
