"""Pure HMAC: signed HTTP API requests, channel authorization, user authentication, webhooks.

Nothing here does I/O or reads a clock: callers pass ``now`` and the raw request parts. Every
comparison of a secret-derived value is constant-time (:func:`hmac.compare_digest` over bytes,
which unlike the ``str`` form also accepts non-ASCII input).

API requests (spec 01 §4): the string to sign is ``METHOD\\nPATH\\nCANONICAL_QUERY`` where
``PATH`` is the raw path as received on the wire and the canonical query is every parameter but
``auth_signature``, percent-decoded (``+`` is a space), keys lower-cased, sorted by key, last
occurrence of a key winning, joined as ``k=v`` with ``&`` without re-encoding.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from typing import Protocol
from urllib.parse import unquote_to_bytes

from sockudo import inbound
from sockudo.config import AppConfig
from sockudo.errors import ApiError

__all__ = [
    "EMPTY_BODY_MD5",
    "MAX_TIMESTAMP_SKEW_SECONDS",
    "AppLookup",
    "api_string_to_sign",
    "canonical_query",
    "channel_auth_string",
    "hmac_sha256_hex",
    "parse_query",
    "sign_api_request",
    "sign_channel_auth",
    "sign_user_auth",
    "signed_query_params",
    "user_auth_string",
    "verify_api_query",
    "verify_channel_auth",
    "verify_user_auth",
    "webhook_signature",
]

EMPTY_BODY_MD5 = "d41d8cd98f00b204e9800998ecf8427e"
"""MD5 of empty input: the only ``body_md5`` a GET/DELETE may carry."""

MAX_TIMESTAMP_SKEW_SECONDS = 600
"""``auth_timestamp`` may differ from the server clock by at most this much, either way."""

# Methods whose body the signature must cover (spec 01 §4.2: POST; PUT/PATCH treated alike).
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


def hmac_sha256_hex(secret: str, message: str | bytes) -> str:
    """Lower-case hex HMAC-SHA256 of ``message`` keyed with ``secret`` (both UTF-8)."""
    data = message.encode("utf-8") if isinstance(message, str) else message
    # The one-shot form runs in C (OpenSSL), without building an ``HMAC`` object.
    return hmac.digest(secret.encode("utf-8"), data, "sha256").hex()


def _equal(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode("utf-8"), b.encode("utf-8"))


# --------------------------------------------------------------------------------------------
# Query canonicalisation
# --------------------------------------------------------------------------------------------


def _decode_component(raw: bytes) -> str:
    # `+` is a space (form encoding) and must become one *before* percent-decoding, so that a
    # literal plus sent as %2B survives.
    if b"%" not in raw:  # most components: nothing to unquote
        return raw.replace(b"+", b" ").decode("utf-8")
    return unquote_to_bytes(raw.replace(b"+", b" ")).decode("utf-8")


def parse_query(query_string: bytes | str) -> list[tuple[str, str]]:
    """Decoded ``(key, value)`` pairs in wire order; keys keep their case.

    Raises ``UnicodeDecodeError`` when a decoded component is not UTF-8. Malformed ``%``
    escapes are kept literally, as every common URL parser does.
    """
    raw = query_string.encode("utf-8") if isinstance(query_string, str) else query_string
    if b"%" not in raw and b"+" not in raw:
        # Nothing to unquote: decoding the whole query first is the same (``&`` and ``=``
        # never occur inside a multi-byte UTF-8 sequence) and one call instead of two a pair.
        parts = (part.partition("=") for part in raw.decode("utf-8").split("&") if part)
        return [(key, value) for key, _, value in parts]
    pairs: list[tuple[str, str]] = []
    for part in raw.split(b"&"):
        if not part:
            continue
        key, _, value = part.partition(b"=")
        pairs.append((_decode_component(key), _decode_component(value)))
    return pairs


def canonical_query(params: Mapping[str, str] | list[tuple[str, str]]) -> str:
    """The canonical query of spec 01 §4.1 from decoded parameters."""
    items = params.items() if isinstance(params, Mapping) else params
    latest: dict[str, str] = {}
    for key, value in items:
        lowered = key.lower()
        if lowered == "auth_signature":
            continue
        latest[lowered] = value  # last occurrence wins
    ordered = sorted(latest.items(), key=lambda kv: kv[0].encode("utf-8"))
    return "&".join(f"{k}={v}" for k, v in ordered)


def api_string_to_sign(
    method: str, path: str | bytes, params: Mapping[str, str] | list[tuple[str, str]]
) -> bytes:
    """``METHOD\\nPATH\\nCANONICAL_QUERY`` as bytes; ``path`` is used byte-for-byte as received."""
    raw_path = path.encode("utf-8") if isinstance(path, str) else path
    return b"\n".join(
        (method.upper().encode("ascii"), raw_path, canonical_query(params).encode("utf-8"))
    )


def sign_api_request(
    secret: str, method: str, path: str | bytes, params: Mapping[str, str] | list[tuple[str, str]]
) -> str:
    """The ``auth_signature`` for a request (``params`` are the decoded query parameters)."""
    return hmac_sha256_hex(secret, api_string_to_sign(method, path, params))


def signed_query_params(
    key: str,
    secret: str,
    method: str,
    path: str,
    *,
    timestamp: int,
    body: bytes = b"",
    params: Mapping[str, str] | None = None,
    include_body_md5: bool | None = None,
) -> dict[str, str]:
    """All query parameters of a signed request, ``auth_signature`` included (tests, tools).

    ``include_body_md5`` defaults to "when the method carries a body"; pass ``True`` to mimic
    the ``pusher`` SDK, which also sends the empty-body MD5 on GET.
    """
    query = dict(params or {})
    query.update(auth_key=key, auth_timestamp=str(timestamp), auth_version="1.0")
    if include_body_md5 is None:
        include_body_md5 = method.upper() in _BODY_METHODS
    if include_body_md5:
        query["body_md5"] = hashlib.md5(body).hexdigest()
    query["auth_signature"] = sign_api_request(secret, method, path, query)
    return query


class AppLookup(Protocol):
    """Anything that finds an app by key; :class:`~sockudo.config.Settings` is one."""

    def app_by_key(self, key: str) -> AppConfig | None: ...


# --------------------------------------------------------------------------------------------
# Verification (spec 01 §4.3, checks 1-8; the per-IP limiter, check 0, is the edge's job)
# --------------------------------------------------------------------------------------------


def _auth_failed(message: str) -> ApiError:
    return ApiError(401, "auth_failed", message)


def verify_api_query(
    method: str,
    raw_path: bytes | str,
    query_string: bytes | str,
    body: bytes,
    settings: AppLookup,
    *,
    now: float,
    route_app_id: str | None,
) -> tuple[AppConfig, list[tuple[str, str]]]:
    """Authenticate a signed API request: its app and its decoded query (:func:`parse_query`
    pairs, which the signature covered), or raise :class:`ApiError`.

    ``raw_path`` is the path exactly as received: pass ASGI ``scope["raw_path"]`` bytes as they
    are (a ``str`` is taken as the text the client signed and encoded as UTF-8); anything from
    the first ``?`` on is ignored. ``settings`` resolves ``auth_key`` to an app.
    ``route_app_id`` is the ``{appId}`` of the route, or ``None`` on routes without one (the
    ``/users/{id}/terminate_connections`` alias). Checks run in the order of spec 01 §4.3 so
    the first failure decides the answer, and the app's enabled flag is only revealed to a
    caller holding a valid signature.
    """
    # 1. query string present and parsable
    if not query_string:
        raise ApiError(400, "invalid_input", "Missing authentication query parameters")
    try:
        pairs = parse_query(query_string)
    except UnicodeDecodeError as exc:
        raise ApiError(400, "invalid_input", "Invalid authentication query parameters") from exc
    # The reserved parameters are recognised in lower case only (spec 01 §4.1).
    reserved = {k: v for k, v in pairs if k.startswith("auth_") or k == "body_md5"}
    auth_key = reserved.get("auth_key")
    if not auth_key:
        raise ApiError(400, "invalid_input", "Missing authentication query parameters")

    # 2. the key names an app
    app = settings.app_by_key(auth_key)
    if app is None:
        raise ApiError(404, "app_not_found", "App not found")

    # 3. the route's app is the authenticated app
    if route_app_id is not None and route_app_id != app.id:
        raise _auth_failed("Authenticated app does not match route app_id")

    # 4./5. timestamp is an integer within the allowed skew, either direction
    timestamp = reserved.get("auth_timestamp")
    seconds = None if timestamp is None else inbound.decimal(timestamp)
    if seconds is None:
        raise _auth_failed("Missing or invalid auth_timestamp")
    if abs(now - seconds) > MAX_TIMESTAMP_SKEW_SECONDS:
        raise _auth_failed("Timestamp expired or too far in the future")

    # 6. body_md5: required with a body-carrying method; otherwise optional but, when sent,
    # it must describe the (empty) body (the pusher SDK sends it on every GET).
    body_md5 = reserved.get("body_md5")
    verb = method.upper()
    if body_md5 is None:
        if verb in _BODY_METHODS:
            raise _auth_failed(f"body_md5 is required for {verb} requests")
    elif not _equal(body_md5, hashlib.md5(body).hexdigest()):
        raise _auth_failed("body_md5 mismatch")

    # 7. signature
    if isinstance(raw_path, str):
        path_bytes = raw_path.split("?", 1)[0].encode("utf-8")
    else:
        path_bytes = raw_path.split(b"?", 1)[0]
    expected = sign_api_request(app.secret, verb, path_bytes, pairs)
    signature = reserved.get("auth_signature", "")
    if not _equal(signature, expected):
        raise _auth_failed("Invalid API signature")

    # 8. enabled, only now that the caller proved it holds the secret
    if not app.enabled:
        raise ApiError(403, "app_disabled", "App is disabled")
    return app, pairs


# --------------------------------------------------------------------------------------------
# Channel authorization and user authentication (spec 01 §3.7, §3.10)
# --------------------------------------------------------------------------------------------


def channel_auth_string(socket_id: str, channel: str, channel_data: str | None = None) -> str:
    """``socket_id:channel`` (private forms) or ``socket_id:channel:channel_data`` (presence).

    ``channel_data`` must be the exact string received, never a re-serialisation.
    """
    if channel_data is None:
        return f"{socket_id}:{channel}"
    return f"{socket_id}:{channel}:{channel_data}"


def sign_channel_auth(
    key: str, secret: str, socket_id: str, channel: str, channel_data: str | None = None
) -> str:
    """The ``auth`` value ``"<key>:<hex>"`` a subscriber must send."""
    return f"{key}:{hmac_sha256_hex(secret, channel_auth_string(socket_id, channel, channel_data))}"


def verify_channel_auth(
    auth: str,
    key: str,
    secret: str,
    socket_id: str,
    channel: str,
    channel_data: str | None = None,
) -> bool:
    """Constant-time check of a subscribe ``auth``; a different key prefix is a mismatch."""
    return _equal(auth, sign_channel_auth(key, secret, socket_id, channel, channel_data))


def user_auth_string(socket_id: str, user_data: str) -> str:
    """``socket_id::user::user_data`` for ``pusher:signin`` (exact ``user_data`` string)."""
    return f"{socket_id}::user::{user_data}"


def sign_user_auth(key: str, secret: str, socket_id: str, user_data: str) -> str:
    """The ``auth`` value of ``pusher:signin``."""
    return f"{key}:{hmac_sha256_hex(secret, user_auth_string(socket_id, user_data))}"


def verify_user_auth(auth: str, key: str, secret: str, socket_id: str, user_data: str) -> bool:
    """Constant-time check of a ``pusher:signin`` ``auth``."""
    return _equal(auth, sign_user_auth(key, secret, socket_id, user_data))


def webhook_signature(secret: str, body: bytes) -> str:
    """``X-Pusher-Signature`` of a webhook request: hex HMAC-SHA256 of the raw body (§8)."""
    return hmac_sha256_hex(secret, body)
