"""What HTTP handlers may reach: settings, the services facade and a clock (no stores, no log)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from starlette.requests import Request

from sockudo.config import Settings
from sockudo.http.ip_limit import IpRateLimiter
from sockudo.node.connections import ConnectionService
from sockudo.node.hub import Hub
from sockudo.node.replay import HotReplay
from sockudo.node.services import ChannelService
from sockudo.node.watchlist import Watchlists


class PeerSubscriptions(Protocol):
    """Other live nodes' subscribers, per channel of an app (``ClusterService``)."""

    def remote_subscriptions(self, app_id: str) -> dict[str, int]: ...

    def remote_subscription_count(self, app_id: str, channel: str) -> int: ...


class _NoPeers:
    def remote_subscriptions(self, app_id: str) -> dict[str, int]:
        return {}

    def remote_subscription_count(self, app_id: str, channel: str) -> int:
        return 0


NO_PEERS: PeerSubscriptions = _NoPeers()


@dataclass(slots=True)
class HttpContext:
    settings: Settings
    channels: ChannelService
    clock: Callable[[], float] = time.time
    draining: bool = False
    extra: dict[str, object] = field(default_factory=dict)
    hub: Hub = field(default_factory=Hub)
    """This node's sockets and subscriptions (live counts such as ``subscription_count``)."""
    connections: ConnectionService | None = None
    """Log-backed socket actions (presence, client events); set by ``build_app``."""
    watchlists: Watchlists | None = None
    hot: HotReplay = field(default_factory=HotReplay)
    """The hot replay tier fanout fills (spec 02 §7.3)."""
    api_limiter: IpRateLimiter | None = None
    """Per-IP API limiter (``rate_limiter.enabled``); ``None`` when off."""
    ws_limiter: IpRateLimiter | None = None
    """Per-IP WebSocket connect limiter; ``None`` when off."""
    peers: PeerSubscriptions = NO_PEERS
    """Other nodes' subscribers (the cluster view, from heartbeats); set by the node."""

    def subscriptions(self, app_id: str) -> dict[str, int]:
        """Subscribers per occupied channel of ``app_id`` on every node (spec 01 §6)."""
        out = dict(self.hub.channels(app_id))
        for channel, count in self.peers.remote_subscriptions(app_id).items():
            out[channel] = out.get(channel, 0) + count
        return out

    def subscription_count(self, app_id: str, channel: str) -> int:
        """Subscribers of one channel on every node."""
        remote = self.peers.remote_subscription_count(app_id, channel)
        return self.hub.subscription_count(app_id, channel) + remote

    def __post_init__(self) -> None:
        if self.connections is None:
            self.connections = ConnectionService(self.channels)
        if self.watchlists is None:
            self.watchlists = Watchlists(self.hub)
        settings = self.settings
        if settings.rate_limiter_enabled:
            if self.api_limiter is None:
                self.api_limiter = IpRateLimiter(
                    settings.rate_limiter_api_max_requests,
                    settings.rate_limiter_api_window_seconds,
                    settings.rate_limiter_api_trust_hops,
                )
            if self.ws_limiter is None:
                self.ws_limiter = IpRateLimiter(
                    settings.rate_limiter_ws_max_requests,
                    settings.rate_limiter_ws_window_seconds,
                    settings.rate_limiter_ws_trust_hops,
                )


def context(request: Request) -> HttpContext:
    ctx: HttpContext = request.app.state.ctx
    return ctx
