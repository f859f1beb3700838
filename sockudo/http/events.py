"""Publish routes: validate everything, append, wait for the fold, answer (spec 01 §5.1-5.2)."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from projections.folds.state import Outcome
from sockudo.channels import is_presence_channel
from sockudo.http import publish_request
from sockudo.http.context import HttpContext, context
from sockudo.http.signed import authenticate
from sockudo.node.services import PublishRequest


def ack(outcome: Outcome) -> dict[str, Any]:
    """The per-channel publish acknowledgement (spec 03 §6.1)."""
    out: dict[str, Any] = {
        "message_id": outcome.message_id,
        "stream_id": outcome.stream_id,
        "delivery_serial": outcome.delivery_serial,
    }
    if outcome.history_serial is not None:
        out["history_serial"] = outcome.history_serial
    return out


async def publish_events(request: Request) -> Response:
    ctx = context(request)
    app_id = request.path_params["app_id"]
    app, body = await authenticate(request, ctx, app_id)
    cmd = publish_request.parse_events_body(
        body, app, ctx.settings, idempotency_header=request.headers.get("x-idempotency-key")
    )
    outcomes = await ctx.channels.publish(app, _request(cmd))
    if not cmd.wants_channel_response:
        return JSONResponse({})
    return JSONResponse(
        {
            "channels": {
                channel: _channel_entry(ctx, app.id, cmd, channel, o)
                for channel, o in outcomes.items()
            }
        }
    )


async def publish_batch(request: Request) -> Response:
    """``POST /apps/{appId}/batch_events``: all items validated first, published in order."""
    ctx = context(request)
    app, body = await authenticate(request, ctx, request.path_params["app_id"])
    batch = publish_request.parse_batch_events_body(
        body, app, ctx.settings, idempotency_header=request.headers.get("x-idempotency-key")
    )
    slots: list[dict[str, Any]] = []
    for cmd in batch.items:
        outcomes = await ctx.channels.publish(app, _request(cmd))
        first = cmd.channels[0]
        slots.append(
            _channel_entry(ctx, app.id, cmd, first, outcomes[first]) if cmd.info_requested else {}
        )
    if not any(cmd.info_requested for cmd in batch.items):
        return JSONResponse({})
    return JSONResponse({"batch": slots})


def _request(cmd: publish_request.PublishCommand) -> PublishRequest:
    return PublishRequest(
        name=cmd.name,
        data=cmd.data,
        data_is_json=cmd.data_is_json,
        channels=cmd.channels,
        socket_id=cmd.socket_id,
        idempotency_key=cmd.idempotency_key,
        fingerprint=publish_request.fingerprint(cmd) if cmd.idempotency_key else None,
        extras_json=cmd.extras_json,
        tags=cmd.tags,
        message_id=cmd.message_id,
    )


def _channel_entry(
    ctx: HttpContext,
    app_id: str,
    cmd: publish_request.PublishCommand,
    channel: str,
    outcome: Outcome,
) -> dict[str, Any]:
    entry = ack(outcome)
    if "subscription_count" in cmd.info:
        # This node's sockets only: cross-node counts need the cluster view (later issue).
        entry["subscription_count"] = ctx.hub.subscription_count(app_id, channel)
    if "user_count" in cmd.info and is_presence_channel(channel):
        entry["user_count"] = 0
    return entry
