"""Channel names: type by prefix, name validation and per-channel policy (spec 01 §3.6, 03 §1.1).

Pure functions over a name, an :class:`~sockudo.config.AppConfig` and (for the policy) the
:class:`~sockudo.config.Settings`. One error type, :class:`InvalidChannelName`, whose message is
written for both edges: the WebSocket sends it with code 4300; it *is* an ``ApiError``
(``400 invalid_input``), so the HTTP edge answers it without a mapping of its own.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

from sockudo.config import (
    AppConfig,
    ChannelNamespace,
    HistoryPolicy,
    PresenceHistoryPolicy,
    Settings,
)
from sockudo.errors import ApiError

__all__ = [
    "META_PREFIX",
    "USER_CHANNEL_PREFIX",
    "ChannelInfo",
    "ChannelPattern",
    "ChannelPolicy",
    "ChannelType",
    "InvalidChannelName",
    "classify_channel",
    "is_presence_channel",
    "is_v2_only_target",
    "namespace_of",
    "resolve_channel_policy",
    "strip_type_prefix",
    "validate_channel_name",
    "validate_meta_channel",
    "validate_pattern",
]

USER_CHANNEL_PREFIX = "#server-to-user-"
META_PREFIX = "[meta]"
"""``[meta]<channel>``: a V2 subscription to the occupancy and presence of ``<channel>``."""


class InvalidChannelName(ApiError):
    """A channel name breaks a rule of spec 01 §3.6 (WS 4300, HTTP 400 ``invalid_input``).

    ``message`` is the text for either edge; ``channel`` is the offending name.
    """

    def __init__(self, channel: str, message: str) -> None:
        super().__init__(400, "invalid_input", message)
        self.channel = channel


class ChannelType(enum.Enum):
    """The channel's type by prefix; ``cache`` is an orthogonal flag on :class:`ChannelInfo`."""

    PUBLIC = "public"
    PRIVATE = "private"
    PRIVATE_ENCRYPTED = "private-encrypted"
    PRESENCE = "presence"
    USER = "user"
    """``#server-to-user-{userId}`` (spec 01 §3.10)."""


@dataclass(frozen=True, slots=True)
class ChannelInfo:
    """What the prefix of a channel name says about it."""

    name: str
    type: ChannelType
    cache: bool
    prefix: str
    """The type prefix (``"private-cache-"``, ``""`` for public, the user-channel prefix)."""

    @property
    def is_private(self) -> bool:
        """Private or private-encrypted: needs the private-form signature."""
        return self.type in (ChannelType.PRIVATE, ChannelType.PRIVATE_ENCRYPTED)

    @property
    def is_encrypted(self) -> bool:
        return self.type is ChannelType.PRIVATE_ENCRYPTED

    @property
    def is_presence(self) -> bool:
        return self.type is ChannelType.PRESENCE

    @property
    def is_user_channel(self) -> bool:
        return self.type is ChannelType.USER

    @property
    def requires_auth(self) -> bool:
        """A subscribe needs a channel signature (private, encrypted, presence)."""
        return self.type in (
            ChannelType.PRIVATE,
            ChannelType.PRIVATE_ENCRYPTED,
            ChannelType.PRESENCE,
        )

    @property
    def allows_client_events(self) -> bool:
        """Client events are possible on private and presence channels, never encrypted ones."""
        return self.type in (ChannelType.PRIVATE, ChannelType.PRESENCE)

    @property
    def user_id(self) -> str | None:
        """The addressed user of a user channel, else ``None``."""
        return self.name[len(USER_CHANNEL_PREFIX) :] if self.is_user_channel else None


# Checked in this order (spec 01 §3.6): longer prefixes first, so `private-encrypted-cache-`
# is not mistaken for `private-`. Anchored prefixes only (upstream's substring `cache-` test is
# a documented deviation).
_PREFIXES: tuple[tuple[str, ChannelType, bool], ...] = (
    ("private-encrypted-cache-", ChannelType.PRIVATE_ENCRYPTED, True),
    ("private-encrypted-", ChannelType.PRIVATE_ENCRYPTED, False),
    ("private-cache-", ChannelType.PRIVATE, True),
    ("private-", ChannelType.PRIVATE, False),
    ("presence-cache-", ChannelType.PRESENCE, True),
    ("presence-", ChannelType.PRESENCE, False),
    ("cache-", ChannelType.PUBLIC, True),
)


