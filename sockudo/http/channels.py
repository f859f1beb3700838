"""Channel state routes: occupied channels, one channel, presence users (spec 01 §6).

Signed GETs (the ``pusher`` SDK's empty-body ``body_md5`` is accepted by the shared check).
Subscriber counts and occupancy come from this node's hub; presence user counts and members
from the presence projection, which every node folds from the log. A presence channel is
occupied while it has members anywhere or subscribers here.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from sockudo.channels import classify_channel, is_presence_channel, validate_channel_name
from sockudo.config import AppConfig
from sockudo.http.body import invalid_input as _invalid
from sockudo.http.context import HttpContext, context
from sockudo.http.signed import authenticate
from sockudo.ws import v1

__all__ = ["get_channel", "get_channel_users", "list_channels"]

_LIST_INFO = frozenset({"user_count", "subscription_count"})
_CHANNEL_INFO = frozenset({"user_count", "subscription_count", "cache"})


def _info(request: Request, known: frozenset[str]) -> frozenset[str]:
    """Recognised tokens of the comma-separated ``info`` parameter (others are ignored)."""
    raw = request.query_params.get("info") or ""
    return frozenset(token.strip() for token in raw.split(",")) & known


async def _channel(request: Request, ctx: HttpContext) -> tuple[AppConfig, str]:
    """Authenticate, then validate the path's channel name (already percent-decoded)."""
    app, _ = await authenticate(request, ctx, request.path_params["app_id"])
    channel = request.path_params["channel"]
    validate_channel_name(channel, app, ctx.settings)  # InvalidChannelName: 400 invalid_input
    return app, channel


async def list_channels(request: Request) -> Response:
    """``GET /apps/{appId}/channels`` (spec 01 §6.1): occupied channels only."""
    ctx = context(request)
    app, _ = await authenticate(request, ctx, request.path_params["app_id"])
    prefix = request.query_params.get("filter_by_prefix") or ""
    info = _info(request, _LIST_INFO)
    if "user_count" in info and not prefix.startswith("presence-"):
        raise _invalid("user_count may only be requested with filter_by_prefix=presence-")
    # Occupied cluster-wide: by members (the presence projection) or by subscribers on any
    # node (this node's sockets, the others' from their heartbeats).
    subscribed = ctx.subscriptions(app.id)
    members = ctx.channels.presence_channels(app, prefix)
    channels: dict[str, dict[str, Any]] = {}
    for channel in sorted(set(subscribed) | set(members)):
        if not channel.startswith(prefix):
            continue
        entry: dict[str, Any] = {}
        if "user_count" in info and is_presence_channel(channel):
            entry["user_count"] = members.get(channel, 0)
        if "subscription_count" in info:
            entry["subscription_count"] = subscribed.get(channel, 0)
        channels[channel] = entry
    return JSONResponse({"channels": channels})


async def get_channel(request: Request) -> Response:
    """``GET /apps/{appId}/channels/{channelName}`` (spec 01 §6.2)."""
    ctx = context(request)
    app, channel = await _channel(request, ctx)
    info = _info(request, _CHANNEL_INFO)
    presence = is_presence_channel(channel)
    if "user_count" in info and not presence:
        raise _invalid("user_count is only available for presence channels")
    subscriptions = ctx.subscription_count(app.id, channel)
    users = ctx.channels.presence_user_count(app, channel) if presence else 0
    out: dict[str, Any] = {"occupied": subscriptions > 0 or users > 0}
    if "subscription_count" in info:
        out["subscription_count"] = subscriptions
    if "user_count" in info:
        out["user_count"] = users
    if "cache" in info and classify_channel(channel).cache:
        cached = ctx.channels.cached_event(app, channel)
        if cached is not None:
            out["cache"] = {
                "data": v1.message(cached.event, channel, cached.data),
                "ttl": cached.ttl_s,
            }
    return JSONResponse(out)


async def get_channel_users(request: Request) -> Response:
    """``GET /apps/{appId}/channels/{channelName}/users`` (spec 01 §6.3): presence only."""
    ctx = context(request)
    app, channel = await _channel(request, ctx)
    if not is_presence_channel(channel):
        raise _invalid("Users can only be listed for presence channels")
    members = ctx.channels.presence_members(app, channel)
    return JSONResponse({"users": [{"id": m.user_id} for m in members]})
