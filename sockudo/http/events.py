"""Publish routes: validate everything, append, wait for the fold, answer (spec 01 §5.1-5.2)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from projections.folds.state import DUPLICATE, Outcome
from sockudo.channels import is_presence_channel
from sockudo.config import AppConfig
from sockudo.http import publish_request
from sockudo.http.body import utf8_header
from sockudo.http.context import HttpContext, context
from sockudo.http.rate_limit import BackendRateLimiter
from sockudo.http.signed import authenticate
from sockudo.node.services import PublishRequest

_LIMITER = "backend_rate_limiter"
"""Key of this node's :class:`BackendRateLimiter` in ``HttpContext.extra``."""


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


def rate_limiter(ctx: HttpContext) -> BackendRateLimiter:
    """This node's ``max_backend_events_per_second`` limiter (created on first use)."""
    limiter = ctx.extra.get(_LIMITER)
    if not isinstance(limiter, BackendRateLimiter):
        limiter = ctx.extra[_LIMITER] = BackendRateLimiter()
    return limiter


def _admit(
    ctx: HttpContext, app: AppConfig, commands: tuple[publish_request.PublishCommand, ...]
) -> None:
    """One unit per event x channel (spec 01 §3.14); a refusal publishes nothing (429)."""
    units = sum(len(cmd.channels) for cmd in commands)
    rate_limiter(ctx).acquire(app.id, units, app.limits.max_backend_events_per_second)


async def publish_events(request: Request) -> Response:
    ctx = context(request)
    app_id = request.path_params["app_id"]
    app, body = await authenticate(request, ctx, app_id)
    cmd = publish_request.parse_events_body(
        body,
        app,
        ctx.settings,
        idempotency_header=utf8_header(request.headers, "X-Idempotency-Key"),
    )
    _admit(ctx, app, (cmd,))
    outcomes = await ctx.channels.publish(app, _request(cmd))
    if not cmd.wants_channel_response:
        return JSONResponse({})
    return JSONResponse(
        {
            "channels": {
                channel: {**ack(o), **_counts(ctx, app, cmd, channel)}
                for channel, o in outcomes.items()
            }
        }
    )


async def publish_batch(request: Request) -> Response:
    """``POST /apps/{appId}/batch_events``: all items validated first, published in order.

    With ``X-Idempotency-Key`` the batch is the idempotent unit (spec 01 §5.3): item ``i``
    claims ``"{key}#{i}"`` in the batch namespace ``b`` with the fingerprint of the whole
    batch. A replay finds every item already folded and answers as the first request did; a
    different batch under the same key conflicts on item 0, before anything is published; an
    ``/events`` key (namespace ``e``) never collides with it.
    """
    ctx = context(request)
    app, body = await authenticate(request, ctx, request.path_params["app_id"])
    batch = publish_request.parse_batch_events_body(
        body,
        app,
        ctx.settings,
        idempotency_header=utf8_header(request.headers, "X-Idempotency-Key"),
    )
    _admit(ctx, app, batch.items)
    batch_fingerprint = publish_request.fingerprint(batch) if batch.batch_key else None
    requests = []
    for index, cmd in enumerate(batch.items):
        req = _request(cmd)
        if batch.batch_key is not None:
            req = replace(
                req,
                idempotency_key=f"{batch.batch_key}#{index}",
                idempotency_ns="b",
                fingerprint=batch_fingerprint,
            )
        # A key reused with other content anywhere in the batch rejects the whole batch
        # before anything is published (spec 01 §5.3).
        ctx.channels.check_idempotency(app, req)
        requests.append(req)
    # One append of every item, in item order, sharing fsyncs and fold batches.
    results = await ctx.channels.publish_many(app, requests)
    slots: list[dict[str, Any]] = []
    for cmd, outcomes in zip(batch.items, results, strict=True):
        skipped = batch.batch_key is None and any(o.kind == DUPLICATE for o in outcomes.values())
        # An item skipped as a duplicate of its own key answers `{}` (spec 01 §5.3).
        slots.append(
            _counts(ctx, app, cmd, cmd.channels[0]) if cmd.info_requested and not skipped else {}
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


def _counts(
    ctx: HttpContext, app: AppConfig, cmd: publish_request.PublishCommand, channel: str
) -> dict[str, Any]:
    """The ``info`` counts of one channel, cluster-wide: subscribers, presence users."""
    entry: dict[str, Any] = {}
    if "subscription_count" in cmd.info:
        entry["subscription_count"] = ctx.subscription_count(app.id, channel)
    if "user_count" in cmd.info and is_presence_channel(channel):
        entry["user_count"] = ctx.channels.presence_user_count(app, channel)
    return entry