def classify_channel(name: str) -> ChannelInfo:
    """The type of ``name`` by prefix. Does not validate the name."""
    if name.startswith(USER_CHANNEL_PREFIX):
        return ChannelInfo(name, ChannelType.USER, False, USER_CHANNEL_PREFIX)
    for prefix, kind, cache in _PREFIXES:
        if name.startswith(prefix):
            return ChannelInfo(name, kind, cache, prefix)
    return ChannelInfo(name, ChannelType.PUBLIC, False, "")


def is_presence_channel(name: str) -> bool:
    """``presence-*`` (including ``presence-cache-*``)."""
    return name.startswith("presence-")


def strip_type_prefix(name: str) -> str:
    """``name`` without its type prefix (``private-chat:room`` -> ``chat:room``)."""
    return name[len(classify_channel(name).prefix) :]


def namespace_of(name: str) -> str | None:
    """The namespace of a channel: the text before the first ``:`` of the prefix-stripped name
    (before any ``#``), or ``None`` when it has no ``:``. May return ``""`` for ``private-:x``,
    which no namespace can match. User channels have no namespace."""
    info = classify_channel(name)
    if info.is_user_channel:
        return None
    base = name[len(info.prefix) :].split("#", 1)[0]
    if ":" not in base:
        return None
    return base.split(":", 1)[0]


_ALLOWED = re.compile(r"[A-Za-z0-9_\-=@,.;:#]+")
_USER_ID = re.compile(r"[A-Za-z0-9_\-=@.]+")
_SHOWN_MAX = 80


def _shown(name: str) -> str:
    """The name as quoted in an error message, cut so a huge name cannot bloat the reply."""
    return name if len(name) <= _SHOWN_MAX else name[:_SHOWN_MAX] + "..."


def validate_channel_name(
    name: str, app: AppConfig, settings: Settings | None = None
) -> ChannelInfo:
    """Check ``name`` against the rules of spec 01 §3.6 for ``app``; returns its classification.

    Characters, then user channel form, then namespace (known, pattern), then user-limited
    ``#`` lists, then byte length (the maximum may come from the namespace). ``settings`` is
    accepted for call-site stability and not needed today: app limits are already resolved.
    Raises :class:`InvalidChannelName`.
    """
    del settings
    if not name:
        raise InvalidChannelName(name, "Channel name must not be empty")
    if not _ALLOWED.fullmatch(name):
        raise InvalidChannelName(
            name,
            f"Invalid channel name '{_shown(name)}': "
            "only A-Z a-z 0-9 _ - = @ , . ; : # are allowed",
        )
    info = classify_channel(name)
    max_length = app.limits.max_channel_name_length

    if info.is_user_channel:
        user_id = info.user_id or ""
        if not _USER_ID.fullmatch(user_id):
            raise InvalidChannelName(name, f"Invalid user channel '{_shown(name)}': bad user id")
    else:
        remainder = name[len(info.prefix) :]
        base, hash_sign, users = remainder.partition("#")
        namespace = None
        if ":" in base:
            ns_name = base.split(":", 1)[0]
            namespace = app.namespace(ns_name)
            if namespace is None:
                raise InvalidChannelName(name, f"Unknown channel namespace '{_shown(ns_name)}'")
            pattern = namespace.channel_name_pattern
            # `search`, as upstream's regex `is_match`: shipped patterns carry their own anchors.
            if pattern is not None and not pattern.search(base):
                raise InvalidChannelName(
                    name,
                    f"Channel name '{_shown(name)}' does not match the pattern of namespace "
                    f"'{namespace.name}'",
                )
            if namespace.max_channel_name_length is not None:
                max_length = namespace.max_channel_name_length
        if hash_sign:
            if namespace is None or not namespace.allow_user_limited_channels:
                raise InvalidChannelName(
                    name,
                    f"Invalid channel name '{_shown(name)}': '#' user-limited channels are only "
                    "allowed in a namespace with allow_user_limited_channels",
                )
            if not all(_USER_ID.fullmatch(u) for u in users.split(",")):
                raise InvalidChannelName(
                    name, f"Invalid channel name '{_shown(name)}': bad user id list after '#'"
                )

    size = len(name.encode("utf-8"))
    if size > max_length:
        raise InvalidChannelName(
            name, f"Channel name too long: {size} bytes, the maximum is {max_length}"
        )
    return info


