"""Origin matching of spec 01 §9.3, one test per rule, and startup validation of patterns."""

from __future__ import annotations

from pathlib import Path

import pytest

from sockudo.config import AppConfig, load_settings
from sockudo.errors import ConfigError
from sockudo.origins import InvalidOriginPattern, origin_allowed, validate_pattern
from sockudo.ws.endpoint import origin_allowed as endpoint_origin_allowed


@pytest.mark.parametrize("patterns", [None, (), []])
def test_no_restriction_allows_everything(patterns: tuple[str, ...] | None) -> None:
    assert origin_allowed(patterns, "https://anything.example")
    assert origin_allowed(patterns, None)


@pytest.mark.parametrize("pattern", ["*", "any", "ANY", " Any "])
def test_any_allows_everything_including_missing_origin(pattern: str) -> None:
    assert origin_allowed([pattern], "https://x.example")
    assert origin_allowed(["https://ok.example", pattern], None)
    assert origin_allowed([pattern], "")


def test_exact_match_is_case_insensitive_and_scheme_and_port_exact() -> None:
    allowed = ["https://App.Example.com"]
    assert origin_allowed(allowed, "https://app.example.com")
    assert origin_allowed(allowed, "HTTPS://APP.EXAMPLE.COM")
    assert not origin_allowed(allowed, "http://app.example.com")
    assert not origin_allowed(allowed, "https://other.example.com")
    assert not origin_allowed(["http://localhost:3000"], "http://localhost:3001")
    assert not origin_allowed(["http://localhost:3000"], "http://localhost")


def test_pattern_without_scheme_matches_any_scheme() -> None:
    allowed = ["app.example.com"]
    assert origin_allowed(allowed, "https://app.example.com")
    assert origin_allowed(allowed, "http://APP.example.com")
    assert not origin_allowed(allowed, "https://example.com")
    assert not origin_allowed(allowed, "https://api.example.com")
    # Ports are part of the host: they must match too.
    assert origin_allowed(["node.example:444"], "https://node.example:444")
    assert not origin_allowed(["node.example:444"], "https://node.example:443")


def test_subdomain_wildcard_without_scheme() -> None:
    allowed = ["*.example.com"]
    assert origin_allowed(allowed, "https://example.com")
    assert origin_allowed(allowed, "http://app.example.com")
    assert origin_allowed(allowed, "https://deep.nested.Example.com")
    assert not origin_allowed(allowed, "https://example.org")
    assert not origin_allowed(allowed, "https://badexample.com")


def test_wildcard_with_scheme_matches_prefix_and_suffix() -> None:
    allowed = ["https://*.example.com"]
    assert origin_allowed(allowed, "https://app.example.com")
    assert not origin_allowed(allowed, "http://app.example.com")
    assert not origin_allowed(allowed, "https://app.example.org")
    assert origin_allowed(["http://localhost:*"], "http://localhost:3000")
    # Prefix and suffix may not overlap in the origin.
    assert not origin_allowed(["ab*ba"], "aba")


def test_missing_origin_passes_only_any() -> None:
    for patterns in (["https://ok.example"], ["ok.example"], ["*.ok.example"], ["https://*"]):
        assert not origin_allowed(patterns, None)
        assert not origin_allowed(patterns, "")


def test_spec_check_8() -> None:
    allowed = ["https://ok.example"]
    assert not origin_allowed(allowed, "https://bad.example")
    assert origin_allowed(allowed, "https://ok.example")
    assert not origin_allowed(allowed, None)


def test_endpoint_delegates_with_empty_header_as_missing() -> None:
    app = AppConfig(id="a", key="k", secret="s", allowed_origins=("*.ok.example",))
    assert endpoint_origin_allowed(app, "https://x.ok.example")
    assert not endpoint_origin_allowed(app, "")
    assert endpoint_origin_allowed(AppConfig(id="a", key="k", secret="s"), "")


@pytest.mark.parametrize(
    "pattern",
    ["*", "any", "https://ok.example", "ok.example", "*.ok.example", "https://*.ok.example"],
)
def test_valid_patterns(pattern: str) -> None:
    assert validate_pattern(pattern) == pattern


@pytest.mark.parametrize(
    "pattern",
    [
        "",
        "   ",
        "*.*.example.com",
        "https://*.*",
        "*.",
        "*..example.com",
        "://x.example",
        "https://",
    ],
)
def test_invalid_patterns(pattern: str) -> None:
    with pytest.raises(InvalidOriginPattern):
        validate_pattern(pattern)


@pytest.mark.parametrize("pattern", ["a*b*c", "", "*."])
def test_invalid_pattern_fails_startup(tmp_path: Path, pattern: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(
        '[[app_manager.array.apps]]\nid = "a"\nkey = "k"\nsecret = "s"\n'
        f"[app_manager.array.apps.policy.channels]\nallowed_origins = [{pattern!r}]\n"
    )
    with pytest.raises(ConfigError, match="allowed_origins"):
        load_settings(str(path), environ={})


def test_invalid_env_pattern_fails_startup() -> None:
    env = {
        "SOCKUDO_DEFAULT_APP_ID": "a",
        "SOCKUDO_DEFAULT_APP_KEY": "k",
        "SOCKUDO_DEFAULT_APP_SECRET": "s",
        "SOCKUDO_DEFAULT_APP_ALLOWED_ORIGINS": "https://ok.example,*.*.bad",
    }
    with pytest.raises(ConfigError, match="more than one"):
        load_settings(None, environ=env)
