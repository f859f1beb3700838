"""Per-connection V1 state machine: frames in, replies and subscription changes out.

Pure: time is passed in, nothing is sent from here. The endpoint applies a :class:`Reply`
(enqueue frames, join/leave the hub, close) and calls :meth:`Session.tick` when the deadline
from :meth:`Session.next_deadline` passes (heartbeat, spec 01 §3.2).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sockudo.auth import verify_channel_auth
from sockudo.channels import InvalidChannelName, validate_channel_name
from sockudo.config import AppConfig
from sockudo.ws import v1

PONG_TIMEOUT_S = 30.0
PONG_TIMEOUT_CODE = 4201
PONG_TIMEOUT_REASON = "Pong reply not received in time"


@dataclass(slots=True)
class Reply:
    """What handling one frame (or one tick) asks the endpoint to do, in this order."""

    frames: list[str] = field(default_factory=list)
    join: str | None = None
    leave: str | None = None
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
    ) -> None:
        self.socket_id = socket_id
        self.app = app
        self.activity_timeout = activity_timeout
        self.pong_timeout = pong_timeout
        self.channels: set[str] = set()
        self.last_activity = now
        self.ping_sent_at: float | None = None

    def opening(self) -> str:
        return v1.connection_established(self.socket_id, self.activity_timeout)

    # --- heartbeat --------------------------------------------------------------------------

    def next_deadline(self) -> float:
        if self.ping_sent_at is not None:
            return self.ping_sent_at + self.pong_timeout
        return self.last_activity + self.activity_timeout

    def tick(self, now: float) -> Reply:
        """Send our ping after inactivity; give up when it stays unanswered."""
        if self.ping_sent_at is not None:
            if now >= self.ping_sent_at + self.pong_timeout:
                return Reply(close=(PONG_TIMEOUT_CODE, PONG_TIMEOUT_REASON))
            return Reply()
        if now >= self.last_activity + self.activity_timeout:
            self.ping_sent_at = now
            return Reply(frames=[v1.ping()])
        return Reply()

    # --- inbound frames ---------------------------------------------------------------------

    def handle(self, raw: str | bytes, now: float) -> Reply:
        # Any frame proves the client alive for the inactivity clock; only ping/pong answer a
        # pending server ping (spec 01 §3.2).
        self.last_activity = now
        try:
            command = v1.parse_frame(raw)
            return self._dispatch(command)
        except v1.FrameError as exc:
            return Reply(frames=[v1.error(exc.code, exc.message, exc.channel)])

    def _dispatch(self, command: v1.Command) -> Reply:
        match command:
            case v1.Ping():
                self.ping_sent_at = None
                return Reply(frames=[v1.pong()])
            case v1.Pong():
                self.ping_sent_at = None
                return Reply()
            case v1.Subscribe():
                return self._subscribe(command)
            case v1.Unsubscribe(channel=channel):
                if channel not in self.channels:
                    return Reply()
                self.channels.discard(channel)
                return Reply(leave=channel)
            case v1.Signin():
                raise v1.FrameError(v1.UNAUTHORIZED, "User authentication is not supported yet")
            case v1.ClientEvent(event=event, channel=channel):
                raise v1.FrameError(
                    v1.CLIENT_EVENT_ERROR, f"Client event '{event}' is not supported yet", channel
                )
            case v1.UnknownEvent(event=event):
                raise v1.FrameError(v1.CLIENT_EVENT_ERROR, f"Unknown event '{event[:64]}'")
            case v1.IgnoredSystemEvent():
                return Reply()
        raise AssertionError(f"unhandled command {command!r}")  # pragma: no cover

    def _subscribe(self, command: v1.Subscribe) -> Reply:
        channel = command.channel
        try:
            info = validate_channel_name(channel, self.app)
        except InvalidChannelName as exc:
            raise v1.FrameError(v1.CHANNEL_ERROR, exc.message, channel) from None
        if info.is_presence:
            # Presence membership is not implemented yet; refusing explicitly beats joining a
            # channel whose member list would silently stay empty.
            raise v1.FrameError(v1.UNAUTHORIZED, "Presence channels are not supported yet", channel)
        if info.is_user_channel:
            # Signin is not implemented, so no socket has a user identity (spec 01 §3.10).
            raise v1.FrameError(v1.UNAUTHORIZED, "Socket is not signed in as this user", channel)
        if info.requires_auth:
            if not command.auth:
                raise v1.FrameError(v1.UNAUTHORIZED, "Missing channel auth", channel)
            if not verify_channel_auth(
                command.auth, self.app.key, self.app.secret, self.socket_id, channel
            ):
                raise v1.FrameError(v1.UNAUTHORIZED, "Invalid channel auth signature", channel)
        frames = [v1.subscription_succeeded(channel)]
        if info.cache:
            # No cache storage yet: every cache subscribe is a miss (spec 01 §3.9).
            frames.append(v1.cache_miss(channel))
        if channel in self.channels:
            return Reply(frames=frames)  # idempotent re-subscribe (spec 01 §3.4)
        self.channels.add(channel)
        return Reply(frames=frames, join=channel)
