"""Channel history routes: page, state, reset and purge (spec 03 §3.1-3.4)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from projections.reads.history import DIRECTIONS, MAX_BOUND, HistoryQuery, decode_cursor
from sockudo import inbound
from sockudo.channels import resolve_channel_policy, validate_channel_name
from sockudo.config import AppConfig, Settings
from sockudo.errors import ApiError
from sockudo.http.body import invalid_input as _invalid
from sockudo.http.body import json_object
from sockudo.http.context import HttpContext, context
from sockudo.http.signed import authenticate, authenticate_query, query_params
from sockudo.node.services import StreamControl


def _int_param(params: Mapping[str, str], name: str, alias: str | None = None) -> int | None:
    raw = params.get(name)
    if raw is None and alias is not None:
        raw = params.get(alias)
    if raw is None or raw == "":
        return None
    value = inbound.decimal(raw)
    if value is None:
        raise _invalid(f"{name} must be an integer")
    if not 0 <= value <= MAX_BOUND:
        raise _invalid(f"{name} must be between 0 and {MAX_BOUND}")
    return value


def parse_history_query(params: Mapping[str, str], settings: Settings) -> HistoryQuery:
    """Validate query parameters in the order of spec 03 §3.1."""
    raw_dir = params.get("direction", "newest_first")
    direction = DIRECTIONS.get(raw_dir.lower())
    if direction is None:
        raise _invalid(
            f"Invalid direction '{raw_dir}'. Accepted values: newest_first, oldest_first, "
            "backwards, forwards"
        )
    cap = settings.history_max_page_size
    limit = cap
    if params.get("limit") is not None:
        parsed = inbound.decimal(params["limit"])
        if parsed is None:
            raise _invalid("History limit must be a positive integer")
        limit = parsed
        if limit == 0:
            raise _invalid("History limit must be greater than 0")
        if limit < 0:
            raise _invalid("History limit must be a positive integer")
        limit = min(limit, cap)
    cursor = params.get("cursor") or None
    if cursor is not None:
        decode_cursor(cursor)  # a bad cursor is reported before the bounds (spec 03 §3.1)
    query = HistoryQuery(
        limit=limit,
        direction=direction,
        cursor=cursor,
        start_serial=_int_param(params, "start_serial"),
        end_serial=_int_param(params, "end_serial"),
        start_time_ms=_int_param(params, "start_time_ms", "start"),
        end_time_ms=_int_param(params, "end_time_ms", "end"),
    )
    if (
        query.start_serial is not None
        and query.end_serial is not None
        and query.start_serial > query.end_serial
    ):
        raise _invalid("start_serial must be less than or equal to end_serial")
    if (
        query.start_time_ms is not None
        and query.end_time_ms is not None
        and query.start_time_ms > query.end_time_ms
    ):
        raise _invalid("start_time_ms must be less than or equal to end_time_ms")
    return query


def _history_channel(request: Request, app: AppConfig, ctx: HttpContext) -> str:
    """The route's channel, once it is a valid name with history enabled."""
    channel: str = request.path_params["channel"]
    validate_channel_name(channel, app, ctx.settings)
    if not resolve_channel_policy(channel, app, ctx.settings).history_enabled:
        raise ApiError(
            422,
            "feature_disabled",
            f"Durable history is disabled by policy for channel '{channel}'",
        )
    return channel


async def _channel(request: Request, ctx: HttpContext) -> tuple[AppConfig, str]:
    app, _ = await authenticate(request, ctx, request.path_params["app_id"])
    return app, _history_channel(request, app, ctx)


async def get_history(request: Request) -> Response:
    ctx = context(request)
    app, _, pairs = await authenticate_query(request, ctx, request.path_params["app_id"])
    channel = _history_channel(request, app, ctx)
    query = parse_history_query(query_params(request, pairs), ctx.settings)
    # Rendered straight from the stored rows: the same bytes JSONResponse would send.
    body = ctx.channels.history_page_json(app, channel, query)
    return Response(body, media_type="application/json")


