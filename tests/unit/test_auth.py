"""Signed API requests (spec 01 §4), channel/user auth (§3.7) and webhook signatures (§8)."""

from __future__ import annotations

import hashlib
from typing import Any
from unittest import mock
from urllib.parse import quote, urlencode

import pusher
import pytest

from sockudo import auth
from sockudo.config import AppConfig, Settings
from sockudo.errors import ApiError

T0 = 1700000000
VECTOR_BODY = b'{"name": "order.created", "channels": ["orders"], "data": "{\\"id\\":1}"}'
VECTOR_SIG = "c79b7c43a43f5703e7087c3c80dfc5214587d96c3763d4e470b058aaa3908373"
GET_SIG_WITH_MD5 = "6cdae02464b7ca66290659cfd45800dacb099f307cb93915ecca4fe623aee05b"
GET_SIG_WITHOUT_MD5 = "fd5a1b38d92aee2b7913a8cf43136cffab888ee5a097536910d6239f08eb68a2"

DEV = AppConfig(id="app-id", key="app-key", secret="app-secret")
NUMERIC = AppConfig(id="123456", key="num-key", secret="num-secret")
DISABLED = AppConfig(id="off-id", key="off-key", secret="off-secret", enabled=False)
SETTINGS = Settings(apps=(DEV, NUMERIC, DISABLED))


def query_of(params: dict[str, str]) -> str:
    """Raw values in the URL, as the pusher SDKs send them."""
    return "&".join(f"{k}={v}" for k, v in params.items())


def verify(
    method: str,
    path: str | bytes,
    query: str | bytes,
    body: bytes = b"",
    *,
    now: float = T0,
    route_app_id: str | None = "app-id",
) -> AppConfig:
    app, _pairs = auth.verify_api_query(
        method, path, query, body, SETTINGS, now=now, route_app_id=route_app_id
    )
    return app


def signed(
    method: str = "POST",
    path: str = "/apps/app-id/events",
    body: bytes = VECTOR_BODY,
    *,
    app: AppConfig = DEV,
    timestamp: int = T0,
    **extra: str,
) -> dict[str, str]:
    return auth.signed_query_params(
        app.key, app.secret, method, path, timestamp=timestamp, body=body, params=extra or None
    )


def rejected(excinfo: pytest.ExceptionInfo[ApiError]) -> tuple[int, str, str]:
    err = excinfo.value
    return err.status, err.code, err.message


# --- §4.5 worked vectors --------------------------------------------------------------------------


class TestWorkedVector:
    def test_body_md5(self) -> None:
        assert len(VECTOR_BODY) == 71
        assert hashlib.md5(VECTOR_BODY).hexdigest() == "0d18303c104145cd45cdb0197a09ce12"

    def test_canonical_query_and_string_to_sign(self) -> None:
        params = {
            "auth_key": "app-key",
            "auth_timestamp": "1700000000",
            "auth_version": "1.0",
            "body_md5": "0d18303c104145cd45cdb0197a09ce12",
        }
        assert auth.canonical_query(params) == (
            "auth_key=app-key&auth_timestamp=1700000000&auth_version=1.0"
            "&body_md5=0d18303c104145cd45cdb0197a09ce12"
        )
        assert auth.api_string_to_sign("POST", "/apps/app-id/events", params) == (
            b"POST\n/apps/app-id/events\nauth_key=app-key&auth_timestamp=1700000000"
            b"&auth_version=1.0&body_md5=0d18303c104145cd45cdb0197a09ce12"
        )

    def test_post_signature(self) -> None:
        params = signed()
        assert params["body_md5"] == "0d18303c104145cd45cdb0197a09ce12"
        assert params["auth_signature"] == VECTOR_SIG

    def test_post_request_line_verifies(self) -> None:
        query = (
            "auth_key=app-key&auth_timestamp=1700000000&auth_version=1.0"
            "&body_md5=0d18303c104145cd45cdb0197a09ce12&auth_signature=" + VECTOR_SIG
        )
        assert verify("POST", b"/apps/app-id/events", query.encode(), VECTOR_BODY) is DEV

    def test_get_pusher_sdk_style_with_empty_body_md5(self) -> None:
        params = auth.signed_query_params(
            "app-key",
            "app-secret",
            "GET",
            "/apps/app-id/channels",
            timestamp=T0,
            params={"filter_by_prefix": "presence-", "info": "user_count"},
            include_body_md5=True,
        )
        assert auth.canonical_query(params) == (
            "auth_key=app-key&auth_timestamp=1700000000&auth_version=1.0"
            "&body_md5=d41d8cd98f00b204e9800998ecf8427e&filter_by_prefix=presence-&info=user_count"
        )
        assert params["auth_signature"] == GET_SIG_WITH_MD5
        assert verify("GET", "/apps/app-id/channels", query_of(params)) is DEV

    def test_get_http_node_style_without_body_md5(self) -> None:
        params = auth.signed_query_params(
            "app-key",
            "app-secret",
            "GET",
            "/apps/app-id/channels",
            timestamp=T0,
            params={"filter_by_prefix": "presence-", "info": "user_count"},
        )
        assert "body_md5" not in params
        assert auth.canonical_query(params) == (
            "auth_key=app-key&auth_timestamp=1700000000&auth_version=1.0"
            "&filter_by_prefix=presence-&info=user_count"
        )
        assert params["auth_signature"] == GET_SIG_WITHOUT_MD5
        assert verify("GET", "/apps/app-id/channels", query_of(params)) is DEV


