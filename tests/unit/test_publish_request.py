"""``/events`` and ``/batch_events`` body validation (spec 01 §5.1-5.3, every row of §5.5).

Rows of §5.5 decided elsewhere: "Body over 10 MiB" is the edge's body reader (the limit is
``Settings.http_request_limit_bytes``, checked here), "Idempotency conflict" is decided from the
fold's idempotency projection, and "max_backend_events_per_second" by the publish rate limiter.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any
from unittest import mock

import pusher
import pytest

from sockudo.config import AppConfig, AppLimits, ChannelNamespace, Settings
from sockudo.errors import ApiError
from sockudo.http.publish_request import (
    BatchCommand,
    PublishCommand,
    fingerprint,
    parse_batch_events_body,
    parse_events_body,
)

APP = AppConfig(
    id="app-id",
    key="app-key",
    secret="app-secret",
    channel_namespaces=(ChannelNamespace(name="chat"),),
)
SETTINGS = Settings(apps=(APP,))


def body(**fields: Any) -> bytes:
    return json.dumps(fields).encode()


def event(
    raw: bytes | None = None,
    *,
    app: AppConfig = APP,
    settings: Settings = SETTINGS,
    header: str | None = None,
    **fields: Any,
) -> PublishCommand:
    if raw is None:
        fields.setdefault("name", "order.created")
        fields.setdefault("channel", "orders")
        raw = body(**fields)
    return parse_events_body(raw, app, settings, idempotency_header=header)


def batch(
    items: Any,
    *,
    app: AppConfig = APP,
    settings: Settings = SETTINGS,
    header: str | None = None,
) -> BatchCommand:
    return parse_batch_events_body(
        json.dumps({"batch": items}).encode(), app, settings, idempotency_header=header
    )


def item(**fields: Any) -> dict[str, Any]:
    return {"name": "e", "channel": "orders", "data": "x", **fields}


def fails(status: int, code: str, call: Any, *args: Any, **kwargs: Any) -> ApiError:
    with pytest.raises(ApiError) as exc:
        call(*args, **kwargs)
    assert (exc.value.status, exc.value.code) == (status, code), exc.value.message
    return exc.value


# --- §5.5, row by row -----------------------------------------------------------------------------


class TestErrorTable:
    @pytest.mark.parametrize(
        "raw",
        [b"not json", b"", b"[1,2]", b'"x"', b"null", b"\xff\xfe", b'{"a":NaN}', b"{" * 100000],
    )
    def test_body_not_json_or_not_object(self, raw: bytes) -> None:
        fails(400, "invalid_input", event, raw)
        fails(400, "invalid_input", parse_batch_events_body, raw, APP, SETTINGS)

    @pytest.mark.parametrize("value", [None, "x", {}, 3])
    def test_batch_not_array(self, value: Any) -> None:
        raw = json.dumps({} if value is None else {"batch": value}).encode()
        fails(400, "invalid_input", parse_batch_events_body, raw, APP, SETTINGS)

    def test_batch_empty(self) -> None:
        fails(400, "invalid_input", batch, [])

    def test_missing_name(self) -> None:
        fails(400, "invalid_input", event, body(channel="orders", data="x"))

    @pytest.mark.parametrize("name", ["", 5, ["x"]])
    def test_empty_or_non_string_name(self, name: Any) -> None:
        fails(400, "invalid_input", event, name=name)

    @pytest.mark.parametrize(
        "name", ["pusher:x", "pusher_internal:x", "sockudo:x", "sockudo_internal:subscription"]
    )
    def test_reserved_prefix_name(self, name: str) -> None:
        fails(400, "invalid_input", event, name=name)

    def test_client_prefixed_name_is_allowed(self) -> None:
        assert event(name="client-typing").name == "client-typing"

    def test_name_too_long(self) -> None:
        assert event(name="n" * 200).name == "n" * 200
        fails(400, "limit_exceeded", event, name="n" * 201)

    def test_no_channel(self) -> None:
        fails(400, "missing_channel_info", event, body(name="e", data="x"))

    def test_empty_channels(self) -> None:
        fails(400, "missing_channel_info", event, channels=[])

    def test_too_many_channels(self) -> None:
        assert len(event(channels=[f"c{i}" for i in range(100)]).channels) == 100
        fails(400, "limit_exceeded", event, channels=[f"c{i}" for i in range(101)])

    def test_too_many_batch_items(self) -> None:
        assert len(batch([item()] * 10).items) == 10
        fails(400, "limit_exceeded", batch, [item()] * 11)

    @pytest.mark.parametrize("channel", ["bad name", "a" * 201, "x!"])
    def test_invalid_channel_name(self, channel: str) -> None:
        fails(400, "invalid_input", event, channels=["ok-1", channel])

    def test_unknown_namespace(self) -> None:
        fails(400, "invalid_input", event, channel="foo:bar")
        assert event(channel="chat:room").channels == ("chat:room",)

    @pytest.mark.parametrize(
        "socket_id", ["abc", "1.", ".1", "1.2.3", "1", 12.5, "\u0661.\u0662", " 1.2"]
    )
    def test_bad_socket_id(self, socket_id: Any) -> None:
        fails(400, "invalid_input", event, socket_id=socket_id)

    def test_encrypted_multi_channel(self) -> None:
        err = fails(400, "invalid_input", event, channels=["private-encrypted-a", "orders"])
        assert err.message == "cannot trigger to multiple channels when using encrypted channels"
        assert event(channels=["private-encrypted-a"]).channels == ("private-encrypted-a",)

    def test_payload_over_limit(self) -> None:
        assert event(data="x" * 102400).data == "x" * 102400
        fails(413, "payload_too_large", event, data="x" * 102401)

    def test_payload_limit_counts_utf8_bytes(self) -> None:
        fails(413, "payload_too_large", event, data="é" * 51201)  # 102402 bytes

    def test_payload_limit_per_app(self) -> None:
        small = replace(APP, limits=AppLimits(max_event_payload_in_kb=1))
        fails(413, "payload_too_large", event, app=small, data="x" * 1025)

    def test_body_limit_is_ten_mib(self) -> None:
        assert SETTINGS.http_request_limit_bytes == 10 * 1024 * 1024


# --- data, channels, info -------------------------------------------------------------------------


class TestFields:
    def test_string_data_verbatim(self) -> None:
        cmd = event(data='{"id":1}')
        assert (cmd.data, cmd.data_is_json) == ('{"id":1}', False)

    def test_json_data_compact_key_order_unicode(self) -> None:
        cmd = event(raw=b'{"name":"e","channel":"c","data":{"b": 1, "a": ["\\u00e9", 2.5]}}')
        assert (cmd.data, cmd.data_is_json) == ('{"b":1,"a":["é",2.5]}', True)

    @pytest.mark.parametrize(("value", "text"), [(7, "7"), (True, "true"), ([], "[]")])
    def test_other_json_values(self, value: Any, text: str) -> None:
        cmd = event(data=value)
        assert (cmd.data, cmd.data_is_json) == (text, True)

    def test_missing_or_null_data_is_null(self) -> None:
        assert (event().data, event().data_is_json) == ("null", True)
        assert event(data=None).data == "null"

    def test_lone_surrogate_rejected(self) -> None:
        fails(400, "invalid_input", event, raw=b'{"name":"e","channel":"c","data":"\\ud800"}')

    def test_channels_win_over_channel_and_duplicates_collapse(self) -> None:
        cmd = event(channel="ignored!", channels=["b", "a", "b"])
        assert cmd.channels == ("b", "a")

    def test_non_string_channel(self) -> None:
        fails(400, "invalid_input", event, channels=["a", 1])
        fails(400, "invalid_input", event, channel=5)
        fails(400, "invalid_input", event, channels="orders")

    def test_info(self) -> None:
        cmd = event(info=" subscription_count , user_count,foo")
        assert cmd.info == frozenset({"subscription_count", "user_count"})
        assert cmd.info_requested
        assert cmd.wants_channel_response
        plain = event()
        assert plain.info == frozenset()
        assert not plain.wants_channel_response
        fails(400, "invalid_input", event, info=["user_count"])

    def test_unknown_info_token_still_requests_channels(self) -> None:
        cmd = event(info="foo")
        assert cmd.info == frozenset()
        assert cmd.wants_channel_response

    def test_socket_id(self) -> None:
        assert event(socket_id="123.456").socket_id == "123.456"

    def test_user_channel_target(self) -> None:
        assert event(channel="#server-to-user-u1").channels == ("#server-to-user-u1",)

    def test_pusher_sdk_trigger_body(self) -> None:
        client = pusher.Pusher(app_id="123456", key="k", secret="s")._pusher_client
        with mock.patch("pusher.http.time.time", return_value=1700000000):
            req = client.trigger.make_request(["orders"], "order.created", {"id": 1}, "1.2")
        cmd = event(raw=req.body)
        assert (cmd.name, cmd.channels, cmd.socket_id) == ("order.created", ("orders",), "1.2")
        assert (cmd.data, cmd.data_is_json) == ('{"id": 1}', False)

    def test_pusher_sdk_batch_body(self) -> None:
        client = pusher.Pusher(app_id="123456", key="k", secret="s")._pusher_client
        req = client.trigger_batch.make_request(
            [{"channel": "orders", "name": "a", "data": {"x": 1}}]
        )
        cmd = parse_batch_events_body(req.body, APP, SETTINGS)
        assert cmd.items[0].data == '{"x": 1}'


# --- V2 fields ------------------------------------------------------------------------------------


class TestV2Fields:
    def test_extras_sanitised(self) -> None:
        cmd = event(
            extras={
                "headers": {
                    "tenant": "acme",
                    "n": 1,
                    "ok": True,
                    "sockudo_action": "x",
                    "SOCKUDO_y": 1,
                },
                "ephemeral": False,
                "echo": True,
                "idempotencyKey": "k1",
                "ai": {"transport": {}},
                "push": {"notification": {"title": "t"}},
                "unknown": 1,
            }
        )
        assert cmd.extras_json is not None
        assert json.loads(cmd.extras_json) == {
            "headers": {"tenant": "acme", "n": 1, "ok": True},
            "ephemeral": False,
            "echo": True,
            "idempotency_key": "k1",
            "ai": {"transport": {}},
            "push": {"notification": {"title": "t"}},
        }

    def test_extras_empty_after_sanitising_is_omitted(self) -> None:
        assert event(extras={"headers": {"sockudo_x": "1"}, "other": 2}).extras_json is None
        assert event(extras={}).extras_json is None

    @pytest.mark.parametrize(
        "extras",
        [
            "x",
            {"headers": "x"},
            {"headers": {"a": {"nested": 1}}},
            {"headers": {"a": [1]}},
            {"headers": {"a": None}},
            {"ephemeral": "yes"},
            {"echo": 1},
            {"idempotency_key": ""},
            {"idempotency_key": 5},
            {"ai": []},
            {"push": "x"},
        ],
    )
    def test_extras_rejected(self, extras: Any) -> None:
        fails(400, "invalid_input", event, extras=extras)

    def test_snake_case_idempotency_key_wins_over_alias(self) -> None:
        cmd = event(extras={"idempotencyKey": "a", "idempotency_key": "b"})
        assert cmd.extras_json is not None
        assert json.loads(cmd.extras_json) == {"idempotency_key": "b"}

    def test_tags(self) -> None:
        assert event(tags={"region": "eu"}).tags == {"region": "eu"}
        assert event(tags={}).tags is None
        fails(400, "invalid_input", event, tags={"a": 1})
        fails(400, "invalid_input", event, tags=["a"])

    def test_message_id(self) -> None:
        cmd = event(message_id="m-1")
        assert cmd.message_id == "m-1"
        assert cmd.wants_channel_response
        fails(400, "invalid_input", event, message_id="")
        fails(400, "invalid_input", event, message_id=3)
        fails(400, "invalid_input", event, message_id="m" * 129)


# --- idempotency keys (§5.3) ----------------------------------------------------------------------


class TestIdempotencyKeys:
    def test_body_key_wins_over_header(self) -> None:
        assert event(idempotency_key="body", header="header").idempotency_key == "body"

    def test_header_used_when_body_has_none(self) -> None:
        assert event(header="header").idempotency_key == "header"

    def test_empty_key(self) -> None:
        err = fails(400, "invalid_input", event, idempotency_key="")
        assert err.message == "Idempotency key must not be empty"
        fails(400, "invalid_input", event, header="")

    def test_key_length_in_bytes(self) -> None:
        assert event(idempotency_key="k" * 128).idempotency_key == "k" * 128
        err = fails(400, "invalid_input", event, idempotency_key="k" * 129)
        assert err.message == "Idempotency key exceeds maximum length of 128 characters"
        fails(400, "invalid_input", event, idempotency_key="é" * 65)

    def test_non_string_key(self) -> None:
        fails(400, "invalid_input", event, idempotency_key=5)

    def test_disabled_globally_ignores_keys(self) -> None:
        off = Settings(idempotency_enabled=False)
        assert event(settings=off, idempotency_key="", header="h").idempotency_key is None

    def test_app_override(self) -> None:
        app_off = replace(APP, idempotency_enabled=False)
        assert event(app=app_off, idempotency_key="k").idempotency_key is None
        app_on = replace(APP, idempotency_enabled=True)
        on = event(app=app_on, settings=Settings(idempotency_enabled=False), idempotency_key="k")
        assert on.idempotency_key == "k"

    def test_batch_header_is_batch_key_not_item_key(self) -> None:
        cmd = batch([item(), item(idempotency_key="i1")], header="b1")
        assert cmd.batch_key == "b1"
        assert [i.idempotency_key for i in cmd.items] == [None, "i1"]

    def test_batch_key_rules(self) -> None:
        fails(400, "invalid_input", batch, [item()], header="")
        fails(400, "invalid_input", batch, [item()], header="k" * 129)
        assert (
            batch([item()], header="k", settings=Settings(idempotency_enabled=False)).batch_key
            is None
        )


# --- batches --------------------------------------------------------------------------------------


class TestBatch:
    def test_items_in_order(self) -> None:
        cmd = batch(
            [
                {"channel": "orders", "name": "order.created", "data": '{"id":1}'},
                {
                    "channel": "presence-room",
                    "name": "note",
                    "data": "hi",
                    "info": "user_count",
                    "socket_id": "1.2",
                },
            ]
        )
        first, second = cmd.items
        assert (first.name, first.channels, first.info_requested) == (
            "order.created",
            ("orders",),
            False,
        )
        assert second.info == frozenset({"user_count"})
        assert second.socket_id == "1.2"

    def test_invalid_item_names_its_index(self) -> None:
        err = fails(400, "invalid_input", batch, [item(), item(channel="bad name")])
        assert err.message.startswith("Batch item 1: ")

    def test_item_keeps_its_own_status(self) -> None:
        err = fails(413, "payload_too_large", batch, [item(data="x" * 102401)])
        assert "Batch item 0" in err.message
        fails(400, "limit_exceeded", batch, [item(), item(name="n" * 201)])
        fails(400, "missing_channel_info", batch, [{"name": "e"}])

    def test_item_not_an_object(self) -> None:
        err = fails(400, "invalid_input", batch, [item(), "x"])
        assert err.message.startswith("Batch item 1")

    def test_item_channels_limit(self) -> None:
        fails(400, "limit_exceeded", batch, [item(channels=[f"c{i}" for i in range(101)])])

    def test_batch_size_per_app(self) -> None:
        app = replace(APP, limits=AppLimits(max_event_batch_size=2))
        fails(400, "limit_exceeded", batch, [item()] * 3, app=app)


# --- fingerprint (spec 03 §8.1) -------------------------------------------------------------------


class TestFingerprint:
    def test_stable_and_hex(self) -> None:
        fp = fingerprint(event(data="x"))
        assert fp == fingerprint(event(data="x"))
        assert len(fp) == 64
        assert int(fp, 16) >= 0

    def test_ignores_socket_id_info_keys_and_channel_order(self) -> None:
        base = fingerprint(event(channels=["a", "b"], data="x"))
        assert base == fingerprint(
            event(
                channels=["b", "a"],
                data="x",
                socket_id="1.2",
                info="user_count",
                idempotency_key="k",
            )
        )

    def test_ignores_key_order_of_extras_and_tags(self) -> None:
        a = event(extras={"headers": {"x": "1", "y": "2"}}, tags={"p": "1", "q": "2"})
        b = event(extras={"headers": {"y": "2", "x": "1"}}, tags={"q": "2", "p": "1"})
        assert fingerprint(a) == fingerprint(b)

    @pytest.mark.parametrize(
        "change",
        [
            {"name": "other"},
            {"data": "y"},
            {"data": 1},
            {"channels": ["a", "c"]},
            {"extras": {"headers": {"x": "1"}}},
            {"tags": {"p": "1"}},
        ],
    )
    def test_covers_name_data_channels_extras_tags(self, change: dict[str, Any]) -> None:
        fields: dict[str, Any] = {"name": "e", "channels": ["a", "b"], "data": "1"}
        assert fingerprint(event(**fields)) != fingerprint(event(**{**fields, **change}))

    def test_string_and_json_data_differ(self) -> None:
        assert fingerprint(event(data="1")) != fingerprint(event(data=1))

    def test_batch(self) -> None:
        one = batch([item(data="a"), item(data="b")])
        assert fingerprint(one) == fingerprint(batch([item(data="a"), item(data="b")], header="k"))
        assert fingerprint(one) != fingerprint(batch([item(data="b"), item(data="a")]))
