"""Builds the Starlette application of a node and wires every route to the services facade."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable

from starlette._utils import is_async_callable
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.middleware.errors import ServerErrorMiddleware
from starlette.middleware.exceptions import ExceptionMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route, WebSocketRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

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


_HOT_ENDPOINTS = frozenset(
    {events.publish_events, events.publish_batch, history.get_history, websocket_v1}
)
"""Endpoints of most of a node's traffic: their routes are matched ahead of the router."""

_Template = tuple[str, ...]
"""A route path split on ``/``; ``{name}`` segments are parameters."""


def _match(template: _Template, parts: list[str]) -> dict[str, str] | None:
    """The path parameters when ``parts`` fits ``template`` (a parameter is one non-empty
    segment, as Starlette's default ``str`` convertor matches it), else ``None``."""
    params: dict[str, str] = {}
    for want, got in zip(template, parts, strict=True):
        if want[:1] == "{":
            if not got:
                return None
            params[want[1:-1]] = got
        elif want != got:
            return None
    return params


class NodeApp(Starlette):
    """Starlette with the hot routes dispatched ahead of the router.

    Publishes, history pages and WebSocket connections are most of a node's traffic. The
    router tries each route's regular expression in turn and the exception middleware adds a
    wrapper of its own: ~40 µs a request here. The routes of :data:`_HOT_ENDPOINTS` are found
    by splitting the path instead, and their own endpoint apps run inside the same middleware
    (server errors, CORS, metrics) with the same exception handlers, so answers are unchanged.
    They are matched first: no other route may match the same paths.
    """

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        # A path with a trailing slash is unmatched like any other (spec 01 §1): Starlette
        # would redirect it to the route without one.
        self.router.redirect_slashes = False
        handlers = {k: v for k, v in self.exception_handlers.items() if k not in (500, Exception)}
        # The handler tables the exception middleware would put in the scope, built by it.
        tables = ExceptionMiddleware(self.router, handlers=handlers, debug=self.debug)
        self._handlers = (tables._exception_handlers, tables._status_handlers)
        # (scope type, method, segments) -> the routes' templates and wrapped endpoint apps.
        self._fast: dict[tuple[str, str, int], list[tuple[_Template, ASGIApp]]] = {}
        for route in self.router.routes:
            if not isinstance(route, Route | WebSocketRoute):
                continue
            if route.endpoint not in _HOT_ENDPOINTS or ":" in route.path:
                continue  # a typed convertor ({x:int}) is the router's to match
            template = tuple(route.path.split("/"))
            app = self._wrap(route)
            if isinstance(route, WebSocketRoute):
                keys = [("websocket", "", len(template))]
            else:
                keys = [("http", method, len(template)) for method in route.methods or ()]
            for key in keys:
                self._fast.setdefault(key, []).append((template, app))

    def _wrap(self, route: Route | WebSocketRoute) -> ASGIApp:
        """The route's app inside the middleware ``build_middleware_stack`` puts around the
        router, or what that middleware comes to (see :class:`PlainHttp`)."""
        if isinstance(route, WebSocketRoute):
            return route.app  # server errors, CORS and metrics all pass WebSockets through
        error_handler = self.exception_handlers.get(Exception, self.exception_handlers.get(500))
        middleware = [
            Middleware(ServerErrorMiddleware, handler=error_handler, debug=self.debug),
            *self.user_middleware,
        ]
        stack = route.app
        for cls, args, kwargs in reversed(middleware):
            stack = cls(stack, *args, **kwargs)
        if self.debug or not is_async_callable(error_handler) or not _ours(self.user_middleware):
            return stack
        return PlainHttp(route.app, stack, error_handler)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http" or kind == "websocket":
            parts = scope["path"].split("/")
            for template, app in self._fast.get((kind, scope.get("method", ""), len(parts)), ()):
                params = _match(template, parts)
                if params is not None:
                    scope["app"] = self
                    scope["starlette.exception_handlers"] = self._handlers
                    scope["path_params"] = params
                    await app(scope, receive, send)
                    return
        await super().__call__(scope, receive, send)


def _ours(middleware: list[Middleware]) -> bool:
    """Whether ``middleware`` is the stack :class:`PlainHttp` stands for: CORS, then metrics."""
    classes: list[object] = [m.cls for m in middleware]
    return classes == [CORSMiddleware, ops.HttpMetricsMiddleware]


class PlainHttp:
    """A hot HTTP route's middleware in one layer, for requests without an ``Origin`` header.

    Starlette nests server errors, CORS and metrics around the endpoint: three layers, a
    ``send`` wrapper each and a ``Headers`` parse, about 50 µs of a publish here. Without an
    ``Origin`` header, CORS only adds ``Vary: Origin`` to the response, so one layer does all
    three: count the body bytes both ways (``ops.HttpMetricsMiddleware``), add the header, and
    answer an unhandled exception with the 500 handler, then raise it (Starlette's
    ``ServerErrorMiddleware``). A request with an ``Origin`` goes through the real stack.
    ``tests/integration/test_fast_dispatch.py`` compares answers and metrics with the router's.
    """

    __slots__ = ("app", "handler", "stack")

    def __init__(
        self,
        app: ASGIApp,
        stack: ASGIApp,
        handler: Callable[[Request, Exception], Awaitable[Response]],
    ) -> None:
        self.app = app
        self.stack = stack
        self.handler = handler

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        for name, _ in scope["headers"]:
            if name == b"origin":
                await self.stack(scope, receive, send)
                return
        app_id = ops.metered_app(scope)
        counter = ops.BodyBytes(app_id, receive) if app_id is not None else None
        started = False

        async def plain_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message["headers"] = _vary_origin(message.get("headers", ()))
            elif counter is not None:
                counter.count_sent(message)
            await send(message)

        try:
            try:
                await self.app(scope, receive if counter is None else counter.receive, plain_send)
            finally:
                if counter is not None:
                    counter.record()
        except Exception as exc:
            response = await self.handler(Request(scope), exc)
            if not started:
                await response(scope, receive, send)
            raise


def _vary_origin(headers: Iterable[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """``headers`` with ``Vary`` extended by ``Origin`` as Starlette's CORS middleware sets it:
    the values joined into the first ``vary`` entry, later ones removed."""
    out = list(headers)
    found = [i for i, (name, _) in enumerate(out) if name == b"vary"]
    if not found:
        out.append((b"vary", b"Origin"))
        return out
    values = [out[i][1].decode("latin-1") for i in found]
    for i in reversed(found[1:]):
        del out[i]
    out[found[0]] = (b"vary", ", ".join([*values, "Origin"]).encode("latin-1"))
    return out