# --- the real pusher SDK --------------------------------------------------------------------------


class TestPusherSdk:
    @pytest.fixture
    def client(self) -> Any:
        return pusher.Pusher(app_id="123456", key="num-key", secret="num-secret")._pusher_client

    def _request(self, client: Any, method: str, *args: Any, **kwargs: Any) -> Any:
        with mock.patch("pusher.http.time.time", return_value=T0):
            return getattr(client, method).make_request(*args, **kwargs)

    def test_trigger_verifies(self, client: Any) -> None:
        req = self._request(client, "trigger", ["orders"], "order.created", {"id": 1})
        assert (
            verify(req.method, req.path, req.query_string, req.body, route_app_id="123456")
            is NUMERIC
        )

    def test_channels_info_get_with_body_md5_verifies(self, client: Any) -> None:
        req = self._request(
            client, "channels_info", prefix_filter="presence-", attributes=["user_count"]
        )
        assert "body_md5=d41d8cd98f00b204e9800998ecf8427e" in req.query_string
        assert verify(req.method, req.path, req.query_string, req.body, route_app_id="123456")

    def test_terminate_alias_without_route_app_verifies(self, client: Any) -> None:
        req = self._request(client, "terminate_user_connections", "u1")
        assert req.path == "/users/u1/terminate_connections"
        assert verify(req.method, req.path, req.query_string, req.body, route_app_id=None)

    def test_sdk_signature_equals_ours(self, client: Any) -> None:
        req = self._request(client, "trigger", ["orders"], "order.created", {"id": 1})
        ours = auth.sign_api_request("num-secret", "POST", req.path, req.query_params)
        assert ours == req.query_params["auth_signature"]


# --- §4.3 check order and failures ----------------------------------------------------------------