async def get_history_state(request: Request) -> Response:
    ctx = context(request)
    app, channel = await _channel(request, ctx)
    return JSONResponse(ctx.channels.history_state(app, channel))


def _confirmed_body(body: bytes, channel: str, operation: str) -> dict[str, Any]:
    """The confirmation fields shared by reset and purge (spec 03 §3.3)."""
    data = json_object(body, empty_is_object=True)
    if data.get("confirm_channel") != channel:
        raise _invalid("confirm_channel must exactly match the channel path")
    if data.get("confirm_operation") != operation:
        raise _invalid(f"confirm_operation must be '{operation}'")
    reason = data.get("reason")
    if not isinstance(reason, str) or not reason.strip():
        raise _invalid("reason must not be empty")
    requested_by = data.get("requested_by")
    if requested_by is not None and not isinstance(requested_by, str):
        raise _invalid("requested_by must be a string")
    return data


async def _control(request: Request) -> tuple[HttpContext, AppConfig, str, bytes]:
    ctx = context(request)
    app, body = await authenticate(request, ctx, request.path_params["app_id"])
    return ctx, app, _history_channel(request, app, ctx), body


async def post_history_reset(request: Request) -> Response:
    ctx, app, channel, body = await _control(request)
    data = _confirmed_body(body, channel, "reset")
    outcome = await StreamControl(ctx.channels).reset(
        app, channel, data["reason"], data.get("requested_by")
    )
    return JSONResponse(
        {
            "ok": True,
            "operation": "reset",
            "channel": channel,
            "reason": data["reason"],
            "requested_by": data.get("requested_by"),
            "previous_stream_id": outcome.details.get("previous_stream_id"),
            "new_stream_id": outcome.stream_id,
            "purged_messages": outcome.details.get("purged_messages", 0),
            "purged_bytes": outcome.details.get("purged_bytes", 0),
            "stream": ctx.channels.history_state(app, channel)["stream"],
        }
    )


MAX_LONG = (1 << 63) - 1


def _opt_int(data: dict[str, Any], name: str) -> int | None:
    value = data.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise _invalid(f"{name} must be an integer")
    if not 0 <= value <= MAX_LONG:
        # The purge record carries it as an Avro long.
        raise _invalid(f"{name} must be between 0 and {MAX_LONG}")
    return value


async def post_history_purge(request: Request) -> Response:
    ctx, app, channel, body = await _control(request)
    data = _confirmed_body(body, channel, "purge")
    mode = data.get("mode")
    before_serial = _opt_int(data, "before_serial")
    before_time_ms = _opt_int(data, "before_time_ms")
    if mode == "all":
        if before_serial is not None or before_time_ms is not None:
            raise _invalid("Purge mode 'all' does not accept bounds")
    elif mode == "before_serial":
        if before_serial is None or before_time_ms is not None:
            raise _invalid("Purge mode 'before_serial' requires before_serial only")
    elif mode == "before_time_ms":
        if before_time_ms is None or before_serial is not None:
            raise _invalid("Purge mode 'before_time_ms' requires before_time_ms only")
    else:
        raise _invalid("mode must be one of: all, before_serial, before_time_ms")
    outcome = await StreamControl(ctx.channels).purge(
        app,
        channel,
        mode=mode,
        before_serial=before_serial,
        before_time_ms=before_time_ms,
        reason=data["reason"],
        requested_by=data.get("requested_by"),
    )
    return JSONResponse(
        {
            "ok": True,
            "operation": "purge",
            "channel": channel,
            "mode": mode,
            "before_serial": before_serial,
            "before_time_ms": before_time_ms,
            "reason": data["reason"],
            "requested_by": data.get("requested_by"),
            "purged_messages": outcome.details.get("purged_messages", 0),
            "purged_bytes": outcome.details.get("purged_bytes", 0),
            "stream": ctx.channels.history_state(app, channel)["stream"],
        }
    )
