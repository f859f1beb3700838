"""Builds the Starlette application of a node and wires every route to the services facade."""

from __future__ import annotations

import time
from collections.abc import Callable

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.routing import Route, WebSocketRoute

from sockudo.errors import SockudoError
from sockudo.http import channels as channels_api
from sockudo.http import events, health, history, ops, revocations, users
from sockudo.http.context import HttpContext
from sockudo.http.errors import handle_exception, not_found
from sockudo.node.hub import Hub
from sockudo.node.replay import HotReplay
from sockudo.node.services import ChannelService
from sockudo.ws.endpoint import websocket_v1


def build_app(
    channels: ChannelService,
    *,
    clock: Callable[[], float] = time.time,
    hub: Hub | None = None,
    hot: HotReplay | None = None,
) -> Starlette:
    routes = [
        WebSocketRoute("/app/{app_key}", websocket_v1),
        Route("/live", health.live, methods=["GET"]),
        Route("/up", health.up, methods=["GET"]),
        Route("/up/{app_id}", health.up_app, methods=["GET"]),
        *ops.routes(channels.settings),
        Route("/apps/{app_id}/events", events.publish_events, methods=["POST"]),
        Route("/apps/{app_id}/batch_events", events.publish_batch, methods=["POST"]),
        Route(
            "/apps/{app_id}/users/{user_id}/terminate_connections",
            users.terminate_connections,
            methods=["POST"],
        ),
        Route(
            "/users/{user_id}/terminate_connections",
            users.terminate_connections_alias,
            methods=["POST"],
        ),
        Route(
            "/apps/{app_id}/users/{user_id}/force_reconnect",
            users.force_reconnect,
            methods=["POST"],
        ),
        Route("/apps/{app_id}/revocations", revocations.revoke_tokens, methods=["POST"]),
        Route("/apps/{app_id}/channels/{channel}/history", history.get_history, methods=["GET"]),
        Route(
            "/apps/{app_id}/channels/{channel}/history/state",
            history.get_history_state,
            methods=["GET"],
        ),
        Route(
            "/apps/{app_id}/channels/{channel}/history/reset",
            history.post_history_reset,
            methods=["POST"],
        ),
        Route(
            "/apps/{app_id}/channels/{channel}/history/purge",
            history.post_history_purge,
            methods=["POST"],
        ),
    ]
    settings = channels.settings
    if settings.server_role != "api":
        # Channel state lives in this node's sockets: an API-role node has none (spec 01 §9).
        routes += [
            Route("/apps/{app_id}/channels", channels_api.list_channels, methods=["GET"]),
            Route("/apps/{app_id}/channels/{channel}", channels_api.get_channel, methods=["GET"]),
            Route(
                "/apps/{app_id}/channels/{channel}/users",
                channels_api.get_channel_users,
                methods=["GET"],
            ),
        ]
    app = Starlette(
        routes=routes,
        middleware=[
            Middleware(
                CORSMiddleware,
                allow_origins=list(settings.cors_origins),
                allow_methods=list(settings.cors_methods),
                allow_headers=list(settings.cors_headers),
                allow_credentials=settings.cors_credentials,
            ),
            Middleware(ops.HttpMetricsMiddleware),
        ],
        exception_handlers={
            SockudoError: handle_exception,
            Exception: handle_exception,
            404: not_found,
            HTTPException: not_found,
        },
    )
    app.state.ctx = HttpContext(
        settings=channels.settings,
        channels=channels,
        clock=clock,
        hub=hub or Hub(),
        hot=hot or HotReplay(),
    )
    return app
