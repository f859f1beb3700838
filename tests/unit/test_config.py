"""Configuration loading (spec 01 §9, spec 03 §1, spec 05 §11)."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import pytest

from sockudo.config import (
    DEV_APP_SECRET,
    AppConfig,
    AppLimits,
    Settings,
    load_settings,
)
from sockudo.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[2]

APP_TOML = """
[[app_manager.array.apps]]
id = "123456"
key = "num-key"
secret = "num-secret"
"""


NS = "[[app_manager.array.apps.policy.channels.channel_namespaces]]\n"
HOOK = "[[app_manager.array.apps.policy.webhooks]]\n"


def write(tmp_path: Path, text: str, name: str = "sockudo.toml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def load(
    tmp_path: Path | None = None,
    text: str | None = None,
    env: dict[str, str] | None = None,
    name: str = "sockudo.toml",
    **overrides: Any,
) -> Settings:
    path = write(tmp_path, text, name) if tmp_path is not None and text is not None else None
    return load_settings(path, overrides=overrides or None, environ=env or {})


class TestDefaults:
    def test_server_defaults(self) -> None:
        s = load()
        assert (s.host, s.port, s.metrics_host, s.metrics_port) == (
            "0.0.0.0",
            6001,
            "0.0.0.0",
            9601,
        )
        assert s.metrics_enabled
        assert s.usage_enabled
        assert not s.debug
        assert s.environment == "development"
        assert (s.activity_timeout, s.shutdown_grace_period, s.request_limit_in_mb) == (120, 10, 10)
        assert s.http_request_limit_bytes == 10 * 1024 * 1024
        assert not s.rate_limiter_enabled

    def test_log_defaults(self) -> None:
        s = load()
        assert s.data_dir == "./data"
        assert s.log_backend == "embedded"
        assert s.kafka_bootstrap_servers is None
        assert s.topic_prefix == "sockudo"
        assert s.channel_partitions is None
        assert s.effective_channel_partitions == 1
        assert (s.ack_timeout_ms, s.fold_wait_timeout_ms) == (5000, 5000)
        assert (s.embedded_fsync, s.embedded_fsync_interval_ms) == ("always", 100)
        assert s.embedded_max_record_bytes == 1048576
        assert Path(s.embedded_log_dir) == Path("./data/log")
        assert Path(s.projection_dir) == Path("./data/projection")
        assert (s.projection_batch_max_records, s.projection_batch_max_ms) == (500, 5)
        assert s.projection_max_lag_records == 50000
        assert s.node_id

    def test_history_and_idempotency_defaults(self) -> None:
        s = load()
        assert s.history_enabled
        assert s.presence_history_enabled
        assert (s.history_max_page_size, s.history_retention_window_seconds) == (100, 86400)
        assert s.history_max_messages_per_channel is None
        assert s.history_max_bytes_per_channel is None
        assert not s.versioned_messages_enabled
        assert not s.annotations_enabled
        assert (s.idempotency_enabled, s.idempotency_ttl_seconds) == (True, 120)
        assert s.idempotency_max_key_length == 128

    def test_websocket_heartbeat_defaults_and_sources(self, tmp_path: Path) -> None:
        # Upstream Sockudo's [websocket] names; pong_timeout is this node's (upstream: fixed 30).
        s = load()
        assert (s.websocket_auto_ping, s.websocket_ping_interval) == (True, 30)
        assert s.websocket_pong_timeout == 30
        text = "[websocket]\nauto_ping = false\nping_interval = 0\npong_timeout = 5\n"
        s = load(tmp_path, text)
        assert (s.websocket_auto_ping, s.websocket_ping_interval) == (False, 0)
        assert s.websocket_pong_timeout == 5
        env = {"WEBSOCKET_PING_INTERVAL": "45", "WEBSOCKET_PONG_TIMEOUT": "10"}
        s = load(tmp_path, text, env=env)
        assert (s.websocket_ping_interval, s.websocket_pong_timeout) == (45, 10)
        with pytest.raises(ConfigError, match="WEBSOCKET_PONG_TIMEOUT"):
            load(env={"WEBSOCKET_PONG_TIMEOUT": "0"})

    def test_settings_constructor_matches_loaded_defaults(self) -> None:
        loaded = dataclasses.replace(load(), apps=(), dev_app_in_use=False)
        built = Settings(node_id=loaded.node_id)
        assert built == loaded

    def test_frozen(self) -> None:
        s = load()
        with pytest.raises(dataclasses.FrozenInstanceError):
            s.port = 1  # type: ignore[misc]


class TestDevApp:
    def test_registered_without_config_or_env_app(self, caplog: pytest.LogCaptureFixture) -> None:
        with caplog.at_level(logging.WARNING, logger="sockudo.config"):
            s = load()
        assert s.dev_app_in_use
        (app,) = s.apps
        assert (app.id, app.key, app.secret, app.enabled) == (
            "app-id",
            "app-key",
            "app-secret",
            True,
        )
        assert app.limits.max_connections == 100000
        assert app.limits.max_client_events_per_second == 1000
        assert app.features.enable_client_messages
        assert app.features.enable_user_authentication
        assert app.allowed_origins == ("*",)
        assert app.idempotency_enabled is None  # global TTL, 120 s
        assert "development app" in caplog.text

    def test_not_registered_when_a_file_is_given(self, tmp_path: Path) -> None:
        s = load(tmp_path, "port = 6001\n")
        assert s.apps == ()
        assert not s.dev_app_in_use

    def test_production_refuses_dev_app(self) -> None:
        with pytest.raises(ConfigError, match="development"):
            load(env={"ENVIRONMENT": "production"})

    def test_production_refuses_dev_secret_from_file(self, tmp_path: Path) -> None:
        text = APP_TOML.replace("num-secret", DEV_APP_SECRET)
        with pytest.raises(ConfigError, match="123456"):
            load(tmp_path, text, env={"ENVIRONMENT": "Production"})

    def test_production_with_real_credentials(self, tmp_path: Path) -> None:
        s = load(tmp_path, APP_TOML, env={"ENVIRONMENT": "production"})
        assert s.environment == "production"
        assert s.app_by_id("123456") is not None


class TestFile:
    def test_policy_form(self, tmp_path: Path) -> None:
        text = """
