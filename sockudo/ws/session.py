"""Per-connection V1 state machine: frames in, replies, subscription changes and effects out.

Pure: time is passed in, nothing is sent or appended from here. The endpoint applies a
:class:`Reply` (join/leave the hub, enqueue frames, run effects that need the log or the
projection, close) and calls :meth:`Session.tick` when the deadline from
:meth:`Session.next_deadline` passes (heartbeat, authorization timeout; spec 01 §3.2, §3.10).
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from projections.reads.recovery import Position
from sockudo import inbound
from sockudo.auth import verify_channel_auth, verify_user_auth
from sockudo.capabilities import TokenGrant
from sockudo.channels import (
    META_PREFIX,
    ChannelInfo,
    InvalidChannelName,
    classify_channel,
    is_v2_only_target,
    validate_channel_name,
    validate_meta_channel,
    validate_pattern,
)
from sockudo.config import AppConfig
from sockudo.ws import v1, wire
from sockudo.ws.delta import (
    DEFAULT_ALGORITHM,
    ChannelDeltaState,
    DeltaAlgorithm,
    enabled_payload,
    negotiate_algorithm,
    parse_subscribe_delta,
)
from sockudo.ws.egress import V1, Egress, Frame
from sockudo.ws.predicates import Predicate, PredicateError, parse_predicate
from sockudo.ws.tokens import RefreshToken, TokenState, token_of

PONG_TIMEOUT_S = 30.0
PONG_TIMEOUT_CODE = 4201
PONG_TIMEOUT_REASON = "Pong reply not received in time"
UNAUTHORIZED_TIMEOUT_REASON = "Connection not authorized within timeout."
WATCHLIST_LIMIT = 100
PRESENCE_UPDATE_MAX_BYTES = 1024
PRESENCE_UPDATES_PER_SECOND = 10
PRESENCE_UPDATE_TOO_LARGE = 40009
INVALID_PRESENCE_UPDATE = 104009
RESUME_PENDING_TTL_S = 10.0
"""How long a resume position waits for its channel's subscribe (spec 02 §7.6)."""
RESERVED_PREFIXES = ("pusher:", "pusher_internal:", "sockudo:", "sockudo_internal:")

_COMPACT = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


# --- effects: work the endpoint does with the log, the projection or other sockets ----------


@dataclass(frozen=True, slots=True)
class PresenceJoin:
    """Join a presence channel through the log, then answer with the member list."""

    channel: str
    user_id: str
    user_info_json: str | None
    rejoin: bool = False
    """Already a member on this socket: answer with the member list, append nothing."""
    rewind: Rewind | None = None


@dataclass(frozen=True, slots=True)
class PresenceLeave:
    channel: str
    user_id: str
    cause: str


@dataclass(frozen=True, slots=True)
class PresenceUpdate:
    """V2 ``presence_update``: the member's new ``user_info`` through the log (spec 02 §12)."""

    channel: str
    user_id: str
    user_info_json: str


@dataclass(frozen=True, slots=True)
class SendCache:
    """After ``subscription_succeeded`` on a cache channel: the cached event or a miss."""

    channel: str


@dataclass(frozen=True, slots=True)
class PublishClientEvent:
    channel: str
    event: str
    data: str
    data_is_json: bool
    user_id: str | None
    echo: bool | None = None
    data_is_binary: bool = False
    """``data`` is the JSON int array of raw bytes (spec 02 §2.4)."""


@dataclass(frozen=True, slots=True)
class Rewind:
    """``rewind`` of a V2 subscribe: the newest ``count`` messages, or those of ``seconds``."""

    count: int | None = None
    seconds: int | None = None


@dataclass(frozen=True, slots=True)
class Attach:
    """V2: answer a subscribe with the channel's position at the moment of the hub join."""

    channel: str
    rewind: Rewind | None = None


@dataclass(frozen=True, slots=True)
class Resume:
    """``sockudo:resume``: per-channel positions to recover (spec 02 §7)."""

    positions: dict[str, Position]


@dataclass(frozen=True, slots=True)
class DeltaResync:
    """``sockudo:delta_sync_error``: reset the channel's delta state, resend the last message."""

    channel: str


@dataclass(frozen=True, slots=True)
class History:
    """``sockudo:channel_history`` over the WebSocket (spec 02 §8)."""

    channel: str
    request: dict[str, Any]


@dataclass(frozen=True, slots=True)
class SignedIn:
    """The socket's user identity is now ``user_id``; watchlist processing follows."""

    user_id: str
    watchlist: tuple[str, ...]


Effect = (
    PresenceJoin
    | PresenceUpdate
    | PresenceLeave
    | SendCache
    | PublishClientEvent
    | SignedIn
    | Attach
    | Resume
    | History
    | DeltaResync
    | RefreshToken
)


