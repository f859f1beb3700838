"""Runs the effects a :class:`~sockudo.ws.session.Reply` asks for: log appends and projection reads.

Each effect runs in the socket's read loop, so one socket's frames are handled in order; a
history read only starts there and is answered by its own task (at most two per socket). A
presence join waits for this node's fold of its record, then reads the member list and joins
the hub with no ``await`` in between: the list and the hub join sit at the same log position,
so the new member misses no later edge and sees no earlier one twice (spec 05 §7.2).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from projections.folds.state import IGNORED
from projections.reads.presence import subscription_data
from sockudo.config import AppConfig
from sockudo.errors import AppendOutcomeUnknown, FoldTimeout, SockudoError
from sockudo.node.connections import ClientEvent, ConnectionService
from sockudo.node.hub import Hub, Outbox
from sockudo.node.replay import HotReplay
from sockudo.node.watchlist import Watchlists
from sockudo.ws import streams, token_auth, v1
from sockudo.ws.session import (
    Attach,
    DeltaResync,
    Effect,
    History,
    PresenceJoin,
    PresenceLeave,
    PresenceUpdate,
    PublishClientEvent,
    Resume,
    SendCache,
    Session,
    SignedIn,
)
from sockudo.ws.tokens import RefreshToken

log = logging.getLogger(__name__)


@dataclass(slots=True)
class SocketEnv:
    """Everything effects of one socket touch."""

    app: AppConfig
    session: Session
    outbox: Outbox
    hub: Hub
    connections: ConnectionService
    watchlists: Watchlists
    hot: HotReplay
    history: streams.HistoryReads = field(default_factory=streams.HistoryReads)
    """``channel_history`` reads in flight (spec 02 §8.3); closed when the socket goes."""


async def run(effect: Effect, env: SocketEnv) -> None:
    """Run one effect; failures become in-band errors, the socket stays open."""
    try:
        match effect:
            case PresenceJoin():
                await _presence_join(effect, env)
            case PresenceUpdate():
                await env.connections.update(
                    env.app,
                    effect.channel,
                    env.session.socket_id,
                    effect.user_id,
                    effect.user_info_json,
                )
            case PresenceLeave():
                await env.connections.leave(
                    env.app, effect.channel, env.session.socket_id, effect.user_id, effect.cause
                )
            case SendCache(channel=channel):
                out = env.outbox.egress
                cached = env.connections.channels.cached_event(env.app, channel)
                if cached is None:
                    env.outbox.offer(out.cache_miss(channel))
                else:
                    env.outbox.offer(out.cached_message(cached.event, channel, cached.data))
            case PublishClientEvent():
                await env.connections.client_event(
                    env.app,
                    ClientEvent(
                        channel=effect.channel,
                        event=effect.event,
                        data=effect.data,
                        data_is_json=effect.data_is_json,
                        socket_id=env.session.socket_id,
                        user_id=effect.user_id,
                        echo=effect.echo,
                        data_is_binary=effect.data_is_binary,
                    ),
                )
            case SignedIn():
                _signed_in(effect, env)
            case Attach(channel=channel, rewind=rewind):
                streams.attach(env, channel, None, rewind)
            case DeltaResync(channel=channel):
                state = env.session.deltas.get(channel)
                resent = state.resync() if state is not None else None
                if resent is not None:
                    env.outbox.offer(resent)
            case Resume(positions=positions):
                streams.resume(env, positions)
            case History(channel=channel, request=request):
                streams.history(env, channel, request)
            case RefreshToken():
                token_auth.refresh(
                    effect, env.session, env.outbox, env.hub, env.app, env.connections.channels
                )
    except SockudoError as exc:
        # The log refused or timed out: tell this client, keep everyone else going.
        log.warning("effect %s of %s failed: %s", type(effect).__name__, env.outbox.socket_id, exc)
        if isinstance(effect, PresenceJoin) and not effect.rejoin:
            env.session.presence_failed(effect.channel)
            if isinstance(exc, AppendOutcomeUnknown | FoldTimeout):
                # The join may be in the log although this client is told it failed: its
                # leave is owed, or the member would outlive the socket.
                env.connections.owe_leave(
                    env.app, effect.channel, env.session.socket_id, effect.user_id, "unsubscribe"
                )
        target: str | None = getattr(effect, "channel", None)
        code = v1.CLIENT_EVENT_ERROR if isinstance(effect, PublishClientEvent) else 4100
        env.outbox.offer(
            env.outbox.egress.error(code, "Service temporarily unavailable, try again", target)
        )


async def _presence_join(effect: PresenceJoin, env: SocketEnv) -> None:
    app, session, channel = env.app, env.session, effect.channel
    services = env.connections
    if not effect.rejoin:
        if not services.admits(app, channel, effect.user_id):
            session.presence_failed(channel)
            env.outbox.offer(env.outbox.egress.error(v1.OVER_CAPACITY, "Over capacity", channel))
            return
        outcome = await services.join(
            app, channel, session.socket_id, effect.user_id, effect.user_info_json
        )
        if outcome.kind == IGNORED:
            log.warning("presence join of %s ignored: %s", session.socket_id, outcome.details)
        if session.presence.get(channel) != effect.user_id or not env.hub.has_socket(
            session.socket_id
        ):
            # Unsubscribed or disconnected while the join was in flight; the leave follows.
            return
        env.hub.subscribe(session.socket_id, channel, member=effect.user_id)
    members = services.channels.presence_members(app, channel)
    # The member list and the stream position are read now, at the hub join (no await).
    streams.attach(env, channel, subscription_data(members), effect.rewind)


def _signed_in(effect: SignedIn, env: SocketEnv) -> None:
    app, hub = env.app, env.hub
    was_online = bool(hub.sockets_of_user(app.id, effect.user_id))
    hub.set_user(env.session.socket_id, effect.user_id)
    if app.features.enable_watchlist_events:
        env.watchlists.signed_in(
            app.id, env.session.socket_id, effect.user_id, effect.watchlist, was_online
        )
