"""Capability-token verification and grants (``sockudo.capabilities``), tokens minted by PyJWT."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from sockudo.capabilities import (
    MAX_TOKEN_BYTES,
    Capabilities,
    InvalidToken,
    parse_capabilities,
    pattern_matches,
    verify_token,
)
from tests.support import tokens

KEY = "app-key"
SECRET = "app-secret"
NOW = 1_800_000_000


def claims(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "x-sockudo-capability": {"room:*": ["subscribe", "history"], "private-room": ["publish"]},
        "x-sockudo-client-id": "client-1",
        "iat": NOW,
        "exp": NOW + 3600,
        "jti": "jti-1",
    }
    base.update(over)
    return {k: v for k, v in base.items() if v is not ...}


def mint(
    body: dict[str, Any] | None = None,
    *,
    kid: str | None = KEY,
    secret: str = SECRET,
    alg: str = "HS256",
) -> str:
    return tokens.mint(body if body is not None else claims(), kid=kid, secret=secret, alg=alg)


def refused(token: str, now: int = NOW) -> str:
    with pytest.raises(InvalidToken) as info:
        verify_token(token, KEY, SECRET, now)
    return str(info.value)


def b64(obj: Any) -> str:
    raw = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


# --- accepted tokens -------------------------------------------------------------------------


def test_a_valid_token_yields_identity_expiry_and_grants() -> None:
    grant = verify_token(mint(), KEY, SECRET, NOW)
    assert (grant.client_id, grant.jti, grant.iat, grant.exp) == (
        "client-1",
        "jti-1",
        NOW,
        NOW + 3600,
    )
    caps = grant.capabilities
    assert caps.allows("subscribe", "room:1")
    assert caps.allows("history", "room:1")
    assert caps.allows("publish", "private-room")
    assert not caps.allows("publish", "room:1")
    assert not caps.allows("subscribe", "private-room")
    assert not caps.allows("presence", "room:1")


def test_the_capability_claim_may_be_a_json_string() -> None:
    token = mint(claims(**{"x-sockudo-capability": '{"presence-*":["presence","subscribe"]}'}))
    caps = verify_token(token, KEY, SECRET, NOW).capabilities
    assert caps.allows("presence", "presence-lobby")
    assert caps.allows("subscribe", "presence-lobby")
    assert not caps.allows("history", "presence-lobby")


def test_hyphen_and_underscore_spellings_name_the_same_operation() -> None:
    caps = parse_capabilities(
        {
            "a": ["annotation-subscribe", "message-append-own", "push-admin"],
            "b": ["annotation_subscribe", "message_append_own", "push_admin"],
        }
    )
    for channel in ("a", "b"):
        assert caps.allows("annotation_subscribe", channel)
        assert caps.allows("message_append_own", channel)
        assert caps.allows("push_admin", channel)
    # Publish and subscribe imply nothing else.
    assert not parse_capabilities({"*": ["publish", "subscribe"]}).allows("annotation_publish", "x")


def test_nbf_and_skew_within_30_seconds_are_accepted() -> None:
    # exp 29 s in the past, iat and nbf 30 s in the future: all within the skew.
    body = claims(iat=NOW + 30, nbf=NOW + 30, exp=NOW + 3600)
    assert verify_token(mint(body), KEY, SECRET, NOW).jti == "jti-1"
    assert verify_token(mint(claims(iat=NOW - 100, exp=NOW - 29)), KEY, SECRET, NOW).exp == NOW - 29


def test_lifetime_of_exactly_24_hours_is_accepted() -> None:
    assert verify_token(mint(claims(exp=NOW + 86400)), KEY, SECRET, NOW).exp == NOW + 86400


# --- refused tokens --------------------------------------------------------------------------


def test_wrong_secret_is_refused() -> None:
    assert refused(mint(secret="other")) == "capability token signature or claims are invalid"


def test_tampered_claims_are_refused() -> None:
    header, _payload, signature = mint().split(".")
    forged = b64(claims(**{"x-sockudo-capability": {"*": ["subscribe", "publish"]}}))
    assert "signature" in refused(f"{header}.{forged}.{signature}")


@pytest.mark.parametrize("alg", ["HS384", "HS512"])
def test_other_algorithms_are_refused(alg: str) -> None:
    assert refused(mint(alg=alg)) == "capability token must use HS256"


def test_alg_none_is_refused() -> None:
    token = f"{b64({'alg': 'none', 'kid': KEY})}.{b64(claims())}."
    assert refused(token) == "capability token must use HS256"


@pytest.mark.parametrize("kid", [None, "other-key", ""])
def test_kid_must_be_the_app_key(kid: str | None) -> None:
    assert refused(mint(kid=kid)) == "capability token kid does not match app key"


@pytest.mark.parametrize(
    "token", ["", "abc", "a.b", "a.b.c.d", "!!!.e30.sig", f"{b64([1])}.{b64({})}.x", "x.y.z"]
)
def test_malformed_tokens_are_refused(token: str) -> None:
    assert refused(token) == "capability token has an invalid header"


def test_tokens_over_8_kib_are_refused() -> None:
    big = claims(
        **{"x-sockudo-capability": {f"ch-{i:05d}-" + "x" * 60: ["subscribe"] for i in range(99)}}
    )
    token = mint(big)
    assert len(token) > MAX_TOKEN_BYTES
    assert refused(token) == "capability token exceeds 8 KiB"


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (claims(exp=NOW - 30), "capability token is expired"),
        (claims(exp=NOW - 3000, iat=NOW - 4000), "capability token is expired"),
        (claims(iat=NOW + 31, exp=NOW + 3600), "capability token iat is too far in the future"),
        (claims(nbf=NOW + 31), "capability token is not active yet"),
        (claims(exp=NOW + 86401), "capability token lifetime exceeds 24 hours"),
        (claims(jti=""), "jti must be 1..=128 bytes"),
        (claims(jti="j" * 129), "jti must be 1..=128 bytes"),
        (claims(**{"x-sockudo-client-id": ""}), "x-sockudo-client-id must be 1..=128 bytes"),
        (claims(**{"x-sockudo-client-id": "é" * 65}), "x-sockudo-client-id must be 1..=128 bytes"),
        (claims(jti=...), "capability token signature or claims are invalid"),
        (claims(iat=...), "capability token signature or claims are invalid"),
        (claims(exp=...), "capability token signature or claims are invalid"),
        (
            claims(**{"x-sockudo-client-id": ...}),
            "capability token signature or claims are invalid",
        ),
        (
            claims(**{"x-sockudo-capability": ...}),
            "capability token signature or claims are invalid",
        ),
        (claims(exp=float(NOW + 10)), "capability token signature or claims are invalid"),
        (claims(iat=True), "capability token signature or claims are invalid"),
        (claims(jti=7), "capability token signature or claims are invalid"),
        (claims(nbf="soon"), "capability token signature or claims are invalid"),
    ],
)
def test_bad_claims_are_refused(body: dict[str, Any], reason: str) -> None:
    assert refused(mint(body)) == reason


@pytest.mark.parametrize(
    ("capability", "reason"),
    [
        ({"*": ["subscribe", "admin"]}, "unsupported capability operation 'admin'"),
        (
            {"*": ["annotation-delete_own"]},
            "unsupported capability operation 'annotation-delete_own'",
        ),
        ({"*": ["Subscribe"]}, "unsupported capability operation 'Subscribe'"),
        ({"": ["subscribe"]}, "capability patterns must not be empty"),
        ({"*": "subscribe"}, "x-sockudo-capability must map channel patterns to operations"),
        ({"*": [1]}, "x-sockudo-capability must map channel patterns to operations"),
        ("not json", "x-sockudo-capability must be a JSON object string"),
        ('["subscribe"]', "x-sockudo-capability must be a JSON object string"),
        (["subscribe"], "x-sockudo-capability must be a JSON object or object string"),
        (None, "x-sockudo-capability must be a JSON object or object string"),
        ({f"c{i}": ["subscribe"] for i in range(101)}, "x-sockudo-capability exceeds 100 patterns"),
    ],
)
def test_bad_capability_claims_refuse_the_whole_token(capability: Any, reason: str) -> None:
    assert refused(mint(claims(**{"x-sockudo-capability": capability}))) == reason


def test_one_hundred_patterns_are_allowed() -> None:
    body = claims(**{"x-sockudo-capability": {f"c{i}": ["subscribe"] for i in range(100)}})
    assert verify_token(mint(body), KEY, SECRET, NOW).capabilities.allows("subscribe", "c99")


# --- patterns --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "channel", "matches"),
    [
        ("*", "anything", True),
        ("orders", "orders", True),
        ("orders", "orders-1", False),
        ("ns:*", "ns:one", True),
        ("ns:*", "ns:", True),
        ("ns:*", "ns", False),
        ("ns:*", "NS:one", False),
        ("*-eu", "orders-eu", True),
        ("*-eu", "orders-us", False),
        ("private-*-eu", "private-orders-eu", True),
        ("private-*-eu", "private-orders-us", False),
        ("private-*-eu", "presence-orders-eu", False),
        ("a*a", "a", True),  # upstream: a prefix test and a suffix test
        ("a*b*c", "axbxc", False),
        ("a*b*c", "a*b*c", True),
    ],
)
def test_pattern_matching(pattern: str, channel: str, matches: bool) -> None:
    assert pattern_matches(pattern, channel) is matches


def test_no_grant_means_denied() -> None:
    assert not Capabilities().allows("subscribe", "x")
    caps = parse_capabilities({"x": []})
    assert not caps.allows("subscribe", "x")