@dataclass(slots=True)
class Reply:
    """What handling one frame (or one tick) asks the endpoint to do, in this order."""

    frames: list[Frame] = field(default_factory=list)
    join: str | None = None
    leave: str | None = None
    effects: list[Effect] = field(default_factory=list)
    close: tuple[int, str] | None = None


class Session:
    """One V1 connection after admission."""

    def __init__(
        self,
        socket_id: str,
        app: AppConfig,
        *,
        activity_timeout: int,
        now: float,
        pong_timeout: float = PONG_TIMEOUT_S,
        user_authentication_timeout: int = 3600,
        out: Egress = V1,
        recovery_enabled: bool = True,
        history_enabled: bool = True,
        rewind_enabled: bool = True,
        tag_filtering: bool = True,
        annotations_enabled: Callable[[str], bool] = lambda _channel: False,
        app_heartbeat: bool = True,
    ) -> None:
        self.socket_id = socket_id
        self.out = out
        """Frame builder of the connection's protocol and format."""
        self.app = app
        self.activity_timeout = activity_timeout
        self.pong_timeout = pong_timeout
        self.channels: set[str] = set()
        self.presence: dict[str, str] = {}
        """Presence channels this socket joined (appended a join for) → its user id there."""
        self.user_id: str | None = None
        """Signed-in user id (``pusher:signin``)."""
        self.last_activity = now
        self.ping_sent_at: float | None = None
        self.app_heartbeat = app_heartbeat
        """``pusher:ping``/``sockudo:ping`` after inactivity; off while a V2 socket runs the
        native WebSocket heartbeat instead (sockudo/ws/heartbeat.py)."""
        # Authorized connections (spec 01 §3.10): with user authentication on, a socket must
        # sign in or join a private/presence channel before this deadline.
        self.authorize_by: float | None = (
            now + user_authentication_timeout if app.features.enable_user_authentication else None
        )
        self._client_events: deque[float] | None = None
        """Made by the first client event: most sockets never send one (a deque is ~0.75 KiB)."""
        self._presence_updates: dict[str, deque[float]] = {}
        self.recovery_enabled = recovery_enabled
        self.history_enabled = history_enabled
        self.rewind_enabled = rewind_enabled
        self.tag_filtering = tag_filtering
        self.annotations_enabled = annotations_enabled
        """Whether ``ANNOTATION_SUBSCRIBE`` is allowed on a channel (global switch and policy)."""
        self.attached: dict[str, tuple[int, int | None]] = {}
        """V2 channels → (delivery head, history head) captured at their hub join."""
        self.predicates: dict[str, Predicate] = {}
        """V2 subscription predicates by channel (spec 02 §5.4)."""
        self.deltas: dict[str, ChannelDeltaState] = {}
        """V2 JSON channels with delta compression on → their §6.3 state (fanout feeds it)."""
        self.delta_algorithm: DeltaAlgorithm | None = None
        """Set by ``sockudo:enable_delta_compression``: the connection-level switch."""
        self.pending: dict[str, tuple[Position, float]] = {}
        """Resume positions waiting for their channel's subscribe → (position, deadline)."""
        self.token: TokenState | None = None
        """V2 capability token (spec 02 §11): every operation then needs its grant."""

    def opening(self) -> Frame:
        return self.out.connection_established(self.socket_id, self.activity_timeout)

    # --- deadlines --------------------------------------------------------------------------

    def next_deadline(self) -> float:
        if not self.app_heartbeat:
            heartbeat = float("inf")
        elif self.ping_sent_at is not None:
            heartbeat = self.ping_sent_at + self.pong_timeout
        else:
            heartbeat = self.last_activity + self.activity_timeout
        deadline = heartbeat
        if self.authorize_by is not None:
            deadline = min(deadline, self.authorize_by)
        if self.pending:
            deadline = min(deadline, min(d for _, d in self.pending.values()))
        if self.token is not None:
            deadline = min(deadline, self.token.deadline())
        return deadline

    def tick(self, now: float) -> Reply:
        """Close unauthorized sockets; ping after inactivity; give up on an unanswered ping."""
        if self.authorize_by is not None and now >= self.authorize_by:
            return Reply(close=(v1.UNAUTHORIZED, UNAUTHORIZED_TIMEOUT_REASON))
        if self.token is not None and now >= self.token.deadline():
            frames, close = self.token.tick(now, self.out)
            return Reply(frames=frames, close=close)
        expired = [ch for ch, (_, deadline) in self.pending.items() if now >= deadline]
        if expired:
            frames = []
            for channel in expired:
                del self.pending[channel]
                frames.append(self.out.resume_failed(channel, not_attached(channel)))
            return Reply(frames=frames)
        if not self.app_heartbeat:
            return Reply()
        if self.ping_sent_at is not None:
            if now >= self.ping_sent_at + self.pong_timeout:
                return Reply(close=(PONG_TIMEOUT_CODE, PONG_TIMEOUT_REASON))
            return Reply()
        if now >= self.last_activity + self.activity_timeout:
            self.ping_sent_at = now
            return Reply(frames=[self.out.ping()])
        return Reply()

    def saw_frames(self, last_frame: float, last_ping: float) -> None:
        """Frames the WebSocket layer handled without telling ASGI (control frames, spec 01 §3.2).

        Any frame is activity; a WebSocket Ping also answers a pending server ping.
        """
        self.last_activity = max(self.last_activity, last_frame)
        if self.ping_sent_at is not None and last_ping > self.ping_sent_at:
            self.ping_sent_at = None

    def _authorized(self) -> None:
        self.authorize_by = None

    # --- inbound frames ---------------------------------------------------------------------

    def handle(self, raw: str | bytes, now: float) -> Reply:
        # Any frame proves the client alive for the inactivity clock; only ping/pong answer a
        # pending server ping (spec 01 §3.2).
        self.last_activity = now
        try:
            if self.out.protocol == 2:
                command = v1.parse_envelope(decode_v2(raw, self.out.fmt))
            else:
                command = v1.parse_frame(raw)
            return self._dispatch(command, now)
        except v1.FrameError as exc:
            return Reply(frames=[self.out.error(exc.code, exc.message, exc.channel)])

    def _dispatch(self, command: v1.Command, now: float) -> Reply:
        match command:
            case v1.Ping():
                self.ping_sent_at = None
                return Reply(frames=[self.out.pong()])
            case v1.Pong():
                self.ping_sent_at = None
                return Reply()
            case v1.Subscribe():
                return self._subscribe(command)
            case v1.Unsubscribe(channel=channel):
                return self._unsubscribe(channel)
            case v1.Signin():
                return self._signin(command)
            case v1.ClientEvent():
                return self._client_event(command, now)
            case v1.UnknownEvent(event="channel_history", data=data):
                return self._history(data)
            case v1.UnknownEvent():
                if self.out.protocol == 2:
                    return Reply()  # ignored silently on V2 (spec 02 §1.3)
                raise v1.FrameError(
                    v1.CLIENT_EVENT_ERROR, "Client event names must start with 'client-'"
                )
            case v1.IgnoredSystemEvent(event="pusher:resume", data=data):
                return self._resume(data)
            case v1.IgnoredSystemEvent(event="pusher:presence_update", data=data, channel=ch):
                return self._presence_update(ch, data, now)
            case v1.IgnoredSystemEvent(event="pusher:enable_delta_compression", data=data):
                return self._enable_delta(data)
            case v1.IgnoredSystemEvent(event="pusher:delta_sync_error", data=data, channel=ch):
                return self._delta_sync_error(data, ch)
            case v1.IgnoredSystemEvent(event="pusher:channel_history", data=data):
                return self._history(data)
            case v1.IgnoredSystemEvent(event="pusher:auth", data=data):
                return self._auth(data)
            case v1.IgnoredSystemEvent():
                return Reply()
        raise AssertionError(f"unhandled command {command!r}")  # pragma: no cover

    # --- subscriptions ----------------------------------------------------------------------

    def _subscribe(self, command: v1.Subscribe) -> Reply:
        channel = command.channel
        if self.token is not None:
            self.token.check_subscribe(channel, command.options)
        if is_v2_only_target(channel):
            return self._subscribe_target(command)
        try:
            info = validate_channel_name(channel, self.app)
        except InvalidChannelName as exc:
            raise v1.FrameError(v1.CHANNEL_ERROR, exc.message, channel) from None
        if info.is_user_channel:
            # Delivery to user channels follows the socket's identity, not subscriptions; the
            # subscribe only confirms the identity (spec 01 §3.10).
            if self.user_id is None or info.user_id != self.user_id:
                raise v1.FrameError(
                    v1.UNAUTHORIZED, "Socket is not signed in as this user", channel
                )
            self.channels.add(channel)
            return Reply(frames=[self.out.subscription_succeeded(channel)])
        if self.out.protocol == 1 and command.options and "rewind" in command.options:
            raise v1.FrameError(
                v1.CHANNEL_ERROR, "Channel rewind is only supported on protocol V2", channel
            )
        # V2 options are validated before auth (spec 02 §5.2), applied only on success.
        options = self._v2_options(command) if self.out.protocol == 2 else (None, None)
        if info.is_presence:
            return self._subscribe_presence(command, options[1], options[0])
        if info.requires_auth:
            if not command.auth:
                raise v1.FrameError(v1.UNAUTHORIZED, "Missing channel auth", channel)
            if not verify_channel_auth(
                command.auth, self.app.key, self.app.secret, self.socket_id, channel
            ):
                raise v1.FrameError(v1.UNAUTHORIZED, "Invalid channel auth signature", channel)
            self._authorized()
        if self.out.protocol == 2:
            # The success frame carries the stream position at the hub join (spec 02 §5.3).
            self._set_predicate(channel, options[1])
            reply = Reply(
                frames=self._set_delta(info, command), effects=[Attach(channel, options[0])]
            )
        else:
            reply = Reply(frames=[self.out.subscription_succeeded(channel)])
        if info.cache:
            reply.effects.append(SendCache(channel))
        if channel not in self.channels:  # a re-subscribe is idempotent (spec 01 §3.4)
            self.channels.add(channel)
            reply.join = channel
        return reply

    def _subscribe_presence(
        self, command: v1.Subscribe, predicate: Predicate | None, rewind: Rewind | None = None
    ) -> Reply:
        channel = command.channel
        if command.channel_data is None:
            raise v1.FrameError(v1.MALFORMED, "Presence subscribe requires channel_data", channel)
        if not command.auth:
            raise v1.FrameError(v1.UNAUTHORIZED, "Missing channel auth", channel)
        # The signature covers the exact string the client sent (spec 01 §3.7).
        if not verify_channel_auth(
            command.auth,
            self.app.key,
            self.app.secret,
            self.socket_id,
            channel,
            command.channel_data,
        ):
            raise v1.FrameError(v1.UNAUTHORIZED, "Invalid channel auth signature", channel)
        user_id, info_json = parse_channel_data(command.channel_data, channel)
        limit = self.app.limits.max_presence_member_size_in_kb * 1024
        if info_json is not None and len(info_json.encode()) > limit:
            raise v1.FrameError(
                v1.CHANNEL_ERROR,
                f"Presence member data ({len(info_json.encode())} bytes) exceeds limit "
                f"({self.app.limits.max_presence_member_size_in_kb}KB)",
                channel,
            )
        self._authorized()
        delta_frames: list[Frame] = []
        if self.out.protocol == 2:
            self._set_predicate(channel, predicate)
            delta_frames = self._set_delta(classify_channel(channel), command)
        if channel in self.presence:
            return Reply(
                frames=delta_frames,
                effects=[
                    PresenceJoin(channel, self.presence[channel], None, rejoin=True, rewind=rewind)
                ],
            )
        self.presence[channel] = user_id
        self.channels.add(channel)
        return Reply(
            frames=delta_frames,
            effects=[PresenceJoin(channel, user_id, info_json, rewind=rewind)],
        )

    def _subscribe_target(self, command: v1.Subscribe) -> Reply:
        """A wildcard pattern or a ``[meta]`` channel (spec 02 §5.8): V2 only, and no stream.

        The success frame carries no stream position (there is none to recover from); a
        pattern keeps its predicate (checked against each matching channel's messages), a meta
        channel receives system frames only, which predicates never suppress (§5.4).
        """
        channel = command.channel
        if self.out.protocol != 2:
            raise v1.FrameError(
                v1.CHANNEL_ERROR,
                "Wildcard and [meta] channels are only supported on protocol V2",
                channel,
            )
        meta = channel.startswith(META_PREFIX)
        try:
            if meta:
                target: ChannelInfo | None = validate_meta_channel(channel, self.app)
            else:
                validate_pattern(channel, self.app)
                target = None
        except InvalidChannelName as exc:
            raise v1.FrameError(v1.CHANNEL_ERROR, exc.message, channel) from None
        _, predicate = self._v2_options(command, target=True)
        if target is not None and target.requires_auth:
            # Who subscribes to (and who is a member of) a private or presence channel is not
            # public: the backend signs `[meta]<channel>` in the private form.
            if not command.auth:
                raise v1.FrameError(v1.UNAUTHORIZED, "Missing channel auth", channel)
            if not verify_channel_auth(
                command.auth, self.app.key, self.app.secret, self.socket_id, channel
            ):
                raise v1.FrameError(v1.UNAUTHORIZED, "Invalid channel auth signature", channel)
            self._authorized()
        self._set_predicate(channel, None if meta else predicate)
        reply = Reply(frames=[self.out.subscription_succeeded(channel)])
        if channel not in self.channels:  # a re-subscribe only replaces the predicate
            self.channels.add(channel)
            reply.join = channel
        return reply

    def _v2_options(
        self, command: v1.Subscribe, *, target: bool = False
    ) -> tuple[Rewind | None, Predicate | None]:
        """Rewind, modes and predicate of a V2 subscribe, validated in spec 02 §5.2 order.

        ``target``: a wildcard or meta subscription, which has no stream to rewind and no
        messages to annotate (both 4300 once the option itself is well formed).
        """
        rewind = self._rewind(command, target=target)
        modes = (command.options or {}).get("modes")
        if modes is not None:
            if not isinstance(modes, list):
                raise v1.FrameError(v1.MALFORMED, "modes must be an array", command.channel)
            if "ANNOTATION_SUBSCRIBE" in modes and (
                target or not self.annotations_enabled(command.channel)
            ):
                raise v1.FrameError(
                    v1.CHANNEL_ERROR, "Annotations are disabled for this channel", command.channel
                )
        if not self.tag_filtering:
            return rewind, None
        try:
            return rewind, parse_predicate(command.options or {})
        except PredicateError as exc:
            raise v1.FrameError(v1.MALFORMED, str(exc), command.channel) from None

    def _set_predicate(self, channel: str, predicate: Predicate | None) -> None:
        if predicate is None:
            self.predicates.pop(channel, None)
        else:
            self.predicates[channel] = predicate

    def _set_delta(self, info: ChannelInfo, command: v1.Subscribe) -> list[Frame]:
        """(Re)start the channel's delta state as the subscribe's ``delta`` option and the
        connection switch say; JSON only, never encrypted channels (spec 02 §6.1-6.3)."""
        channel = command.channel
        self.deltas.pop(channel, None)  # every subscribe resets the state
        if self.out.fmt != "json" or info.is_encrypted:
            return []
        option = parse_subscribe_delta((command.options or {}).get("delta"))
        enabled = option.enabled if option is not None else self.delta_algorithm is not None
        if not enabled:
            return []
        algorithm = (option.algorithm if option is not None else None) or (
            self.delta_algorithm or DEFAULT_ALGORITHM
        )
        self.deltas[channel] = ChannelDeltaState(channel, algorithm)
        if self.delta_algorithm is None:
            payload = enabled_payload(algorithm, channel=channel)
            return [self.out.system("delta_compression_enabled", channel, payload)]
        return []

    def _enable_delta(self, data: Any) -> Reply:
        if self.out.protocol != 2:
            return Reply()
        algorithm = negotiate_algorithm(data)
        if self.out.fmt != "json":
            # Binary formats never get deltas (spec 02 §6.1).
            payload = enabled_payload(DEFAULT_ALGORITHM, enabled=False)
            return Reply(frames=[self.out.system("delta_compression_enabled", None, payload)])
        self.delta_algorithm = algorithm
        payload = enabled_payload(algorithm)
        return Reply(frames=[self.out.system("delta_compression_enabled", None, payload)])

    def _delta_sync_error(self, data: Any, envelope_channel: str | None) -> Reply:
        channel = envelope_channel
        if isinstance(data, dict) and isinstance(data.get("channel"), str):
            channel = data["channel"]
        if channel is None or channel not in self.deltas:
            return Reply()  # unknown or absent channel: ignored (spec 02 §6.6)
        return Reply(effects=[DeltaResync(channel)])

    def _rewind(self, command: v1.Subscribe, *, target: bool = False) -> Rewind | None:
        """The validated ``rewind`` option of a V2 subscribe (spec 02 §5.2, §5.6)."""
        options = command.options or {}
        if "rewind" not in options:
            return None
        rewind = parse_rewind(options["rewind"], command.channel)
        if target:
            # A pattern or meta channel has no history of its own (spec 02 §5.8).
            raise v1.FrameError(
                v1.CHANNEL_ERROR,
                "Channel rewind is not available on wildcard or [meta] channels",
                command.channel,
            )
        if not (self.history_enabled and self.rewind_enabled):
            raise v1.FrameError(
                v1.CHANNEL_ERROR, "Channel rewind is disabled for this channel", command.channel
            )
        return rewind

    def _unsubscribe(self, channel: str) -> Reply:
        self.pending.pop(channel, None)
        self.attached.pop(channel, None)
        self.predicates.pop(channel, None)
        self.deltas.pop(channel, None)
        if channel not in self.channels:
            return Reply()
        self.channels.discard(channel)
        reply = Reply(leave=channel)
        user_id = self.presence.pop(channel, None)
        if user_id is not None:
            reply.effects.append(PresenceLeave(channel, user_id, "unsubscribe"))
        return reply

    # --- recovery and history (V2) -------------------------------------------------------------

    def _resume(self, data: Any) -> Reply:
        if self.out.protocol != 2:
            raise v1.FrameError(v1.CLIENT_EVENT_ERROR, "Connection recovery requires protocol V2")
        if not self.recovery_enabled:
            raise v1.FrameError(v1.CLIENT_EVENT_ERROR, "Connection recovery is not enabled")
        positions = parse_resume(data)
        if not positions:
            raise v1.FrameError(v1.WATCHLIST_LIMIT, "No channel recovery positions provided")
        return Reply(effects=[Resume(positions)])

    def _history(self, data: Any) -> Reply:
        if self.out.protocol != 2:
            raise v1.FrameError(v1.MALFORMED, "channel_history requires protocol V2")
        request = _object(data, "channel_history")
        params = request.get("params")
        if isinstance(params, dict):
            request = {**request, **params}
        channel = request.get("channel")
        if not isinstance(channel, str) or not channel:
            raise v1.FrameError(v1.MALFORMED, "channel_history requires a 'channel' string")
        if self.token is not None:
            self.token.check("history", channel)
        if is_v2_only_target(channel):
            raise v1.FrameError(
                v1.CHANNEL_ERROR, "History is not available on wildcard or [meta] channels", channel
            )
        if channel not in self.channels:
            raise v1.FrameError(
                v1.CLIENT_EVENT_ERROR, f"Not subscribed to channel {channel}", channel
            )
        if not self.history_enabled:
            raise v1.FrameError(v1.CHANNEL_ERROR, "History is disabled for this channel", channel)
        return Reply(effects=[History(channel, request)])

    def _presence_update(self, envelope_channel: str | None, data: Any, now: float) -> Reply:
        if self.out.protocol != 2:
            return Reply()  # V1 has no such frame: ignored like any unknown system event
        try:
            body = _object(data, "presence_update")
        except v1.FrameError:
            raise v1.FrameError(INVALID_PRESENCE_UPDATE, "Invalid presence_update") from None
        if envelope_channel is not None and "user_info" in body:
            channel, info = envelope_channel, body["user_info"]  # the Python client's shape
        elif isinstance(body.get("channel"), str) and "data" in body:
            channel, info = body["channel"], body["data"]  # upstream's shape
        else:
            raise v1.FrameError(INVALID_PRESENCE_UPDATE, "Invalid presence_update")
        if self.token is not None:
            self.token.check("presence", channel)
        user_id = self.presence.get(channel)
        if user_id is None:
            raise v1.FrameError(
                INVALID_PRESENCE_UPDATE, "Not a member of this presence channel", channel
            )
        try:
            info_json = _COMPACT.encode(info)
        except (TypeError, ValueError):
            raise v1.FrameError(
                INVALID_PRESENCE_UPDATE, "Invalid presence_update", channel
            ) from None
        if len(info_json.encode()) > PRESENCE_UPDATE_MAX_BYTES:
            raise v1.FrameError(PRESENCE_UPDATE_TOO_LARGE, "Presence data too large", channel)
        window = self._presence_updates.setdefault(channel, deque())
        while window and window[0] <= now - 1.0:
            window.popleft()
        if len(window) >= PRESENCE_UPDATES_PER_SECOND:
            raise v1.FrameError(
                v1.CLIENT_EVENT_ERROR, "presence_update rejected due to rate limit", channel
            )
        window.append(now)
        return Reply(effects=[PresenceUpdate(channel, user_id, info_json)])

    # --- capability tokens (V2, spec 02 §11; see ws/tokens.py) --------------------------------

    def _auth(self, data: Any) -> Reply:
        if self.out.protocol != 2:
            raise v1.FrameError(
                v1.UNAUTHORIZED,
                "Authentication error: sockudo:auth is only supported on protocol V2",
            )
        return Reply(effects=[RefreshToken(token_of(data))])

    def accept_token(self, grant: TokenGrant, now: float, wall_now: float) -> None:
        """A verified token is the connection's from now on: its identity and its grants."""
        self.token = TokenState(grant, now, wall_now)
        self.user_id = grant.client_id
        self._authorized()

    def presence_failed(self, channel: str) -> None:
        """The join was refused or could not be appended: the socket is not in the channel."""
        self.presence.pop(channel, None)
        self.channels.discard(channel)

    # --- user authentication ------------------------------------------------------------------

    def _signin(self, command: v1.Signin) -> Reply:
        if self.token is not None:
            raise v1.FrameError(
                v1.UNAUTHORIZED,
                "Authentication error: signin is not allowed on capability-token "
                "authenticated connections",
            )
        if not self.app.features.enable_user_authentication:
            raise v1.FrameError(v1.UNAUTHORIZED, "User authentication is disabled for this app")
        if not command.auth or command.user_data is None:
            raise v1.FrameError(v1.UNAUTHORIZED, "Signin requires auth and user_data")
        if not verify_user_auth(
            command.auth, self.app.key, self.app.secret, self.socket_id, command.user_data
        ):
            raise v1.FrameError(v1.UNAUTHORIZED, "Invalid signin auth signature")
        try:
            user = inbound.loads(command.user_data)
        except (ValueError, RecursionError):
            raise v1.FrameError(v1.UNAUTHORIZED, "user_data must be a JSON object") from None
        user_id = user.get("id") if isinstance(user, dict) else None
        if not isinstance(user_id, str) or not user_id or "\x00" in user_id:
            raise v1.FrameError(v1.UNAUTHORIZED, "user_data requires a non-empty string 'id'")
        watchlist_raw = user.get("watchlist") or []
        if not isinstance(watchlist_raw, list) or not all(
            isinstance(w, str) for w in watchlist_raw
        ):
            raise v1.FrameError(v1.UNAUTHORIZED, "watchlist must be an array of user ids")
        self.user_id = user_id
        self._authorized()
        reply = Reply(frames=[self.out.signin_success(command.user_data)])
        if len(watchlist_raw) > WATCHLIST_LIMIT:
            reply.frames.append(self.out.error(v1.WATCHLIST_LIMIT, "Watchlist limit exceeded"))
        reply.effects.append(SignedIn(user_id, tuple(watchlist_raw[:WATCHLIST_LIMIT])))
        return reply

    # --- client events ----------------------------------------------------------------------

    def _client_event(self, command: v1.ClientEvent, now: float) -> Reply:
        limits = self.app.limits
        channel = command.channel
        if limits.max_client_events_per_second and not self._take_client_event_slot(now):
            reply = Reply(
                frames=[
                    self.out.error(
                        v1.CLIENT_EVENT_ERROR, "Client event rejected due to rate limit", channel
                    )
                ]
            )
            if limits.terminate_on_limit:
                reply.close = (v1.CLIENT_EVENT_ERROR, "Client event rate limit exceeded")
            return reply
        if not self.app.features.enable_client_messages:
            raise v1.FrameError(
                v1.CLIENT_EVENT_ERROR, "Client events are not enabled for this app", channel
            )
        event = command.event
        if event.startswith(RESERVED_PREFIXES):
            raise v1.FrameError(
                v1.CLIENT_EVENT_ERROR, "Client events must start with 'client-'", channel
            )
        if len(event) > limits.max_event_name_length:
            raise v1.FrameError(
                v1.CLIENT_EVENT_ERROR,
                f"Event name is too long (max {limits.max_event_name_length})",
                channel,
            )
        if channel is None:
            raise v1.FrameError(v1.CLIENT_EVENT_ERROR, "Client events require a 'channel'")
        if self.token is not None:
            self.token.check("publish", channel)
        try:
            info = validate_channel_name(channel, self.app)
        except InvalidChannelName as exc:
            raise v1.FrameError(v1.CLIENT_EVENT_ERROR, exc.message, channel) from None
        if not info.allows_client_events:
            raise v1.FrameError(
                v1.CLIENT_EVENT_ERROR,
                "Client events can only be sent to private or presence channels",
                channel,
            )
        data, is_json = encode_client_data(command.data)
        size = len(data.encode())
        if size > limits.max_event_payload_in_kb * 1024:
            raise v1.FrameError(
                v1.CLIENT_EVENT_ERROR,
                f"Event payload size ({size} bytes) exceeds limit "
                f"({limits.max_event_payload_in_kb}KB)",
                channel,
            )
        if channel not in self.channels:
            raise v1.FrameError(
                v1.CLIENT_EVENT_ERROR,
                f"Socket {self.socket_id} is not subscribed to channel {channel}",
                channel,
            )
        user_id = self.presence.get(channel)
        echo = command.echo if self.out.protocol == 2 else None
        binary = isinstance(command.data, bytes | bytearray)
        return Reply(
            effects=[PublishClientEvent(channel, event, data, is_json, user_id, echo, binary)]
        )

    def _take_client_event_slot(self, now: float) -> bool:
        window = float(self.app.limits.decay_seconds or 1)
        events = self._client_events
        if events is None:
            events = self._client_events = deque()
        while events and events[0] <= now - window:
            events.popleft()
        if len(events) >= self.app.limits.max_client_events_per_second * window:
            return False
        events.append(now)
        return True