class TestChecks:
    def test_1_empty_query(self) -> None:
        with pytest.raises(ApiError) as exc:
            verify("POST", "/apps/app-id/events", b"", VECTOR_BODY)
        assert rejected(exc) == (400, "invalid_input", "Missing authentication query parameters")

    def test_1_no_auth_key(self) -> None:
        params = signed()
        del params["auth_key"]
        with pytest.raises(ApiError) as exc:
            verify("POST", "/apps/app-id/events", query_of(params), VECTOR_BODY)
        assert rejected(exc) == (400, "invalid_input", "Missing authentication query parameters")

    def test_1_undecodable_query(self) -> None:
        with pytest.raises(ApiError) as exc:
            verify("POST", "/apps/app-id/events", b"auth_key=%ff%fe", VECTOR_BODY)
        assert exc.value.status == 400
        assert exc.value.code == "invalid_input"

    def test_2_unknown_key(self) -> None:
        params = signed(app=AppConfig(id="x", key="nobody", secret="s"))
        with pytest.raises(ApiError) as exc:
            verify("POST", "/apps/app-id/events", query_of(params), VECTOR_BODY)
        assert exc.value.status == 404
        assert exc.value.code == "app_not_found"

    def test_3_route_app_mismatch(self) -> None:
        params = signed(path="/apps/other/events")
        with pytest.raises(ApiError) as exc:
            verify(
                "POST", "/apps/other/events", query_of(params), VECTOR_BODY, route_app_id="other"
            )
        assert rejected(exc) == (
            401,
            "auth_failed",
            "Authenticated app does not match route app_id",
        )

    @pytest.mark.parametrize("timestamp", [None, "", "abc", "17e8", "1_700_000_000", "1" * 5000])
    def test_4_timestamp_missing_or_not_integer(self, timestamp: str | None) -> None:
        params = signed()
        if timestamp is None:
            del params["auth_timestamp"]
        else:
            params["auth_timestamp"] = timestamp
        with pytest.raises(ApiError) as exc:
            verify("POST", "/apps/app-id/events", query_of(params), VECTOR_BODY)
        assert exc.value.status == 401
        assert exc.value.code == "auth_failed"

    @pytest.mark.parametrize("skew", [601, -601, 100000])
    def test_5_timestamp_too_far(self, skew: int) -> None:
        params = signed(timestamp=T0 + skew)
        with pytest.raises(ApiError) as exc:
            verify("POST", "/apps/app-id/events", query_of(params), VECTOR_BODY)
        assert rejected(exc) == (
            401,
            "auth_failed",
            "Timestamp expired or too far in the future",
        )

    @pytest.mark.parametrize("skew", [599, -599, 600, -600, 0])
    def test_5_timestamp_within_window(self, skew: int) -> None:
        params = signed(timestamp=T0 + skew)
        assert verify("POST", "/apps/app-id/events", query_of(params), VECTOR_BODY) is DEV

    def test_5_fractional_now(self) -> None:
        params = signed()
        with pytest.raises(ApiError):
            verify("POST", "/apps/app-id/events", query_of(params), VECTOR_BODY, now=T0 + 600.5)

    def test_6_post_without_body_md5(self) -> None:
        params = signed()
        del params["body_md5"]
        params["auth_signature"] = auth.sign_api_request(
            "app-secret", "POST", "/apps/app-id/events", params
        )
        with pytest.raises(ApiError) as exc:
            verify("POST", "/apps/app-id/events", query_of(params), VECTOR_BODY)
        status, code, message = rejected(exc)
        assert (status, code) == (401, "auth_failed")
        assert message.startswith("body_md5 is required")

    def test_6_post_body_modified_after_signing(self) -> None:
        params = signed()
        with pytest.raises(ApiError) as exc:
            verify("POST", "/apps/app-id/events", query_of(params), VECTOR_BODY + b" ")
        assert rejected(exc) == (401, "auth_failed", "body_md5 mismatch")

    def test_6_post_empty_body_needs_its_md5(self) -> None:
        params = signed(body=b"")
        assert verify("POST", "/apps/app-id/events", query_of(params), b"") is DEV

    def test_6_get_with_wrong_body_md5(self) -> None:
        params = signed("GET", "/apps/app-id/channels", b"", body_md5="0" * 32)
        with pytest.raises(ApiError) as exc:
            verify("GET", "/apps/app-id/channels", query_of(params))
        assert rejected(exc) == (401, "auth_failed", "body_md5 mismatch")

    def test_7_wrong_secret(self) -> None:
        params = signed(app=AppConfig(id="app-id", key="app-key", secret="wrong"))
        with pytest.raises(ApiError) as exc:
            verify("POST", "/apps/app-id/events", query_of(params), VECTOR_BODY)
        assert rejected(exc) == (401, "auth_failed", "Invalid API signature")

    def test_7_missing_signature(self) -> None:
        params = signed()
        del params["auth_signature"]
        with pytest.raises(ApiError) as exc:
            verify("POST", "/apps/app-id/events", query_of(params), VECTOR_BODY)
        assert rejected(exc) == (401, "auth_failed", "Invalid API signature")

    def test_7_signature_over_other_path(self) -> None:
        params = signed(path="/apps/app-id/batch_events")
        with pytest.raises(ApiError) as exc:
            verify("POST", "/apps/app-id/events", query_of(params), VECTOR_BODY)
        assert exc.value.message == "Invalid API signature"

    def test_7_non_ascii_signature_is_a_mismatch_not_a_crash(self) -> None:
        params = signed()
        params["auth_signature"] = quote("é")
        with pytest.raises(ApiError) as exc:
            verify("POST", "/apps/app-id/events", query_of(params), VECTOR_BODY)
        assert exc.value.message == "Invalid API signature"

    def test_8_disabled_app(self) -> None:
        params = signed(path="/apps/off-id/events", app=DISABLED)
        with pytest.raises(ApiError) as exc:
            verify(
                "POST", "/apps/off-id/events", query_of(params), VECTOR_BODY, route_app_id="off-id"
            )
        assert exc.value.status == 403
        assert exc.value.code == "app_disabled"

    def test_8_disabled_state_hidden_without_valid_signature(self) -> None:
        bad = AppConfig(id="off-id", key="off-key", secret="guess")
        params = signed(path="/apps/off-id/events", app=bad)
        with pytest.raises(ApiError) as exc:
            verify(
                "POST", "/apps/off-id/events", query_of(params), VECTOR_BODY, route_app_id="off-id"
            )
        assert exc.value.status == 401

    def test_order_unknown_key_before_timestamp(self) -> None:
        params = signed(app=AppConfig(id="x", key="nobody", secret="s"), timestamp=1)
        with pytest.raises(ApiError) as exc:
            verify("POST", "/apps/app-id/events", query_of(params), VECTOR_BODY)
        assert exc.value.status == 404

    def test_order_route_before_timestamp_and_signature(self) -> None:
        params = signed(timestamp=1, app=AppConfig(id="app-id", key="app-key", secret="x"))
        with pytest.raises(ApiError) as exc:
            verify(
                "POST", "/apps/other/events", query_of(params), VECTOR_BODY, route_app_id="other"
            )
        assert exc.value.message == "Authenticated app does not match route app_id"

    def test_order_timestamp_before_body_md5(self) -> None:
        params = signed(timestamp=T0 - 1000)
        with pytest.raises(ApiError) as exc:
            verify("POST", "/apps/app-id/events", query_of(params), b"other body")
        assert exc.value.message == "Timestamp expired or too far in the future"

    def test_order_body_md5_before_signature(self) -> None:
        params = signed()
        params["auth_signature"] = "0" * 64
        with pytest.raises(ApiError) as exc:
            verify("POST", "/apps/app-id/events", query_of(params), b"other body")
        assert exc.value.message == "body_md5 mismatch"


