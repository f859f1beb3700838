"""The real ``pusher`` Python SDK publishes to a node unchanged (REST side of spec 01 §5)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pusher
import pusher.errors
import pytest

from tests.support.api import SignedClient
from tests.support.node import APP_ID, APP_KEY, APP_SECRET, NodeProcess


@pytest.fixture
def node(tmp_path: Path) -> Iterator[NodeProcess]:
    n = NodeProcess(tmp_path / "node")
    n.start()
    try:
        yield n
    finally:
        n.kill()


def sdk(node: NodeProcess, secret: str = APP_SECRET) -> pusher.Pusher:
    return pusher.Pusher(
        app_id=APP_ID, key=APP_KEY, secret=secret, host="127.0.0.1", port=node.port, ssl=False
    )


def test_trigger_and_trigger_batch_land_in_history(node: NodeProcess) -> None:
    client = sdk(node)
    assert client.trigger("orders", "order.created", {"id": 1}) == {}
    assert client.trigger(["orders", "audit"], "order.paid", "plain text") == {}
    client.trigger_batch(
        [
            {"channel": "orders", "name": "order.shipped", "data": {"id": 1}},
            {"channel": "audit", "name": "note", "data": "hi"},
        ]
    )
    api = SignedClient(node.base_url, APP_ID, APP_KEY, APP_SECRET)
    try:
        orders = api.history("orders", direction="oldest_first").json()["items"]
        audit = api.history("audit", direction="oldest_first").json()["items"]
    finally:
        api.close()
    assert [(i["serial"], i["event_name"]) for i in orders] == [
        (1, "order.created"),
        (2, "order.paid"),
        (3, "order.shipped"),
    ]
    # The SDK JSON-encodes non-string data; the server keeps the string it was given.
    assert orders[0]["message"]["data"] == '{"id": 1}'
    assert [i["message"]["data"] for i in audit] == ["plain text", "hi"]


def test_wrong_secret_is_refused_as_bad_auth(node: NodeProcess) -> None:
    with pytest.raises(pusher.errors.PusherBadAuth):
        sdk(node, secret="wrong").trigger("orders", "order.created", {"id": 1})
