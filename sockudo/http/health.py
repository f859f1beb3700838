"""Operational health routes: ``/live``, ``/up``, ``/up/{appId}`` (spec 01 §7.1)."""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from sockudo.http.context import HttpContext, context


def _text(body: str, status: int) -> Response:
    return PlainTextResponse(body, status_code=status, headers={"X-Health-Check": body})


async def live(request: Request) -> Response:
    return Response(status_code=200)


async def _critical_ok(ctx: HttpContext) -> bool:
    """The log answers, and no log partition is stalled on this node."""
    if ctx.channels.stalled_partitions():
        return False
    runtime = ctx.channels.runtime
    runner = runtime.runner
    if runner is None or runner.failure is not None:
        return False
    try:
        await asyncio.wait_for(
            runtime.log.bounds(runtime.topic, 0), ctx.settings.health_check_timeout_ms / 1000
        )
    except Exception:
        return False
    return True


async def up(request: Request) -> Response:
    ctx = context(request)
    if ctx.draining:
        return _text("DRAINING", 503)
    if not ctx.settings.apps or not await _critical_ok(ctx):
        return _text("ERROR", 503)
    return _text("OK", 200)


async def up_app(request: Request) -> Response:
    ctx = context(request)
    app = ctx.settings.app_by_id(request.path_params["app_id"])
    if app is None:
        return _text("NOT_FOUND", 404)
    if ctx.draining:
        return _text("DRAINING", 503)
    if not app.enabled or not await _critical_ok(ctx):
        return _text("ERROR", 503)
    return _text("OK", 200)