# --- canonical query and path details (§4.1) ------------------------------------------------------


class TestCanonicalQuery:
    def test_url_encoded_values_verify(self) -> None:
        """sockudo-http-python URL-encodes values but signs the decoded ones."""
        params = signed("GET", "/apps/app-id/channels", b"", filter_by_prefix="presence-a b:c")
        encoded = urlencode(params)
        assert "presence-a+b%3Ac" in encoded
        assert verify("GET", "/apps/app-id/channels", encoded) is DEV

    def test_plus_is_space_but_encoded_plus_is_plus(self) -> None:
        pairs = auth.parse_query(b"a=x+y&b=x%2By")
        assert pairs == [("a", "x y"), ("b", "x+y")]

    def test_keys_lower_cased_last_occurrence_wins_sorted(self) -> None:
        pairs = [("Zeta", "1"), ("alpha", "first"), ("ALPHA", "last"), ("auth_signature", "x")]
        assert auth.canonical_query(pairs) == "alpha=last&zeta=1"

    def test_auth_signature_excluded_in_any_case(self) -> None:
        assert auth.canonical_query([("AUTH_SIGNATURE", "x"), ("a", "1")]) == "a=1"

    def test_sorted_by_bytes(self) -> None:
        assert auth.canonical_query({"b": "1", "a_b": "2", "a": "3"}) == "a=3&a_b=2&b=1"

    def test_values_not_reencoded(self) -> None:
        assert auth.canonical_query({"q": "a&b=c d"}) == "q=a&b=c d"

    def test_empty_segments_and_valueless_keys(self) -> None:
        assert auth.parse_query("&&a&b=") == [("a", ""), ("b", "")]

    def test_raw_percent_encoded_path_is_signed_as_received(self) -> None:
        """sockudo-http-python signs /channels/private%3Aorders; pusher SDKs sign it unencoded."""
        encoded = "/apps/app-id/channels/private-chat%3Aroom"
        params = signed("GET", encoded, b"")
        assert verify("GET", encoded.encode(), query_of(params)) is DEV
        with pytest.raises(ApiError):
            verify("GET", "/apps/app-id/channels/private-chat:room", query_of(params))

    def test_query_suffix_on_raw_path_is_ignored(self) -> None:
        params = signed()
        path = b"/apps/app-id/events?auth_key=app-key"
        assert verify("POST", path, query_of(params), VECTOR_BODY) is DEV

    def test_method_is_upper_cased(self) -> None:
        params = signed()
        assert verify("post", "/apps/app-id/events", query_of(params), VECTOR_BODY) is DEV

    def test_str_query_string_accepted(self) -> None:
        params = signed()
        assert verify("POST", "/apps/app-id/events", query_of(params), VECTOR_BODY) is DEV


