"""Channel types, name rules and per-channel policy (spec 01 §3.6, §9.2; spec 03 §1.1)."""

from __future__ import annotations

import re
from dataclasses import replace

import pytest

from sockudo.channels import (
    ChannelType,
    InvalidChannelName,
    classify_channel,
    is_presence_channel,
    namespace_of,
    resolve_channel_policy,
    strip_type_prefix,
    validate_channel_name,
)
from sockudo.config import (
    AppConfig,
    AppLimits,
    ChannelNamespace,
    HistoryPolicy,
    PresenceHistoryPolicy,
    Settings,
)
from sockudo.errors import ApiError

APP = AppConfig(id="app-id", key="app-key", secret="app-secret")
NS_APP = replace(
    APP,
    channel_namespaces=(
        ChannelNamespace(name="chat", channel_name_pattern=re.compile(r"^chat:[A-Za-z0-9._-]+$")),
        ChannelNamespace(name="team", allow_user_limited_channels=True),
        ChannelNamespace(name="short", max_channel_name_length=12),
        ChannelNamespace(name="long", max_channel_name_length=300),
    ),
)


@pytest.mark.parametrize(
    ("name", "kind", "cache", "prefix"),
    [
        (
            "private-encrypted-cache-x",
            ChannelType.PRIVATE_ENCRYPTED,
            True,
            "private-encrypted-cache-",
        ),
        ("private-encrypted-x", ChannelType.PRIVATE_ENCRYPTED, False, "private-encrypted-"),
        ("private-cache-x", ChannelType.PRIVATE, True, "private-cache-"),
        ("private-x", ChannelType.PRIVATE, False, "private-"),
        ("presence-cache-x", ChannelType.PRESENCE, True, "presence-cache-"),
        ("presence-x", ChannelType.PRESENCE, False, "presence-"),
        ("cache-x", ChannelType.PUBLIC, True, "cache-"),
        ("#server-to-user-u1", ChannelType.USER, False, "#server-to-user-"),
        ("orders", ChannelType.PUBLIC, False, ""),
        # anchored prefixes only: upstream's substring `cache-` match is a deviation
        ("my-cache-x", ChannelType.PUBLIC, False, ""),
        ("privatex", ChannelType.PUBLIC, False, ""),
    ],
)
def test_classification(name: str, kind: ChannelType, cache: bool, prefix: str) -> None:
    info = classify_channel(name)
    assert (info.type, info.cache, info.prefix) == (kind, cache, prefix)


def test_flags() -> None:
    enc = classify_channel("private-encrypted-x")
    assert enc.is_private
    assert enc.is_encrypted
    assert enc.requires_auth
    assert not enc.allows_client_events
    priv = classify_channel("private-cache-x")
    assert priv.requires_auth
    assert priv.allows_client_events
    assert priv.cache
    pres = classify_channel("presence-cache-x")
    assert pres.is_presence
    assert pres.requires_auth
    assert pres.allows_client_events
    public = classify_channel("cache-x")
    assert not public.requires_auth
    assert not public.allows_client_events
    user = classify_channel("#server-to-user-u1")
    assert user.is_user_channel
    assert user.user_id == "u1"
    assert not user.allows_client_events
    assert classify_channel("orders").user_id is None


def test_is_presence_channel() -> None:
    assert is_presence_channel("presence-room")
    assert is_presence_channel("presence-cache-room")
    assert not is_presence_channel("private-room")


def test_strip_prefix_and_namespace() -> None:
    assert strip_type_prefix("private-encrypted-cache-chat:1") == "chat:1"
    assert namespace_of("private-chat:room-1") == "chat"
    assert namespace_of("presence-cache-team:a#u1") == "team"
    assert namespace_of("orders") is None
    assert namespace_of("base#u1:x") is None  # the `:` is after `#`
    assert namespace_of("#server-to-user-a:b") is None


