"""Capability tokens (spec 02 §11): HS256 JWT verification, claims and channel grants. Pure.

A capability token is a compact JWT the application backend signs with the app secret. The
header must say ``"alg": "HS256"`` and carry ``"kid"`` = the app key; the claims are::

    x-sockudo-capability  {"<channel pattern>": ["<operation>", …]}  (or a string holding it)
    x-sockudo-client-id   the connection's identity, 1..128 bytes
    iat, exp              integers (seconds); nbf optional
    jti                   the token id revocations name, 1..128 bytes

This mirrors upstream Sockudo (``sockudo-core`` ``capability_token.rs``): 8 KiB at most, 30 s of
clock skew either way (``exp <= now - 30`` is expired; ``iat`` or ``nbf`` later than
``now + 30`` is refused), a lifetime (``exp - iat``) of at most 24 h, at most 100 patterns, no
empty pattern, and an unknown operation refuses the whole token. Operations have hyphen and
underscore spellings (``annotation-subscribe`` = ``annotation_subscribe``).

Verification is hand-written over :mod:`hmac` (no JWT dependency at run time); the tests mint
tokens with PyJWT. Nothing here reads a clock: callers pass ``now`` (Unix seconds).

On a token connection every operation is denied unless a pattern grants it. Patterns match as
upstream's ``wildcard_pattern_matches``: ``*`` matches everything, otherwise a pattern equal to
the channel, ``prefix*``, ``*suffix`` or ``prefix*suffix`` (a prefix and a suffix test, so
``a*a`` also matches ``a``); case-sensitive; a pattern with more stars matches only itself.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

__all__ = [
    "CLOCK_SKEW_S",
    "MAX_LIFETIME_S",
    "MAX_PATTERNS",
    "MAX_TOKEN_BYTES",
    "OPERATIONS",
    "Capabilities",
    "InvalidToken",
    "TokenGrant",
    "parse_capabilities",
    "pattern_matches",
    "verify_token",
]

MAX_TOKEN_BYTES: Final = 8 * 1024
MAX_PATTERNS: Final = 100
MAX_CLIENT_ID_BYTES: Final = 128
MAX_JTI_BYTES: Final = 128
MAX_LIFETIME_S: Final = 24 * 60 * 60
CLOCK_SKEW_S: Final = 30

OPERATIONS: Final = (
    "subscribe",
    "publish",
    "history",
    "presence",
    "annotation_subscribe",
    "annotation_publish",
    "annotation_delete_own",
    "annotation_delete_any",
    "message_update_own",
    "message_update_any",
    "message_delete_own",
    "message_delete_any",
    "message_append_own",
    "message_append_any",
    "push_admin",
    "push_subscribe",
)
"""Canonical operation names (underscore spelling)."""

_SPELLINGS: Final[dict[str, str]] = {
    spelling: op for op in OPERATIONS for spelling in (op, op.replace("_", "-"))
}
"""Every accepted spelling → its canonical name (mixed spellings are unknown, as upstream)."""


class InvalidToken(ValueError):
    """The token is refused; ``str(exc)`` is the reason (without "Authentication error: ")."""


def pattern_matches(pattern: str, channel: str) -> bool:
    """Whether one capability pattern covers ``channel`` (see the module docstring)."""
    if pattern == "*" or pattern == channel:
        return True
    if "*" not in pattern:
        return False
    if pattern.endswith("*"):
        return channel.startswith(pattern[:-1])
    if pattern.startswith("*"):
        return channel.endswith(pattern[1:])
    parts = pattern.split("*")
    return len(parts) == 2 and channel.startswith(parts[0]) and channel.endswith(parts[1])


@dataclass(frozen=True, slots=True)
class Capabilities:
    """Channel patterns granted per operation; an operation without patterns is denied."""

    grants: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """Canonical operation → the patterns granting it."""

    def allows(self, operation: str, channel: str) -> bool:
        return any(pattern_matches(p, channel) for p in self.grants.get(operation, ()))


def parse_capabilities(claim: Any) -> Capabilities:
    """The ``x-sockudo-capability`` claim: an object, or a string holding one."""
    if isinstance(claim, str):
        try:
            claim = json.loads(claim)
        except ValueError:
            raise InvalidToken("x-sockudo-capability must be a JSON object string") from None
        if not isinstance(claim, dict):
            raise InvalidToken("x-sockudo-capability must be a JSON object string")
    elif not isinstance(claim, dict):
        raise InvalidToken("x-sockudo-capability must be a JSON object or object string")
    if not all(
        isinstance(ops, list) and all(isinstance(op, str) for op in ops) for ops in claim.values()
    ):
        raise InvalidToken("x-sockudo-capability must map channel patterns to operations")
    if len(claim) > MAX_PATTERNS:
        raise InvalidToken(f"x-sockudo-capability exceeds {MAX_PATTERNS} patterns")
    grants: dict[str, list[str]] = {}
    for pattern, operations in claim.items():
        if not pattern:
            raise InvalidToken("capability patterns must not be empty")
        for spelling in operations:
            op = _SPELLINGS.get(spelling)
            if op is None:
                raise InvalidToken(f"unsupported capability operation '{spelling}'")
            grants.setdefault(op, []).append(pattern)
    return Capabilities({op: tuple(patterns) for op, patterns in grants.items()})


@dataclass(frozen=True, slots=True)
class TokenGrant:
    """A verified token: who the connection is and what it may do until ``exp``."""

    client_id: str
    jti: str
    iat: int
    exp: int
    capabilities: Capabilities


def _b64url(part: str) -> bytes:
    if not part or "=" in part:
        raise ValueError("not unpadded base64url")
    try:
        return base64.b64decode(part + "=" * (-len(part) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("not base64url") from None


def _json_object(raw: bytes) -> dict[str, Any]:
    value = json.loads(raw.decode("utf-8"))
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    return value


def _int_claim(claims: dict[str, Any], name: str) -> int:
    value = claims.get(name)
    if type(value) is not int:  # bool and float are refused, as serde's i64 does
        raise InvalidToken("capability token signature or claims are invalid")
    return value


def _opt_int_claim(claims: dict[str, Any], name: str) -> int | None:
    return None if claims.get(name) is None else _int_claim(claims, name)


def _str_claim(claims: dict[str, Any], name: str) -> str:
    value = claims.get(name)
    if not isinstance(value, str):
        raise InvalidToken("capability token signature or claims are invalid")
    return value


def verify_token(token: str, app_key: str, app_secret: str, now: int) -> TokenGrant:
    """Verify signature, header and claims of ``token`` for the app; raise :class:`InvalidToken`."""
    if len(token.encode()) > MAX_TOKEN_BYTES:
        raise InvalidToken("capability token exceeds 8 KiB")
    parts = token.split(".")
    try:
        if len(parts) != 3:
            raise ValueError("not a compact JWS")
        header = _json_object(_b64url(parts[0]))
    except ValueError:
        raise InvalidToken("capability token has an invalid header") from None
    if header.get("alg") != "HS256":
        raise InvalidToken("capability token must use HS256")
    if header.get("kid") != app_key:
        raise InvalidToken("capability token kid does not match app key")
    try:
        signature = _b64url(parts[2])
        expected = hmac.new(
            app_secret.encode(), f"{parts[0]}.{parts[1]}".encode("ascii"), hashlib.sha256
        ).digest()
        if not hmac.compare_digest(signature, expected):
            raise ValueError("bad signature")
        claims = _json_object(_b64url(parts[1]))
    except (ValueError, UnicodeError):
        raise InvalidToken("capability token signature or claims are invalid") from None
    if "x-sockudo-capability" not in claims:
        raise InvalidToken("capability token signature or claims are invalid")
    client_id = _str_claim(claims, "x-sockudo-client-id")
    jti = _str_claim(claims, "jti")
    iat = _int_claim(claims, "iat")
    exp = _int_claim(claims, "exp")
    nbf = _opt_int_claim(claims, "nbf")
    if not 1 <= len(client_id.encode()) <= MAX_CLIENT_ID_BYTES:
        raise InvalidToken("x-sockudo-client-id must be 1..=128 bytes")
    if not 1 <= len(jti.encode()) <= MAX_JTI_BYTES:
        raise InvalidToken("jti must be 1..=128 bytes")
    if iat > now + CLOCK_SKEW_S:
        raise InvalidToken("capability token iat is too far in the future")
    if exp <= now - CLOCK_SKEW_S:
        raise InvalidToken("capability token is expired")
    if exp - iat > MAX_LIFETIME_S:
        raise InvalidToken("capability token lifetime exceeds 24 hours")
    if nbf is not None and nbf > now + CLOCK_SKEW_S:
        raise InvalidToken("capability token is not active yet")
    capabilities = parse_capabilities(claims["x-sockudo-capability"])
    return TokenGrant(client_id, jti, iat, exp, capabilities)
