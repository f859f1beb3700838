"""Channel history routes: ``GET …/history`` and ``GET …/history/state`` (spec 03 §3.1-3.2)."""

from __future__ import annotations

from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from projections.reads.history import NEWEST_FIRST, OLDEST_FIRST, HistoryQuery
from sockudo.channels import validate_channel_name
from sockudo.config import AppConfig, Settings
from sockudo.errors import ApiError
from sockudo.http.context import HttpContext, context
from sockudo.http.signed import authenticate
from sockudo.node.services import app_history_enabled

_DIRECTIONS = {
    "newest_first": NEWEST_FIRST,
    "backwards": NEWEST_FIRST,
    "reverse": NEWEST_FIRST,
    "oldest_first": OLDEST_FIRST,
    "forwards": OLDEST_FIRST,
    "forward": OLDEST_FIRST,
}


def _invalid(message: str) -> ApiError:
    return ApiError(400, "invalid_input", message)


def _int_param(params: QueryParams, name: str, alias: str | None = None) -> int | None:
    raw = params.get(name)
    if raw is None and alias is not None:
        raw = params.get(alias)
    if raw is None or raw == "":
        return None
    try:
        return int(raw)
    except ValueError:
        raise _invalid(f"{name} must be an integer") from None


def parse_history_query(params: QueryParams, settings: Settings) -> HistoryQuery:
    """Validate query parameters in the order of spec 03 §3.1."""
    raw_dir = params.get("direction", "newest_first")
    direction = _DIRECTIONS.get(raw_dir.lower())
    if direction is None:
        raise _invalid(
            f"Invalid direction '{raw_dir}'. Accepted values: newest_first, oldest_first, "
            "backwards, forwards"
        )
    cap = settings.history_max_page_size
    limit = cap
    if params.get("limit") is not None:
        try:
            limit = int(params["limit"])
        except ValueError:
            raise _invalid("History limit must be a positive integer") from None
        if limit == 0:
            raise _invalid("History limit must be greater than 0")
        if limit < 0:
            raise _invalid("History limit must be a positive integer")
        limit = min(limit, cap)
    query = HistoryQuery(
        limit=limit,
        direction=direction,
        cursor=params.get("cursor") or None,
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


async def _channel(request: Request, ctx: HttpContext) -> tuple[AppConfig, str]:
    app, _ = await authenticate(request, ctx, request.path_params["app_id"])
    channel = request.path_params["channel"]
    validate_channel_name(channel, app, ctx.settings)
    if not app_history_enabled(app, ctx.settings):
        raise ApiError(
            422,
            "feature_disabled",
            f"Durable history is disabled by policy for channel '{channel}'",
        )
    return app, channel


async def get_history(request: Request) -> Response:
    ctx = context(request)
    app, channel = await _channel(request, ctx)
    query = parse_history_query(request.query_params, ctx.settings)
    return JSONResponse(ctx.channels.history_page(app, channel, query))


async def get_history_state(request: Request) -> Response:
    ctx = context(request)
    app, channel = await _channel(request, ctx)
    return JSONResponse(ctx.channels.history_state(app, channel))