# --- §3.7 channel authorization and user authentication -------------------------------------------


PRESENCE_DATA = '{"user_id": "u1", "user_info": {"name": "Ann"}}'
SIGNIN_DATA = '{"id": "u1", "user_info": {"name": "Ann"}}'


class TestChannelAndUserAuth:
    def test_private_vector(self) -> None:
        assert auth.channel_auth_string("123.456", "private-orders") == "123.456:private-orders"
        assert auth.sign_channel_auth("app-key", "app-secret", "123.456", "private-orders") == (
            "app-key:fa24923d1d5972f2c827aceb385f438a659796cd37cc4edc043128f78f18790a"
        )

    def test_presence_vector(self) -> None:
        assert auth.sign_channel_auth(
            "app-key", "app-secret", "123.456", "presence-room", PRESENCE_DATA
        ) == ("app-key:7572fa623a25bcee7e71545f62b44ea577c009f91b2921965505956e060c96e5")

    def test_signin_vector(self) -> None:
        assert auth.user_auth_string("123.456", SIGNIN_DATA) == f"123.456::user::{SIGNIN_DATA}"
        assert auth.sign_user_auth("app-key", "app-secret", "123.456", SIGNIN_DATA) == (
            "app-key:5dffa775b3c8ee51e2e886fab64ed84a7c1a6d082e7c9d4ff1d2faf12f67983f"
        )

    def test_verify_private(self) -> None:
        good = auth.sign_channel_auth("app-key", "app-secret", "123.456", "private-orders")
        assert auth.verify_channel_auth(good, "app-key", "app-secret", "123.456", "private-orders")
        assert not auth.verify_channel_auth(
            good, "app-key", "app-secret", "999.1", "private-orders"
        )
        other_prefix = "other-key:" + good.split(":", 1)[1]
        assert not auth.verify_channel_auth(
            other_prefix, "app-key", "app-secret", "123.456", "private-orders"
        )
        assert not auth.verify_channel_auth(
            "", "app-key", "app-secret", "123.456", "private-orders"
        )

    def test_presence_exact_string_is_signed(self) -> None:
        compact = '{"user_id":"u1","user_info":{"name":"Ann"}}'
        signed_compact = auth.sign_channel_auth(
            "app-key", "app-secret", "123.456", "presence-room", compact
        )
        assert not auth.verify_channel_auth(
            signed_compact, "app-key", "app-secret", "123.456", "presence-room", PRESENCE_DATA
        )

    def test_verify_user(self) -> None:
        good = auth.sign_user_auth("app-key", "app-secret", "123.456", SIGNIN_DATA)
        assert auth.verify_user_auth(good, "app-key", "app-secret", "123.456", SIGNIN_DATA)
        assert not auth.verify_user_auth(good, "app-key", "app-secret", "123.457", SIGNIN_DATA)
        assert not auth.verify_user_auth("ü", "app-key", "app-secret", "123.456", SIGNIN_DATA)

    def test_matches_pusher_authentication_client(self) -> None:
        client = pusher.Pusher(app_id="1", key="app-key", secret="app-secret")
        sdk = client.authenticate(
            channel="presence-room",
            socket_id="123.456",
            custom_data={"user_id": "u1", "user_info": {"name": "Ann"}},
        )
        assert auth.verify_channel_auth(
            sdk["auth"], "app-key", "app-secret", "123.456", "presence-room", sdk["channel_data"]
        )


def test_webhook_signature_vector() -> None:
    body = b'{"time_ms":1700000000000,"events":[{"name":"channel_occupied","channel":"orders"}]}'
    assert auth.webhook_signature("app-secret", body) == (
        "c1b112fcc5fc333a8453bb4b62c1a43094f2126d3c3f4ed442a92f5cda54f8e4"
    )
