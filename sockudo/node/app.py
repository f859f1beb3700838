"""Builds the Starlette application of a node and wires every route to the services facade."""

from __future__ import annotations

import time
from collections.abc import Callable

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.middleware.errors import ServerErrorMiddleware
from starlette.middleware.exceptions import ExceptionMiddleware
from starlette.routing import Route, WebSocketRoute, request_response, websocket_session
from starlette.types import ASGIApp, Receive, Scope, Send

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
    app = NodeApp(
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


_Endpoint = Callable[..., object]
_FAST_HTTP: dict[tuple[str, int, str], tuple[_Endpoint, tuple[str, ...]]] = {
    ("POST", 4, "events"): (events.publish_events, ("app_id",)),
    ("POST", 4, "batch_events"): (events.publish_batch, ("app_id",)),
    ("GET", 6, "history"): (history.get_history, ("app_id", "channel")),
}
"""(method, path segments, last segment) → endpoint and its path parameters (segments 2, 4)."""


class NodeApp(Starlette):
    """Starlette with the hot routes dispatched ahead of the router.

    Publishes, history pages and WebSocket connections are most of a node's traffic. The
    router tries each route's regular expression in turn and the exception middleware adds a
    wrapper of its own: ~40 µs a request here. These requests go straight to the endpoint app
    the route would run, wrapped in the same middleware (server errors, CORS, metrics) with the
    same exception handlers, so their answers are unchanged.
    """

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        handlers = {k: v for k, v in self.exception_handlers.items() if k not in (500, Exception)}
        # The handler tables the exception middleware would put in the scope, built by it.
        tables = ExceptionMiddleware(self.router, handlers=handlers, debug=self.debug)
        self._handlers = (tables._exception_handlers, tables._status_handlers)
        self._fast = {
            key: (self._wrap(request_response(endpoint)), names)  # type: ignore[arg-type]
            for key, (endpoint, names) in _FAST_HTTP.items()
        }
        self._websocket = self._wrap(websocket_session(websocket_v1))

    def _wrap(self, app: ASGIApp) -> ASGIApp:
        """``app`` inside the middleware ``build_middleware_stack`` puts around the router."""
        error_handler = self.exception_handlers.get(Exception, self.exception_handlers.get(500))
        middleware = [
            Middleware(ServerErrorMiddleware, handler=error_handler, debug=self.debug),
            *self.user_middleware,
        ]
        for cls, args, kwargs in reversed(middleware):
            app = cls(app, *args, **kwargs)
        return app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            parts = scope["path"].split("/")
            found = self._fast.get((scope["method"], len(parts), parts[-1]))
            if (
                found is not None
                and parts[1] == "apps"
                and parts[2]
                and (len(parts) == 4 or (parts[3] == "channels" and parts[4]))
            ):
                app, names = found
                scope["app"] = self
                scope["starlette.exception_handlers"] = self._handlers
                scope["path_params"] = dict(zip(names, parts[2::2], strict=False))
                await app(scope, receive, send)
                return
        elif kind == "websocket":
            path = scope["path"]
            if path.startswith("/app/") and len(path) > 5 and "/" not in path[5:]:
                scope["app"] = self
                scope["starlette.exception_handlers"] = self._handlers
                scope["path_params"] = {"app_key": path[5:]}
                await self._websocket(scope, receive, send)
                return
        await super().__call__(scope, receive, send)