# --- V2-only subscription targets (spec 02 §5.8) ------------------------------------------------
#
# Neither form is a channel: nothing can be published to one, and their names use characters
# (`*`, `[`, `]`) that validate_channel_name refuses, so they can never collide with a channel.

_PATTERN = re.compile(r"[A-Za-z0-9_\-=@.:*]+")


def is_v2_only_target(name: str) -> bool:
    """A wildcard pattern or a ``[meta]`` channel (syntax only; validate before use)."""
    return "*" in name or name.startswith(META_PREFIX)


@dataclass(frozen=True, slots=True)
class ChannelPattern:
    """A wildcard subscription ``prefix*``, ``*suffix`` or ``pre*fix`` (spec 02 §5.8).

    Matches public channels only, whatever their name: a pattern never reaches a private,
    presence, encrypted or user channel.
    """

    pattern: str
    prefix: str
    suffix: str

    @classmethod
    def parse(cls, pattern: str) -> ChannelPattern:
        """Split an already validated pattern at its ``*``."""
        prefix, _, suffix = pattern.partition("*")
        return cls(pattern, prefix, suffix)

    def matches(self, channel: str) -> bool:
        return (
            len(channel) >= len(self.prefix) + len(self.suffix)
            and channel.startswith(self.prefix)
            and channel.endswith(self.suffix)
            and classify_channel(channel).type is ChannelType.PUBLIC
        )


def validate_pattern(name: str, app: AppConfig) -> ChannelPattern:
    """Check a wildcard subscription name (spec 02 §5.8); raises :class:`InvalidChannelName`.

    Exactly one ``*``; only ``A-Z a-z 0-9 _ - = @ . : *`` (so no ``#``); at most the app's
    ``max_channel_name_length`` bytes; and a prefix that does not name a non-public type
    (``private-*``, ``presence-x*``), since such a pattern could never match anything.
    """
    if not _PATTERN.fullmatch(name):
        raise InvalidChannelName(
            name,
            f"Invalid wildcard channel '{_shown(name)}': "
            "only A-Z a-z 0-9 _ - = @ . : and one * are allowed",
        )
    if name.count("*") != 1:
        raise InvalidChannelName(
            name, f"Invalid wildcard channel '{_shown(name)}': exactly one '*' is allowed"
        )
    pattern = ChannelPattern.parse(name)
    if classify_channel(pattern.prefix).type is not ChannelType.PUBLIC:
        raise InvalidChannelName(
            name, f"Invalid wildcard channel '{_shown(name)}': only public channels can match"
        )
    max_length = app.limits.max_channel_name_length
    if len(name) > max_length:  # ASCII only, so characters are bytes
        raise InvalidChannelName(
            name, f"Channel name too long: {len(name)} bytes, the maximum is {max_length}"
        )
    return pattern


def validate_meta_channel(name: str, app: AppConfig) -> ChannelInfo:
    """``[meta]<channel>``: the classification of ``<channel>``, which must be a valid channel
    name and not a user channel. Raises :class:`InvalidChannelName` (about ``name``)."""
    target = name[len(META_PREFIX) :]
    try:
        info = validate_channel_name(target, app)
    except InvalidChannelName as exc:
        raise InvalidChannelName(name, f"Invalid meta channel: {exc.message}") from None
    if info.is_user_channel:
        raise InvalidChannelName(name, "Invalid meta channel: user channels have no meta channel")
    return info


