"""The real ``sockudo-python`` 2.2.0 client with capability tokens (spec 02 §11).

``auth_callback`` mints short-lived tokens as an application backend would; the client connects
with the first in ``?token=`` and refreshes in place (``sockudo:auth``) at 80 % of the lifetime,
which the server answers with ``sockudo:auth_success`` before its own ``token_expired`` is due. A
static ``token=`` is never resent; a revocation through the HTTP API ends the connection
(``token_expired`` 40160, close 4009) and the client does not reconnect.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sockudo_python import ConnectionState, TokenAuthData  # type: ignore[import-untyped]

from tests.support.api import SignedClient
from tests.support.node import APP_ID, APP_KEY, APP_SECRET, NodeProcess
from tests.support.sockudo_client import sockudo_client
from tests.support.tokens import capability_token
from tests.support.ws import BACKENDS, node_for_backend
from tests.support.ws import publish as http_publish

pytestmark = pytest.mark.filterwarnings(
    "ignore:ConnectionClosed.code is deprecated:DeprecationWarning",
    "ignore:ConnectionClosed.reason is deprecated:DeprecationWarning",
)

FORMATS = ["json", "messagepack", "protobuf"]


@pytest.fixture(scope="module", params=BACKENDS)
def node(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[NodeProcess]:
    yield from node_for_backend(request, Path(tmp_path_factory.mktemp("py-tokens")) / "node")


@pytest.fixture(scope="module")
def api(node: NodeProcess) -> Iterator[SignedClient]:
    client = SignedClient(node.base_url, APP_ID, APP_KEY, APP_SECRET)
    yield client
    client.close()


def uid() -> str:
    return uuid.uuid4().hex[:8]


@pytest.mark.parametrize("fmt", FORMATS)
async def test_auth_callback_tokens_are_refreshed_in_place(
    node: NodeProcess, api: SignedClient, fmt: str
) -> None:
    tag = uid()
    allowed, denied = f"orders-{tag}", f"secret-{tag}"
    client_id = f"py-{tag}"
    serial = itertools.count(1)
    minted: list[str] = []

    async def auth_callback() -> TokenAuthData:
        jti = f"{tag}-{next(serial)}"
        minted.append(jti)
        token = capability_token({allowed: ["subscribe"]}, client_id=client_id, jti=jti, ttl_s=3)
        return TokenAuthData(token=token)

    async with sockudo_client(node, fmt, auth_callback=auth_callback) as c:
        _channel, log = await c.subscribed(allowed)
        # A channel the token does not grant: the server's 4009 reaches the client's error event.
        c.subscribe(denied)
        await c.wait(lambda: 4009 in c.error_codes(), "4009 for the denied channel")

        await c.wait(lambda: len(c.frames_named("sockudo:auth_success")) >= 1, "refresh", 6)
        [success, *_] = c.frames_named("sockudo:auth_success")
        assert success.data["client_id"] == client_id
        assert success.data["jti"] == f"{tag}-2"
        assert isinstance(success.data["exp"], int)
        refresh = c.sent_named("sockudo:auth")[0][1]  # sent in place, on the open socket
        assert json.loads(_claims(refresh["token"]))["jti"] == f"{tag}-2"
        assert c.connections == 1  # no reconnect was needed

        # Past the first token's exp: the refreshed token keeps the connection alive.
        await asyncio.sleep(1.5)
        assert c.frames_named("sockudo:token_expired") == []
        assert c.connection_state is ConnectionState.CONNECTED
        await http_publish(api, {"name": "msg", "channel": allowed, "data": json.dumps({"n": 1})})
        await c.wait(log.has_data({"n": 1}), "delivery after the refresh")
        assert c.closes == []


async def test_a_revoked_static_token_ends_the_connection(
    node: NodeProcess, api: SignedClient
) -> None:
    tag = uid()
    token = capability_token({"*": ["subscribe"]}, client_id=f"static-{tag}", jti=f"s-{tag}")
    async with sockudo_client(node, "json", token=token) as c:
        await c.subscribed(f"anything-{tag}")
        response = await asyncio.to_thread(
            api.request,
            "POST",
            f"/apps/{APP_ID}/revocations",
            body=json.dumps({"jti": f"s-{tag}"}).encode(),
        )
        assert response.json()["closed_connections"] == 1
        await c.wait(lambda: bool(c.closes), "the close")
        [expired] = c.frames_named("sockudo:token_expired")
        assert expired.data == {"code": 40160, "reason": "revoked"}
        assert c.closes == [4009]
        # 40160 is not retried in place, and 4009 is not reconnected.
        assert c.sent_named("sockudo:auth") == []
        await asyncio.sleep(1.0)
        assert c.connections == 1
        assert c.connection_state is not ConnectionState.CONNECTED


def _claims(token: str) -> str:
    part = token.split(".")[1]
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)).decode()
