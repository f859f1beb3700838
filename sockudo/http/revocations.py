"""``POST /apps/{appId}/revocations``: revoke capability tokens by ``jti`` and/or ``client_id``.

Signed like every API route (spec 01 §4). Body (upstream Sockudo's shape)::

    {"jti"?: str, "client_id"?: str, "expires_at"?: int, "ttl_seconds"?: int, "reason"?: str}

The revocation holds for ``ttl_seconds`` (at least 1), else until ``expires_at`` (Unix seconds;
at least 1 s from now), else 24 h; at most :data:`MAX_TTL_S`. A body naming neither ``jti``
nor ``client_id`` is ``400 invalid_input`` (upstream answers 401: it reuses its auth error for
it; a well-signed request with a bad body is an input error here, like every other route).
Answer: ``{"revoked_jti", "revoked_client_id", "closed_connections"}``, where
``closed_connections`` counts the sockets of the node that served the request; every node
closes its own.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from sockudo.http.body import invalid_input as _invalid
from sockudo.http.body import json_object
from sockudo.http.context import context
from sockudo.http.signed import authenticate
from sockudo.node import revocations
from sockudo.node.revocations import RevocationRequest

__all__ = ["DEFAULT_TTL_S", "MAX_TTL_S", "parse_revocation", "revoke_tokens"]

DEFAULT_TTL_S = 24 * 60 * 60
"""Upstream's default: a capability token lives at most 24 h."""
MAX_TTL_S = 10 * 365 * 24 * 60 * 60
"""Longer requests are shortened to this (client-id revocations may outlive any token)."""
_MAX_ID_BYTES = 128
_MAX_REASON_BYTES = 256


def _int(data: dict[str, Any], name: str) -> int | None:
    value = data.get(name)
    if value is None:
        return None
    if type(value) is not int or value < 0:
        raise _invalid(f"{name} must be a non-negative integer")
    return value


def _ident(data: dict[str, Any], name: str) -> str | None:
    value = data.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise _invalid(f"{name} must be a non-empty string")
    if len(value.encode()) > _MAX_ID_BYTES:
        raise _invalid(f"{name} must be at most {_MAX_ID_BYTES} bytes")
    return value


def parse_revocation(body: bytes, now: float) -> RevocationRequest:
    """The request of a revocation body; ``now`` (Unix seconds) resolves ``expires_at``."""
    data = json_object(body, empty_is_object=True)
    jti, client_id = _ident(data, "jti"), _ident(data, "client_id")
    if jti is None and client_id is None:
        raise _invalid("revocation requires jti or client_id")
    ttl_seconds, expires_at = _int(data, "ttl_seconds"), _int(data, "expires_at")
    if ttl_seconds is not None:
        ttl = max(1, ttl_seconds)
    elif expires_at is not None:
        ttl = max(1, expires_at - int(now))
    else:
        ttl = DEFAULT_TTL_S
    reason = data.get("reason")
    if reason is None:
        reason = "revoked"
    if not isinstance(reason, str) or len(reason.encode()) > _MAX_REASON_BYTES:
        raise _invalid(f"reason must be a string of at most {_MAX_REASON_BYTES} bytes")
    return RevocationRequest(jti, client_id, min(ttl, MAX_TTL_S), reason)


async def revoke_tokens(request: Request) -> Response:
    """``POST /apps/{appId}/revocations``."""
    ctx = context(request)
    app, body = await authenticate(request, ctx, request.path_params["app_id"])
    req = parse_revocation(body, ctx.clock())
    result = await revocations.revoke(ctx.channels, ctx.hub, app, req)
    return JSONResponse(
        {
            "revoked_jti": result.revoked_jti,
            "revoked_client_id": result.revoked_client_id,
            "closed_connections": result.closed_connections,
        }
    )