@dataclass(frozen=True, slots=True)
class ChannelPolicy:
    """History, presence-history, annotation and idempotency policy resolved for one channel.

    Retention limits are ``None`` when unlimited.
    """

    history_enabled: bool
    rewind_enabled: bool
    retention_window_seconds: int | None
    max_messages_per_channel: int | None
    max_bytes_per_channel: int | None
    presence_history_enabled: bool
    presence_retention_window_seconds: int | None
    presence_max_events_per_channel: int | None
    presence_max_bytes_per_channel: int | None
    annotations_enabled: bool
    """Channel policy only; the global ``annotations.enabled`` gate is checked separately."""
    idempotency_enabled: bool
    idempotency_ttl_seconds: int


def _flag(*candidates: bool | None) -> bool:
    """First defined switch (the last candidate is the global one and always defined)."""
    for value in candidates:
        if value is not None:
            return value
    return False


def _limit(*candidates: int | None) -> int | None:
    """First defined limit; an explicit 0 in an override means unlimited (``None``)."""
    for value in candidates:
        if value is not None:
            return value or None
    return None


_POLICIES: dict[tuple[int, int, str | None], tuple[AppConfig, Settings, ChannelPolicy]] = {}
"""Resolved policies by (app, settings, configured namespace); the entry keeps its objects alive,
so their ids cannot be reused while it exists."""


def resolve_channel_policy(name: str, app: AppConfig, settings: Settings) -> ChannelPolicy:
    """Apply the "first defined wins" rules of spec 03 §1.1: namespace, then app, then global.

    Every publish and history read asks; the answer depends only on the (frozen) configuration
    and the channel's configured namespace, so it is resolved once per such triple.
    """
    ns_name = namespace_of(name)
    ns = app.namespace(ns_name) if ns_name is not None else None
    key = (id(app), id(settings), ns_name if ns is not None else None)
    hit = _POLICIES.get(key)
    if hit is not None and hit[0] is app and hit[1] is settings:
        return hit[2]
    policy = _resolve_policy(ns, app, settings)
    if len(_POLICIES) >= 1024:
        _POLICIES.clear()
    _POLICIES[key] = (app, settings, policy)
    return policy


def _resolve_policy(
    ns: ChannelNamespace | None, app: AppConfig, settings: Settings
) -> ChannelPolicy:
    nh = ns.history if ns is not None else HistoryPolicy()
    np = ns.presence_history if ns is not None else PresenceHistoryPolicy()
    ah, ap = app.history, app.presence_history
    annotations = _flag(ns.annotations_enabled if ns is not None else None, app.annotations_enabled)
    return ChannelPolicy(
        # Annotations need the history rows they attach to, hence they force history on.
        history_enabled=annotations or _flag(ah.enabled, settings.history_enabled),
        rewind_enabled=_flag(nh.rewind_enabled, ah.rewind_enabled, settings.history_rewind_enabled),
        retention_window_seconds=_limit(
            nh.retention_window_seconds,
            ah.retention_window_seconds,
            settings.history_retention_window_seconds,
        ),
        max_messages_per_channel=_limit(
            nh.max_messages_per_channel,
            ah.max_messages_per_channel,
            settings.history_max_messages_per_channel,
        ),
        max_bytes_per_channel=_limit(
            nh.max_bytes_per_channel,
            ah.max_bytes_per_channel,
            settings.history_max_bytes_per_channel,
        ),
        presence_history_enabled=_flag(np.enabled, ap.enabled, settings.presence_history_enabled),
        presence_retention_window_seconds=_limit(
            np.retention_window_seconds,
            ap.retention_window_seconds,
            settings.presence_history_retention_window_seconds,
        ),
        presence_max_events_per_channel=_limit(
            np.max_events_per_channel,
            ap.max_events_per_channel,
            settings.presence_history_max_events_per_channel,
        ),
        presence_max_bytes_per_channel=_limit(
            np.max_bytes_per_channel,
            ap.max_bytes_per_channel,
            settings.presence_history_max_bytes_per_channel,
        ),
        annotations_enabled=annotations,
        idempotency_enabled=_flag(app.idempotency_enabled, settings.idempotency_enabled),
        idempotency_ttl_seconds=(
            app.idempotency_ttl_seconds
            if app.idempotency_ttl_seconds is not None
            else settings.idempotency_ttl_seconds
        ),
    )