def parse_channel_data(raw: str, channel: str) -> tuple[str, str | None]:
    """``(user_id, compact user_info JSON or None)`` from presence ``channel_data`` (§3.8)."""
    try:
        data = inbound.loads(raw)
    except (ValueError, RecursionError):
        raise v1.FrameError(v1.MALFORMED, "channel_data must be a JSON object", channel) from None
    if not isinstance(data, dict):
        raise v1.FrameError(v1.MALFORMED, "channel_data must be a JSON object", channel)
    user_id = data.get("user_id")
    if isinstance(user_id, int) and not isinstance(user_id, bool):
        user_id = str(user_id)
    if not isinstance(user_id, str) or not user_id or "\x00" in user_id:
        raise v1.FrameError(
            v1.MALFORMED, "channel_data requires a non-empty string 'user_id'", channel
        )
    info = data.get("user_info")
    return user_id, None if info is None else _COMPACT.encode(info)


def encode_client_data(data: object) -> tuple[str, bool]:
    """A client event's ``data`` as stored: strings verbatim, anything else compact JSON."""
    if isinstance(data, str):
        return data, False
    if isinstance(data, bytes | bytearray):
        # Binary data (msgpack/protobuf senders) travels as its byte values, flagged
        # ``data_is_binary``: JSON subscribers see the array of integers spec 02 §2.4
        # prescribes, binary formats get the bytes back.
        return _COMPACT.encode(list(data)), True
    try:
        return _COMPACT.encode(data), True
    except (TypeError, ValueError):
        raise v1.FrameError(v1.CLIENT_EVENT_ERROR, "Client event data is not JSON") from None


