"""Reading a signed API request: bounded body, raw path, signature check (spec 01 §4)."""

from __future__ import annotations

from collections.abc import Mapping

from starlette.requests import ClientDisconnect, Request

from sockudo import auth, metrics
from sockudo.config import AppConfig
from sockudo.errors import ApiError
from sockudo.http import ip_limit
from sockudo.http.context import HttpContext


async def read_body(request: Request, limit: int) -> bytes:
    """The raw body, refusing more than ``limit`` bytes without buffering them all."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, "payload_too_large", "Request body is too large")
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise ApiError(413, "payload_too_large", "Request body is too large")
            chunks.append(chunk)
    except ClientDisconnect:
        # Nobody is left to answer, and it is the client's doing: a typed error ends the
        # request like any other bad input, not as a server error with a traceback.
        raise ApiError(400, "client_disconnected", "Client left before sending the body") from None
    return b"".join(chunks)


def raw_path(request: Request) -> bytes:
    """The path exactly as received (still percent-encoded), which is what clients sign."""
    raw = request.scope.get("raw_path")
    if isinstance(raw, bytes | bytearray):
        return bytes(raw).split(b"?", 1)[0]
    return request.url.path.encode()


def limit_by_ip(request: Request, ctx: HttpContext, route_app_id: str | None) -> None:
    """Check 0 of spec 01 §4.3: the per-IP API limiter, when enabled."""
    limiter = ctx.api_limiter
    if limiter is None:
        return
    decision = limiter.check_request(request.scope)
    metrics.rate_limit_check(route_app_id or "", "ip", "api")
    if not decision.allowed:
        metrics.rate_limit_triggered(route_app_id or "", "ip", "api")
        raise ip_limit.api_refusal(decision)


async def authenticate(
    request: Request, ctx: HttpContext, route_app_id: str | None
) -> tuple[AppConfig, bytes]:
    """Verify the signature; return the app and the body. Rejections have no side effects."""
    app, body, _ = await authenticate_query(request, ctx, route_app_id)
    return app, body


async def authenticate_query(
    request: Request, ctx: HttpContext, route_app_id: str | None
) -> tuple[AppConfig, bytes, list[tuple[str, str]]]:
    """:func:`authenticate`, also returning the query as the signature check decoded it."""
    limit_by_ip(request, ctx, route_app_id)
    body = await read_body(request, ctx.settings.http_request_limit_bytes)
    app, pairs = auth.verify_api_query(
        method=request.method,
        raw_path=raw_path(request),
        query_string=request.scope.get("query_string", b""),
        body=body,
        settings=ctx.settings,
        now=ctx.clock(),
        route_app_id=route_app_id,
    )
    return app, body, pairs


def query_params(request: Request, pairs: list[tuple[str, str]]) -> Mapping[str, str]:
    """``request.query_params`` from the pairs :func:`authenticate_query` decoded, without
    parsing the query string again.

    The same mapping (last occurrence of a key wins) when the raw query is ASCII: both then
    split on ``&``, turn ``+`` into a space before percent-decoding, keep malformed escapes,
    and the signature check already refused escapes that are not UTF-8. Starlette reads raw
    bytes above 0x7F as Latin-1 where :func:`auth.parse_query` reads UTF-8, so such a query
    is parsed by Starlette, as before.
    """
    raw = request.scope.get("query_string", b"")
    if isinstance(raw, bytes) and raw.isascii():
        return dict(pairs)
    return request.query_params