[[app_manager.array.apps]]
id = "a1"
key = "k1"
secret = "s1"
enabled = false

[app_manager.array.apps.policy.limits]
max_connections = "50"
max_backend_events_per_second = 10
terminate_on_limit = "yes"
max_event_payload_in_kb = 1

[app_manager.array.apps.policy.features]
enable_client_messages = "on"
enable_watchlist_events = 1

[app_manager.array.apps.policy.channels]
allowed_origins = ["https://ok.example", "*.example.com"]
annotations_enabled = true

[[app_manager.array.apps.policy.channels.channel_namespaces]]
name = "chat"
channel_name_pattern = "^chat:[a-z]+$"
max_channel_name_length = 50
allow_user_limited_channels = true

[app_manager.array.apps.policy.channels.channel_namespaces.history]
max_messages_per_channel = 3

[app_manager.array.apps.policy.idempotency]
enabled = false
ttl_seconds = 300

[app_manager.array.apps.policy.history]
enabled = false
retention_window_seconds = 60

[app_manager.array.apps.policy.presence_history]
enabled = false

[app_manager.array.apps.policy.connection_recovery]
enabled = false

[[app_manager.array.apps.policy.webhooks]]
url = "https://hooks.example/p"
event_types = ["channel_occupied"]
filter = { channel_prefix = "private-" }
headers = { X-Extra = "1" }
"""
        (app,) = load(tmp_path, text).apps
        assert not app.enabled
        assert app.limits == AppLimits(
            max_connections=50,
            max_backend_events_per_second=10,
            terminate_on_limit=True,
            max_event_payload_in_kb=1,
        )
        assert app.features.enable_client_messages
        assert app.features.enable_watchlist_events
        assert not app.features.enable_user_authentication
        assert app.allowed_origins == ("https://ok.example", "*.example.com")
        assert app.annotations_enabled is True
        ns = app.namespace("chat")
        assert ns is not None
        assert ns.channel_name_pattern is not None
        assert ns.channel_name_pattern.pattern == "^chat:[a-z]+$"
        assert (ns.max_channel_name_length, ns.allow_user_limited_channels) == (50, True)
        assert ns.history.max_messages_per_channel == 3
        assert ns.history.enabled is None
        assert app.namespace("other") is None
        assert (app.idempotency_enabled, app.idempotency_ttl_seconds) == (False, 300)
        assert app.history_enabled is False
        assert app.history.retention_window_seconds == 60
        assert app.presence_history.enabled is False
        assert app.connection_recovery_enabled is False
        (hook,) = app.webhooks
        assert hook.url == "https://hooks.example/p"
        assert hook.event_types == frozenset({"channel_occupied"})
        assert hook.filter.channel_prefix == "private-"
        assert hook.headers == (("X-Extra", "1"),)

    def test_legacy_flat_form(self, tmp_path: Path) -> None:
        text = """
