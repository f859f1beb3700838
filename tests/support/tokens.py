"""Capability tokens minted with PyJWT, as an application backend would (spec 02 §11)."""

from __future__ import annotations

import time
import uuid
import warnings
from typing import Any

import jwt
from jwt.warnings import InsecureKeyLengthWarning

from tests.support.node import APP_KEY, APP_SECRET


def mint(
    body: dict[str, Any],
    *,
    kid: str | None = APP_KEY,
    secret: str = APP_SECRET,
    alg: str = "HS256",
) -> str:
    """``body`` signed as a compact JWS (the test apps' secrets are shorter than PyJWT likes)."""
    headers = {} if kid is None else {"kid": kid}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecureKeyLengthWarning)
        return jwt.encode(body, secret, algorithm=alg, headers=headers)


def capability_token(
    capability: dict[str, list[str]] | str,
    *,
    client_id: str = "client-1",
    jti: str | None = None,
    ttl_s: int = 3600,
    iat: int | None = None,
    **mint_kw: Any,
) -> str:
    """A token for the test app granting ``capability`` to ``client_id``."""
    now = int(time.time()) if iat is None else iat
    return mint(
        {
            "x-sockudo-capability": capability,
            "x-sockudo-client-id": client_id,
            "iat": now,
            "exp": now + ttl_s,
            "jti": jti or uuid.uuid4().hex,
        },
        **mint_kw,
    )
