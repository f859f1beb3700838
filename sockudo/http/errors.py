"""The one place where typed errors become HTTP error responses (spec 01 §4.4, 03 §0.1)."""

from __future__ import annotations

import logging

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response

from sockudo.errors import (
    ApiError,
    AppendOutcomeUnknown,
    Backpressure,
    FoldTimeout,
    IdempotencyConflict,
    LogUnavailable,
    ProjectionCorrupt,
    RecordTooLarge,
    StreamNotHealthy,
)

log = logging.getLogger(__name__)


def api_error(exc: ApiError) -> JSONResponse:
    body = {"error": exc.message, "code": exc.code, "status": exc.status, **exc.extra}
    return JSONResponse(body, status_code=exc.status, headers=exc.headers)


def to_api_error(exc: BaseException) -> ApiError:
    """Map a typed error to its wire status and code; unknown errors never leak details."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, StreamNotHealthy):
        reset = exc.state.get("durable_state") == "reset_required"
        return ApiError(
            503,
            "history_reset_required" if reset else "history_degraded",
            "History stream requires a reset" if reset else "History stream is degraded",
            extra={"stream_state": exc.state},
        )
    if isinstance(exc, IdempotencyConflict):
        return ApiError(409, "idempotency_conflict", str(exc))
    if isinstance(exc, RecordTooLarge):
        return ApiError(413, "payload_too_large", "Event is larger than the log accepts")
    if isinstance(exc, LogUnavailable):
        return ApiError(503, "service_unavailable", "event log unavailable")
    if isinstance(exc, ProjectionCorrupt):
        return ApiError(503, "service_unavailable", "projection store unreadable")
    if isinstance(exc, Backpressure):
        return ApiError(
            503, "backpressure", "Projection is behind the log; retry", headers={"Retry-After": "1"}
        )
    if isinstance(exc, AppendOutcomeUnknown):
        return ApiError(
            504, "publish_outcome_unknown", "Publish outcome unknown; retry with an idempotency key"
        )
    if isinstance(exc, FoldTimeout):
        return ApiError(504, "fold_timeout", "Event was published but not yet folded on this node")
    return ApiError(500, "internal_error", "Internal server error")


async def handle_exception(request: Request, exc: Exception) -> Response:
    err = to_api_error(exc)
    if err.status >= 500 and not isinstance(exc, ApiError):
        if err.code == "internal_error":
            # Not a condition the node knows: the traceback is what finds the bug.
            log.error("%s %s failed: %r", request.method, request.url.path, exc, exc_info=exc)
        else:
            # A typed condition of the log or the fold (a broker outage, say), answered with
            # its status: one line, since every request meanwhile meets it.
            log.warning("%s %s answered %s: %s", request.method, request.url.path, err.code, exc)
    return api_error(err)


async def not_found(request: Request, exc: Exception) -> Response:
    return PlainTextResponse("404 NOT FOUND", status_code=404)