[[app_manager.array.apps]]
id = 42
key = "k"
secret = "s"
max_connections = "7"
enable_client_messages = "true"
allowed_origins = ["*"]
webhooks = [{ url = "http://h/", event_types = ["member_added"] }]
"""
        (app,) = load(tmp_path, text).apps
        assert app.id == "42"
        assert app.limits.max_connections == 7
        assert app.features.enable_client_messages
        assert app.allowed_origins == ("*",)
        assert app.webhooks[0].event_types == frozenset({"member_added"})

    def test_flat_fields_ignored_when_policy_present(self, tmp_path: Path) -> None:
        text = """
[[app_manager.array.apps]]
id = "a"
key = "k"
secret = "s"
max_connections = 7

[app_manager.array.apps.policy.features]
enable_client_messages = true
"""
        (app,) = load(tmp_path, text).apps
        assert app.limits.max_connections == 0
        assert app.features.enable_client_messages

    def test_server_wide_limits_are_inherited(self, tmp_path: Path) -> None:
        text = (
            "[event_limits]\nmax_batch_size = 3\n[channel_limits]\nmax_name_length = 50\n"
            + APP_TOML
        )
        s = load(tmp_path, text)
        (app,) = s.apps
        assert app.limits.max_event_batch_size == 3
        assert app.limits.max_channel_name_length == 50
        assert s.default_app_limits.max_event_batch_size == 3

    def test_json_file(self, tmp_path: Path) -> None:
        doc = {
            "port": "7001",
            "event_log": {"backend": "embedded", "channel_partitions": 3},
            "app_manager": {"array": {"apps": [{"id": "1", "key": "k", "secret": "s"}]}},
        }
        s = load(tmp_path, json.dumps(doc), name="config.json")
        assert s.port == 7001
        assert s.effective_channel_partitions == 3
        assert s.app_by_key("k") is not None

    def test_sections(self, tmp_path: Path) -> None:
        text = """
