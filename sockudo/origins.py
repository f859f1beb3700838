"""Origin matching for ``allowed_origins`` (spec 01 §9.3). Pure functions, no I/O.

Rules, all case-insensitive:

* ``*`` or ``any`` allows every origin, including a missing one;
* an exact pattern (``https://app.example.com``) matches that origin only;
* a pattern without a scheme (``app.example.com``) matches the origin without its scheme;
* ``*.example.com`` (no scheme) matches ``example.com`` and every subdomain over any scheme;
* any other pattern with one ``*`` (``https://*.example.com``) matches by prefix and suffix;
* a missing or empty ``Origin`` matches only ``*`` / ``any``.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["ANY_ORIGIN", "InvalidOriginPattern", "origin_allowed", "validate_pattern"]

ANY_ORIGIN = frozenset({"*", "any"})
"""Patterns (lower-cased) that allow everything."""

_SCHEME_SEP = "://"


class InvalidOriginPattern(ValueError):
    """A pattern that can never be matched as intended; configuration refuses it."""


def _is_any(pattern: str) -> bool:
    return pattern.strip().lower() in ANY_ORIGIN


def validate_pattern(pattern: str) -> str:
    """Return ``pattern`` unchanged, or raise :class:`InvalidOriginPattern` saying why."""
    if not pattern.strip():
        raise InvalidOriginPattern("origin pattern is empty")
    if _is_any(pattern):
        return pattern
    stars = pattern.count("*")
    if stars > 1:
        raise InvalidOriginPattern(f"origin pattern {pattern!r} has more than one '*'")
    if stars == 1:
        prefix, suffix = pattern.split("*")
        if not prefix and suffix.startswith("."):
            domain = suffix[1:]
            # `*.` or `*..x` would silently match nothing (or everything ending in a dot).
            if not domain or ".." in domain or domain.startswith(".") or domain.endswith("."):
                raise InvalidOriginPattern(f"origin pattern {pattern!r} has an invalid domain")
    if _SCHEME_SEP in pattern:
        scheme, _, host = pattern.partition(_SCHEME_SEP)
        if not scheme:
            raise InvalidOriginPattern(f"origin pattern {pattern!r} has an empty scheme")
        if not host:
            raise InvalidOriginPattern(f"origin pattern {pattern!r} has an empty host")
    return pattern


def _without_scheme(origin: str) -> str | None:
    _, sep, rest = origin.partition(_SCHEME_SEP)
    return rest if sep else None


def _matches(pattern: str, origin: str) -> bool:
    """One already lower-cased, non-``any`` pattern against a lower-cased, non-empty origin."""
    if pattern == origin:
        return True
    has_scheme = _SCHEME_SEP in pattern
    if "*" in pattern:
        prefix, suffix = pattern.split("*", 1)
        if not prefix and suffix.startswith(".") and not has_scheme:
            host = _without_scheme(origin) or origin
            return host == suffix[1:] or host.endswith(suffix)
        # Length check keeps prefix and suffix from overlapping (`a*a` must not match `a`).
        return (
            len(origin) >= len(prefix) + len(suffix)
            and origin.startswith(prefix)
            and origin.endswith(suffix)
        )
    if not has_scheme:
        return _without_scheme(origin) == pattern
    return False


def origin_allowed(patterns: Iterable[str] | None, origin: str | None) -> bool:
    """Whether ``origin`` (the ``Origin`` header; ``None``/empty = missing) passes ``patterns``.

    ``None`` or no patterns means the app set no restriction: everything passes.
    """
    if patterns is None:
        return True
    lowered = [p.strip().lower() for p in patterns]
    if not lowered or any(p in ANY_ORIGIN for p in lowered):
        return True
    if not origin:
        return False
    candidate = origin.strip().lower()
    return any(_matches(p, candidate) for p in lowered if p)
