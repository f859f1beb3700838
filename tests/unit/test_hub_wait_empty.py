"""``Hub.wait_empty``: shutdown waits for the last socket to leave."""

from __future__ import annotations

import asyncio

from sockudo.node.hub import Hub, Outbox


async def test_wait_empty_returns_when_the_last_socket_leaves() -> None:
    hub = Hub()
    await asyncio.wait_for(hub.wait_empty(), 1)  # nobody connected: at once
    hub.add(Outbox("1.1", "app"))
    hub.add(Outbox("1.2", "app"))
    waiter = asyncio.create_task(hub.wait_empty())
    await asyncio.sleep(0.01)
    hub.remove("1.1")
    await asyncio.sleep(0.01)
    assert not waiter.done()
    hub.remove("1.2")
    await asyncio.wait_for(waiter, 1)
    hub.add(Outbox("1.3", "app"))  # a later wait is not satisfied by the earlier emptying
    again = asyncio.create_task(hub.wait_empty())
    await asyncio.sleep(0.01)
    assert not again.done()
    hub.remove("1.3")
    await asyncio.wait_for(again, 1)
