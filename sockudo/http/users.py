"""User routes: terminate a user's connections or make them reconnect (spec 01 §5.4).

Each is one ``user.terminate`` event in the log; every node folds it and closes its own
sockets of the user (4009, or 4200 for ``force_reconnect``). An unknown user is a no-op.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from sockudo.errors import ApiError
from sockudo.http.context import context
from sockudo.http.signed import authenticate

__all__ = ["force_reconnect", "terminate_connections", "terminate_connections_alias"]


async def _act(request: Request, route_app_id: str | None, *, reconnect: bool) -> Response:
    ctx = context(request)
    # The alias has no app in its path: the app is the one `auth_key` names, and the path is
    # signed exactly as received (spec 01 §4.1).
    app, _ = await authenticate(request, ctx, route_app_id)
    user_id = request.path_params["user_id"]
    if not user_id:
        raise ApiError(400, "invalid_input", "User id must not be empty")
    await ctx.channels.terminate_user(app, user_id, reconnect=reconnect)
    return JSONResponse({})


async def terminate_connections(request: Request) -> Response:
    """``POST /apps/{appId}/users/{userId}/terminate_connections``."""
    return await _act(request, request.path_params["app_id"], reconnect=False)


async def terminate_connections_alias(request: Request) -> Response:
    """``POST /users/{userId}/terminate_connections`` (what ``pusher`` 3.3.4 sends)."""
    return await _act(request, None, reconnect=False)


async def force_reconnect(request: Request) -> Response:
    """``POST /apps/{appId}/users/{userId}/force_reconnect``."""
    return await _act(request, request.path_params["app_id"], reconnect=True)