class TestValidation:
    @pytest.mark.parametrize(
        "name",
        [
            "orders",
            "Az09_-=@,.;",
            "private-orders",
            "presence-room",
            "private-encrypted-x",
            "#server-to-user-u1",
            "#server-to-user-a.b@c=d-e_f",
            "x" * 200,
        ],
    )
    def test_valid(self, name: str) -> None:
        assert validate_channel_name(name, APP).name == name

    @pytest.mark.parametrize(
        "name", ["bad channel!", "a b", "ünïcode", "[meta]orders", "orders*", "a/b", "a\n", ""]
    )
    def test_invalid_characters(self, name: str) -> None:
        with pytest.raises(InvalidChannelName):
            validate_channel_name(name, APP)

    def test_length_in_bytes(self) -> None:
        validate_channel_name("x" * 200, APP)
        with pytest.raises(InvalidChannelName, match="201 bytes"):
            validate_channel_name("x" * 201, APP)

    def test_app_limit(self) -> None:
        app = replace(APP, limits=AppLimits(max_channel_name_length=10))
        validate_channel_name("x" * 10, app)
        with pytest.raises(InvalidChannelName):
            validate_channel_name("x" * 11, app)

    def test_unknown_namespace(self) -> None:
        with pytest.raises(InvalidChannelName) as exc:
            validate_channel_name("foo:bar", APP)
        assert exc.value.message == "Unknown channel namespace 'foo'"
        assert exc.value.channel == "foo:bar"

    def test_empty_namespace(self) -> None:
        with pytest.raises(InvalidChannelName, match="Unknown channel namespace ''"):
            validate_channel_name("private-:x", NS_APP)

    def test_namespace_pattern(self) -> None:
        validate_channel_name("private-chat:room-1", NS_APP)
        validate_channel_name("chat:room.1", NS_APP)
        with pytest.raises(InvalidChannelName, match="pattern of namespace 'chat'"):
            validate_channel_name("chat:room;1", NS_APP)

    def test_namespace_length_override(self) -> None:
        validate_channel_name("short:123456", NS_APP)
        with pytest.raises(InvalidChannelName):
            validate_channel_name("short:1234567", NS_APP)
        validate_channel_name("long:" + "x" * 250, NS_APP)

    def test_user_limited_channels(self) -> None:
        validate_channel_name("team:room#u1,u2", NS_APP)
        validate_channel_name("presence-team:room#u.1@x", NS_APP)
        with pytest.raises(InvalidChannelName, match="allow_user_limited_channels"):
            validate_channel_name("chat:room#u1", NS_APP)
        with pytest.raises(InvalidChannelName, match="allow_user_limited_channels"):
            validate_channel_name("room#u1", NS_APP)
        for bad in ("team:room#", "team:room#u1,", "team:room#u1;u2", "team:room#u1#u2"):
            with pytest.raises(InvalidChannelName):
                validate_channel_name(bad, NS_APP)

    def test_user_channel_needs_user_id(self) -> None:
        with pytest.raises(InvalidChannelName):
            validate_channel_name("#server-to-user-", APP)
        with pytest.raises(InvalidChannelName):
            validate_channel_name("#server-to-user-a,b", APP)

    def test_error_is_http_400_invalid_input(self) -> None:
        with pytest.raises(ApiError) as exc:
            validate_channel_name("bad channel!", APP)
        assert (exc.value.status, exc.value.code) == (400, "invalid_input")
        assert "bad channel!" in exc.value.message

    def test_huge_name_is_cut_in_message(self) -> None:
        with pytest.raises(InvalidChannelName) as exc:
            validate_channel_name("!" * 100000, APP)
        assert len(exc.value.message) < 300

    def test_settings_argument_accepted(self) -> None:
        validate_channel_name("orders", APP, Settings())


class TestPolicy:
    def test_global_defaults(self) -> None:
        p = resolve_channel_policy("orders", APP, Settings())
        assert p.history_enabled
        assert p.rewind_enabled
        assert p.presence_history_enabled
        assert p.retention_window_seconds == 86400
        assert p.max_messages_per_channel is None
        assert not p.annotations_enabled
        assert p.idempotency_enabled
        assert p.idempotency_ttl_seconds == 120

    def test_app_overrides_global(self) -> None:
        app = replace(
            APP,
            history=HistoryPolicy(enabled=False, max_messages_per_channel=1),
            presence_history=PresenceHistoryPolicy(enabled=False),
            idempotency_enabled=False,
            idempotency_ttl_seconds=300,
        )
        p = resolve_channel_policy("orders", app, Settings())
        assert not p.history_enabled
        assert not p.presence_history_enabled
        assert p.max_messages_per_channel == 1
        assert not p.idempotency_enabled
        assert p.idempotency_ttl_seconds == 300

    def test_namespace_overrides_app(self) -> None:
        app = replace(
            APP,
            history=HistoryPolicy(max_messages_per_channel=1, retention_window_seconds=60),
            channel_namespaces=(
                ChannelNamespace(
                    name="chat",
                    history=HistoryPolicy(max_messages_per_channel=3, retention_window_seconds=0),
                    presence_history=PresenceHistoryPolicy(enabled=False),
                ),
            ),
        )
        chat = resolve_channel_policy("private-chat:room-1", app, Settings())
        assert chat.max_messages_per_channel == 3
        assert chat.retention_window_seconds is None  # explicit 0 = unlimited
        assert not chat.presence_history_enabled
        orders = resolve_channel_policy("orders", app, Settings())
        assert orders.max_messages_per_channel == 1
        assert orders.retention_window_seconds == 60

    def test_annotations_force_history(self) -> None:
        app = replace(
            APP,
            history=HistoryPolicy(enabled=False),
            channel_namespaces=(ChannelNamespace(name="chat", annotations_enabled=True),),
        )
        assert resolve_channel_policy("chat:1", app, Settings()).history_enabled
        assert not resolve_channel_policy("orders", app, Settings()).history_enabled
        app_wide = replace(app, annotations_enabled=True)
        assert resolve_channel_policy("orders", app_wide, Settings()).annotations_enabled

    def test_global_switches(self) -> None:
        settings = Settings(history_enabled=False, idempotency_enabled=False)
        p = resolve_channel_policy("orders", APP, settings)
        assert not p.history_enabled
        assert not p.idempotency_enabled

    def test_resolved_once_per_configuration_and_namespace(self) -> None:
        app = replace(
            APP,
            channel_namespaces=(
                ChannelNamespace(name="chat", history=HistoryPolicy(max_messages_per_channel=3)),
            ),
        )
        settings = Settings()
        first = resolve_channel_policy("chat:a", app, settings)
        assert resolve_channel_policy("private-chat:b", app, settings) is first
        # Unconfigured namespaces share the no-namespace answer; a configured one has its own.
        plain = resolve_channel_policy("orders", app, settings)
        assert resolve_channel_policy("other:x", app, settings) is plain
        assert plain.max_messages_per_channel is None
        assert first.max_messages_per_channel == 3
        # Another configuration object gets its own answer, never a remembered one.
        off = replace(app, history=HistoryPolicy(enabled=False))
        assert not resolve_channel_policy("orders", off, settings).history_enabled
        assert resolve_channel_policy("orders", app, settings).history_enabled
        quiet = replace(settings, history_enabled=False)
        assert not resolve_channel_policy("orders", app, quiet).history_enabled