data_dir = "/srv/sockudo"
[metrics]
enabled = false
port = 9700
[event_log]
backend = "kafka"
topic_prefix = "t"
[event_log.kafka]
bootstrap_servers = ["b1:9092", "b2:9092"]
[event_log.embedded]
fsync = "interval"
[history]
retention_window_seconds = 0
max_page_size = 50
postgres = { write_timeout_ms = 2500 }
[idempotency]
ttl_seconds = "30"
[cluster]
node_id = "n1"
"""
        s = load(tmp_path, text)
        assert not s.metrics_enabled
        assert s.metrics_port == 9700
        assert s.log_backend == "kafka"
        assert s.kafka_bootstrap_servers == "b1:9092,b2:9092"
        assert s.effective_channel_partitions == 24
        assert s.topic_prefix == "t"
        assert s.embedded_fsync == "interval"
        assert s.history_retention_window_seconds is None  # 0 = keep forever
        assert s.history_max_page_size == 50
        assert s.ack_timeout_ms == 2500  # follows history.write_timeout_ms
        assert s.idempotency_ttl_seconds == 30
        assert s.node_id == "n1"
        assert s.embedded_log_dir == str(Path("/srv/sockudo") / "log")

    def test_example_file_loads(self) -> None:
        s = load_settings(str(REPO_ROOT / "sockudo.example.toml"), environ={})
        assert {a.id for a in s.apps} == {"app-id", "123456"}
        numeric = s.app_by_id("123456")
        assert numeric is not None
        assert numeric.secret == "num-secret"
        assert s.port == 6001
        assert s.log_backend == "embedded"

    @pytest.mark.parametrize(
        ("text", "needle"),
        [
            ("port = [", "does not parse"),
            ("port = 'x'", "port"),
            ("port = true", "port"),
            ("port = -1", "port"),
            ("[event_log]\nbackend = 'redis'", "event_log.backend"),
            ("metrics = 3\n", "metrics"),
            ("[[app_manager.array.apps]]\nid = 'a'\nkey = 'k'\n", "secret"),
            ("[[app_manager.array.apps]]\nid = 'a'\nkey = 'k'\nsecret = ''\n", "secret"),
            (
                APP_TOML + "[app_manager.array.apps.policy.limits]\nmax_connections = 'many'\n",
                "max_connections",
            ),
            (
                APP_TOML
                + "[app_manager.array.apps.policy.features]\nenable_client_messages = 'maybe'\n",
                "enable_client_messages",
            ),
            (
                APP_TOML + NS + "name = 'a:b'\n",
                "':'",
            ),
            (
                APP_TOML + NS + "name = 'a'\nchannel_name_pattern = '('\n",
                "regular expression",
            ),
            (
                APP_TOML + NS + "name = 'a'\n" + NS + "name = 'a'\n",
                "duplicate namespace",
            ),
            (
                APP_TOML + NS + "name = 'a'\nmax_channel_name_length = 0\n",
                "max_channel_name_length",
            ),
            (
                APP_TOML
                + "[app_manager.array.apps.policy.channels]\nallowed_origins = ['*.a.*']\n",
                "more than one",
            ),
            (
                APP_TOML + "[app_manager.array.apps.policy.channels]\nallowed_origins = ['']\n",
                "empty origin",
            ),
            (
                APP_TOML + HOOK + "url = 'http://h'\nevent_types = ['nope']\n",
                "nope",
            ),
            (APP_TOML + HOOK + "event_types = []\n", "url"),
        ],
    )
    def test_invalid(self, tmp_path: Path, text: str, needle: str) -> None:
        with pytest.raises(ConfigError, match=needle.replace("(", r"\(").replace("*", r"\*")):
            load(tmp_path, text)

    def test_missing_file(self, tmp_path: Path) -> None:
        with pytest.raises(ConfigError, match="cannot read"):
            load_settings(str(tmp_path / "nope.toml"), environ={})

    def test_duplicate_app_id(self, tmp_path: Path) -> None:
        text = APP_TOML + APP_TOML.replace("num-key", "other-key")
        with pytest.raises(ConfigError, match="duplicate app id '123456'"):
            load(tmp_path, text)

    def test_duplicate_app_key(self, tmp_path: Path) -> None:
        text = APP_TOML + APP_TOML.replace("123456", "654321")
        with pytest.raises(ConfigError, match="duplicate app key 'num-key'"):
            load(tmp_path, text)


class TestInterpolation:
    def test_variables_and_defaults(self, tmp_path: Path) -> None:
        text = (
            'port = "${MY_PORT}"\nhost = "${MY_HOST:-127.0.0.2}"\n'
            'topic_prefix = "x"\n[event_log]\ntopic_prefix = "${PFX:-dflt}"\n'
        )
        s = load(tmp_path, text, env={"MY_PORT": "7100", "PFX": ""})
        assert (s.port, s.host, s.topic_prefix) == (7100, "127.0.0.2", "dflt")

    def test_all_missing_variables_listed(self, tmp_path: Path) -> None:
        text = 'host = "${A_HOST}"\nport = "${B_PORT}"\n[metrics]\nhost = "${A_HOST}"\n'
        with pytest.raises(ConfigError) as exc:
            load(tmp_path, text)
        assert "A_HOST, B_PORT" in str(exc.value)

    def test_comment_lines_are_not_interpolated(self, tmp_path: Path) -> None:
        s = load(tmp_path, '# secret = "${NOT_SET}"\nport = 6002\n')
        assert s.port == 6002

    def test_secret_from_environment(self, tmp_path: Path) -> None:
        s = load(
            tmp_path, APP_TOML.replace('"num-secret"', '"${APP_SECRET}"'), env={"APP_SECRET": "xyz"}
        )
        app = s.app_by_id("123456")
        assert app is not None
        assert app.secret == "xyz"

    def test_json_interpolation(self, tmp_path: Path) -> None:
        s = load(tmp_path, '{"port": "${P:-6003}"}', name="c.json")
        assert s.port == 6003


class TestEnvironment:
    def test_environment_over_file(self, tmp_path: Path) -> None:
        env = {
            "PORT": "7000",
            "HOST": "127.0.0.1",
            "METRICS_ENABLED": "off",
            "SOCKUDO_DATA_DIR": "/tmp/d",
            "SOCKUDO_LOG": "kafka",
            "SOCKUDO_KAFKA_BOOTSTRAP": "k:9092",
            "EVENT_LOG_TOPIC_PREFIX": "p",
            "EVENT_LOG_CHANNEL_PARTITIONS": "6",
            "PROJECTION_BATCH_MAX_RECORDS": "50",
            "NODE_ID": "node-b",
            "HISTORY_ENABLED": "no",
            "HISTORY_MAX_PAGE_SIZE": "20",
            "IDEMPOTENCY_TTL_SECONDS": "60",
            "RATE_LIMITER_ENABLED": "1",
            "CORS_ORIGINS": "https://a, https://b",
            "HTTP_API_USAGE_ENABLED": "false",
            "DEBUG_MODE": "yes",
        }
        s = load(tmp_path, "port = 6500\n[event_log]\ntopic_prefix = 'file'\n" + APP_TOML, env=env)
        assert (s.port, s.host, s.metrics_enabled) == (7000, "127.0.0.1", False)
        assert s.data_dir == "/tmp/d"
        assert s.embedded_log_dir == str(Path("/tmp/d") / "log")
        assert (s.log_backend, s.kafka_bootstrap_servers) == ("kafka", "k:9092")
        assert (s.topic_prefix, s.effective_channel_partitions) == ("p", 6)
        assert s.projection_batch_max_records == 50
        assert s.node_id == "node-b"
        assert not s.history_enabled
        assert s.history_max_page_size == 20
        assert s.idempotency_ttl_seconds == 60
        assert s.rate_limiter_enabled
        assert s.cors_origins == ("https://a", "https://b")
        assert not s.usage_enabled
        assert s.debug

    def test_kafka_bootstrap_primary_name_wins(self) -> None:
        s = load(env={"KAFKA_BOOTSTRAP_SERVERS": "a:1", "SOCKUDO_KAFKA_BOOTSTRAP": "b:2"})
        assert s.kafka_bootstrap_servers == "a:1"

    def test_kafka_needs_bootstrap(self) -> None:
        with pytest.raises(ConfigError, match="KAFKA_BOOTSTRAP_SERVERS"):
            load(env={"SOCKUDO_LOG": "kafka"})

    @pytest.mark.parametrize(
        ("raw", "value"),
        [
            ("true", True),
            ("TRUE", True),
            ("1", True),
            ("yes", True),
            ("On", True),
            ("false", False),
            ("0", False),
            ("no", False),
            ("off", False),
            ("OFF", False),
        ],
    )
    def test_booleans(self, raw: str, value: bool) -> None:
        assert load(env={"HISTORY_ENABLED": raw}).history_enabled is value

    def test_bad_boolean_names_the_variable(self) -> None:
        with pytest.raises(ConfigError, match="HISTORY_ENABLED"):
            load(env={"HISTORY_ENABLED": "maybe"})

    def test_bad_integer_names_the_variable(self) -> None:
        with pytest.raises(ConfigError, match="PORT"):
            load(env={"PORT": "60o1"})

    def test_ports_above_65535_are_refused_from_every_source(self, tmp_path: Path) -> None:
        assert load(env={"PORT": "65535"}).port == 65535
        with pytest.raises(ConfigError, match=r"PORT \(environment\): must be <= 65535"):
            load(env={"PORT": "65536"})
        with pytest.raises(ConfigError, match="METRICS_PORT"):
            load(env={"METRICS_PORT": "70000"})
        with pytest.raises(ConfigError, match="'port' in"):
            load(tmp_path, "port = 99999\n")
        with pytest.raises(ConfigError, match="override 'port'"):
            load(port=70000)

    def test_empty_variable_counts_as_unset(self) -> None:
        assert load(env={"PORT": ""}).port == 6001

    def test_ack_timeout_explicit_wins(self) -> None:
        s = load(env={"HISTORY_WRITE_TIMEOUT_MS": "100", "EVENT_LOG_ACK_TIMEOUT_MS": "200"})
        assert s.ack_timeout_ms == 200
        assert load(env={"HISTORY_WRITE_TIMEOUT_MS": "100"}).ack_timeout_ms == 100


class TestEnvApp:
    CREDS = {
        "SOCKUDO_DEFAULT_APP_ID": "env-id",
        "SOCKUDO_DEFAULT_APP_KEY": "env-key",
        "SOCKUDO_DEFAULT_APP_SECRET": "env-secret",
    }

    def test_replaces_file_apps(self, tmp_path: Path) -> None:
        s = load(tmp_path, APP_TOML, env=self.CREDS)
        (app,) = s.apps
        assert (app.id, app.key, app.secret, app.enabled) == (
            "env-id",
            "env-key",
            "env-secret",
            True,
        )
        assert s.app_by_id("123456") is None
        assert not s.dev_app_in_use

    def test_defaults(self) -> None:
        (app,) = load(env=self.CREDS).apps
        assert app.limits == AppLimits(
            max_connections=100,
            max_backend_events_per_second=100,
            max_client_events_per_second=100,
            max_read_requests_per_second=100,
            max_presence_members_per_channel=100,
            max_presence_member_size_in_kb=2,
            max_channel_name_length=200,
            max_event_name_length=200,
            max_event_channels_at_once=100,
            max_event_payload_in_kb=100,
            max_event_batch_size=10,
        )
        assert app.features.enable_client_messages is False
        assert app.features.enable_user_authentication is False
        assert app.features.enable_watchlist_events is False
        assert app.allowed_origins is None
        assert app.annotations_enabled is False

    def test_settings(self) -> None:
        env = {
            **self.CREDS,
            "SOCKUDO_DEFAULT_APP_MAX_CONNECTIONS": "5",
            "SOCKUDO_DEFAULT_APP_MAX_EVENT_BATCH_SIZE": "20",
            "SOCKUDO_DEFAULT_APP_ENABLE_USER_AUTHENTICATION": "true",
            "SOCKUDO_DEFAULT_APP_ENABLE_WATCHLIST_EVENTS": "on",
            "SOCKUDO_DEFAULT_APP_ALLOWED_ORIGINS": "https://a.example, *.b.example",
            "SOCKUDO_DEFAULT_APP_ANNOTATIONS_ENABLED": "1",
        }
        (app,) = load(env=env).apps
        assert app.limits.max_connections == 5
        assert app.limits.max_event_batch_size == 20
        assert app.features.enable_user_authentication
        assert app.features.enable_watchlist_events
        assert app.allowed_origins == ("https://a.example", "*.b.example")
        assert app.annotations_enabled is True

    def test_client_messages_fallback_variable(self) -> None:
        env = {**self.CREDS, "SOCKUDO_ENABLE_CLIENT_MESSAGES": "true"}
        assert load(env=env).apps[0].features.enable_client_messages
        env["SOCKUDO_DEFAULT_APP_ENABLE_CLIENT_MESSAGES"] = "false"
        assert not load(env=env).apps[0].features.enable_client_messages

    @pytest.mark.parametrize("missing", ["ID", "KEY", "SECRET"])
    def test_all_three_required(self, tmp_path: Path, missing: str) -> None:
        env = {k: v for k, v in self.CREDS.items() if not k.endswith(missing)}
        with pytest.raises(ConfigError, match=f"SOCKUDO_DEFAULT_APP_{missing}"):
            load(tmp_path, APP_TOML, env=env)

    def test_enabled_false_registers_nothing(self, tmp_path: Path) -> None:
        env = {**self.CREDS, "SOCKUDO_DEFAULT_APP_ENABLED": "false"}
        assert load(tmp_path, APP_TOML, env=env).apps == ()
        assert load(tmp_path, APP_TOML, env={"SOCKUDO_DEFAULT_APP_ENABLED": "false"}).apps == ()
        assert load(env={"SOCKUDO_DEFAULT_APP_ENABLED": "false"}).apps == ()

    def test_enabled_true_alone_keeps_file_apps(self, tmp_path: Path) -> None:
        s = load(tmp_path, APP_TOML, env={"SOCKUDO_DEFAULT_APP_ENABLED": "true"})
        assert [a.id for a in s.apps] == ["123456"]

    def test_skip_inline_apps(self, tmp_path: Path) -> None:
        assert load(tmp_path, APP_TOML, env={"SOCKUDO_SKIP_INLINE_APPS": "true"}).apps == ()
        s = load(tmp_path, APP_TOML, env={"SOCKUDO_SKIP_INLINE_APPS": "true", **self.CREDS})
        assert [a.id for a in s.apps] == ["env-id"]

    def test_production_refuses_env_app_with_dev_secret(self) -> None:
        env = {
            **self.CREDS,
            "SOCKUDO_DEFAULT_APP_SECRET": DEV_APP_SECRET,
            "ENVIRONMENT": "production",
        }
        with pytest.raises(ConfigError, match="production"):
            load(env=env)


class TestOverrides:
    def test_applied_last_and_parsed(self, tmp_path: Path) -> None:
        s = load(
            tmp_path,
            "port = 6100\n" + APP_TOML,
            env={"PORT": "6200", "SOCKUDO_LOG": "embedded"},
            port=7000,
            log_backend="kafka",
            kafka_bootstrap_servers="b:9092",
            data_dir="/data/x",
            history_enabled="false",
            node_id=None,
        )
        assert s.port == 7000
        assert s.log_backend == "kafka"
        assert not s.history_enabled
        assert s.embedded_log_dir == str(Path("/data/x") / "log")
        assert s.projection_dir == str(Path("/data/x") / "projection")

    def test_explicit_embedded_dir_is_kept(self) -> None:
        s = load(env={"EVENT_LOG_EMBEDDED_DIR": "/log"}, data_dir="/data")
        assert s.embedded_log_dir == "/log"

    def test_unknown_override(self) -> None:
        with pytest.raises(ConfigError, match="prot"):
            load(prot=1)

    def test_invalid_override(self) -> None:
        with pytest.raises(ConfigError, match="port"):
            load(port="x")

    def test_server_wide_limit_override(self) -> None:
        overrides = {"default_app_limits.max_event_batch_size": 4}
        s = load_settings(None, overrides=overrides, environ={})
        assert s.default_app_limits.max_event_batch_size == 4


class TestLookups:
    def test_by_id_and_key(self, tmp_path: Path) -> None:
        text = APP_TOML + APP_TOML.replace("123456", "2").replace("num-key", "k2")
        s = load(tmp_path, text)
        one, two = s.apps
        assert s.app_by_id("123456") is one
        assert s.app_by_key("k2") is two
        assert s.app_by_id("nope") is None
        assert s.app_by_key("nope") is None

    def test_settings_rejects_duplicates_directly(self) -> None:
        a = AppConfig(id="a", key="k", secret="s")
        with pytest.raises(ConfigError):
            Settings(apps=(a, AppConfig(id="a", key="k2", secret="s")))

    def test_secret_not_in_repr(self) -> None:
        s = load()
        assert DEV_APP_SECRET not in repr(s.apps[0])