def decode_v2(raw: str | bytes, fmt: wire.WireFormat) -> dict[str, Any]:
    """A V2 frame in ``fmt`` → the ``event``/``channel``/``data`` dict the parser reads."""
    try:
        env = wire.decode(raw, fmt)
    except wire.WireError as exc:
        raise v1.FrameError(v1.MALFORMED, f"Undecodable frame: {exc}") from None
    data = env.data.to_value() if env.data is not None else None
    out: dict[str, Any] = {"event": env.event, "channel": env.channel, "data": data}
    if env.extras is not None and env.extras.echo is not None:
        out["extras"] = {"echo": env.extras.echo}
    return out


def _object(data: Any, what: str) -> dict[str, Any]:
    if isinstance(data, str):
        try:
            data = inbound.loads(data)
        except (ValueError, RecursionError):
            raise v1.FrameError(v1.MALFORMED, f"'data' of {what} must be an object") from None
    if not isinstance(data, dict):
        raise v1.FrameError(v1.MALFORMED, f"'data' of {what} must be an object")
    return data


def _serial(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**64:
        return None
    return value


def parse_resume(data: Any) -> dict[str, Position]:
    """``channel_positions`` (or legacy ``channel_serials``) of ``sockudo:resume`` (§7.2)."""
    body = _object(data, "resume")
    out: dict[str, Position] = {}
    positions = body.get("channel_positions")
    legacy = body.get("channel_serials")
    if positions is None and legacy is None:
        raise v1.FrameError(v1.MALFORMED, "resume requires channel_positions")
    if positions is not None:
        if not isinstance(positions, dict):
            raise v1.FrameError(v1.MALFORMED, "channel_positions must be an object")
        for channel, pos in positions.items():
            if not isinstance(pos, dict) or _serial(pos.get("serial")) is None:
                raise v1.FrameError(v1.MALFORMED, f"position of {channel} needs a serial")
            stream_id, last = pos.get("stream_id"), pos.get("last_message_id")
            if not isinstance(stream_id, str | None) or not isinstance(last, str | None):
                raise v1.FrameError(v1.MALFORMED, f"position of {channel} is malformed")
            out[channel] = Position(int(pos["serial"]), stream_id, last)
    if legacy is not None:
        if not isinstance(legacy, dict):
            raise v1.FrameError(v1.MALFORMED, "channel_serials must be an object")
        for channel, serial in legacy.items():
            if _serial(serial) is None:
                raise v1.FrameError(v1.MALFORMED, f"serial of {channel} is malformed")
            out.setdefault(channel, Position(int(serial), legacy=True))
    return out


def parse_rewind(value: Any, channel: str) -> Rewind:
    """``10``, ``"10"``, ``{"count": 10}``, ``{"seconds": 30}``, ``{"duration_seconds": 30}``."""

    def positive(v: Any) -> int | None:
        if isinstance(v, str):
            v = inbound.decimal(v)
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            return None
        return v

    if isinstance(value, dict):
        for key, kind in (
            ("count", "count"),
            ("seconds", "seconds"),
            ("duration_seconds", "seconds"),
        ):
            if key in value:
                n = positive(value[key])
                if n is not None:
                    return Rewind(count=n) if kind == "count" else Rewind(seconds=n)
    else:
        n = positive(value)
        if n is not None:
            return Rewind(count=n)
    raise v1.FrameError(v1.MALFORMED, "rewind must be a positive count or {seconds: n}", channel)


def not_attached(channel: str) -> dict[str, Any]:
    return {
        "channel": channel,
        "code": "not_subscribed",
        "reason": "channel_not_attached",
        "expected_stream_id": None,
        "current_stream_id": None,
        "oldest_available_serial": None,
        "newest_available_serial": None,
    }
