"""``POST /apps/{appId}/events``: validate, append, wait for the fold, answer (spec 01 §5.1)."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from projections.folds.state import Outcome
from sockudo.channels import is_presence_channel
from sockudo.http import publish_request
from sockudo.http.context import context
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
        body,
        app=app,
        settings=ctx.settings,
        idempotency_header=request.headers.get("x-idempotency-key"),
    )
    outcomes = await ctx.channels.publish(
        app,
        PublishRequest(
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
        ),
    )
    if not cmd.info and cmd.message_id is None:
        return JSONResponse({})
    channels: dict[str, Any] = {}
    for channel, outcome in outcomes.items():
        entry = ack(outcome)
        # Subscriber counts come from the socket layer (protocol issue); none exist yet.
        if "subscription_count" in cmd.info:
            entry["subscription_count"] = 0
        if "user_count" in cmd.info and is_presence_channel(channel):
            entry["user_count"] = 0
        channels[channel] = entry
    return JSONResponse({"channels": channels})
