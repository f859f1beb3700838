"""Who is alive in the cluster, as this node sees the ``nodes`` topic (spec 05 §9.3). Pure.

Every node appends a heartbeat per ``cluster.heartbeat_interval_ms`` and reads everyone's. A
peer incarnation is alive while its latest heartbeat arrived less than ``node_timeout_ms`` ago
**by this node's clock** (the time this node read it, not the record's timestamp: clocks of
other machines never decide a death). ``node.stopping`` makes an incarnation expire at once; a
``node.dead`` summary, or a declaration of ours, makes it dead for good (later heartbeats of it
are ignored). The cleaner is the live incarnation with the smallest id, this node included.

No I/O and no clock of its own: ``sockudo/node/cluster.py`` feeds it records and times.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class Peer:
    """What this node knows about another incarnation."""

    incarnation: str
    node_id: str
    seen_at: float
    """Observer time (monotonic seconds) of the latest record about it."""
    last_heartbeat_ms: int = 0
    """Log time of its latest heartbeat (0: none read); informational, as in ``node.dead``."""
    connections: int = 0
    subscriptions: dict[str, int] = field(default_factory=dict)
    """Its sockets per occupied channel (``app_id + "\\x00" + channel``), from its heartbeat."""
    stopping: bool = False
    """It announced a graceful stop (or it is an earlier incarnation of this process)."""
    dead: bool = False
    """Declared dead (by anyone); sticky."""


def node_of(incarnation: str) -> str:
    """The node id part of ``{node_id}/{start_ms}-{hex}``."""
    return incarnation.rsplit("/", 1)[0]


class Membership:
    """Peers by incarnation, liveness, the cleaner, and what the cleaner should declare."""

    def __init__(self, own: str, timeout_s: float, *, fresh_s: float | None = None) -> None:
        self.own = own
        self.timeout_s = timeout_s
        self.fresh_s = timeout_s / 2 if fresh_s is None else fresh_s
        """How recently our own heartbeat must have come back for our view to count."""
        self.peers: dict[str, Peer] = {}
        self.own_seen_at: float | None = None

    # --- what the nodes topic says ----------------------------------------------------------

    def heartbeat(
        self,
        incarnation: str,
        node_id: str,
        log_ms: int,
        now: float,
        *,
        connections: int = 0,
        subscriptions: dict[str, int] | None = None,
    ) -> None:
        if incarnation == self.own:
            self.own_seen_at = now
            return
        peer = self.peers.get(incarnation)
        if peer is None:
            peer = self.peers[incarnation] = Peer(incarnation, node_id, now)
        elif peer.dead or peer.stopping:
            return  # a late heartbeat does not bring an incarnation back
        peer.seen_at = now
        peer.last_heartbeat_ms = max(peer.last_heartbeat_ms, log_ms)
        peer.connections = connections
        peer.subscriptions = dict(subscriptions or {})

    def stopping(self, incarnation: str, now: float) -> None:
        if incarnation == self.own:
            return
        peer = self._peer(incarnation, now)
        peer.stopping = True

    def dead(self, incarnation: str, now: float) -> bool:
        """Mark ``incarnation`` dead; ``True`` when it is this node's own (it must fence)."""
        if incarnation == self.own:
            return True
        peer = self._peer(incarnation, now)
        peer.dead = True
        peer.seen_at = now  # pruning counts from the death
        return False

    def renamed(self, new_own: str, now: float) -> None:
        """This node fenced itself: the old incarnation is a stopping peer from now on."""
        old = self.own
        self.own = new_own
        self.own_seen_at = None
        self.stopping(old, now)

    def _peer(self, incarnation: str, now: float) -> Peer:
        peer = self.peers.get(incarnation)
        if peer is None:
            peer = self.peers[incarnation] = Peer(incarnation, node_of(incarnation), now)
        return peer

    # --- judgements -------------------------------------------------------------------------

    def is_live(self, peer: Peer, now: float) -> bool:
        return not peer.dead and not peer.stopping and now - peer.seen_at <= self.timeout_s

    def live(self, now: float) -> list[str]:
        """Live incarnations in id order, this node's own included."""
        found = {p.incarnation for p in self.peers.values() if self.is_live(p, now)}
        found.add(self.own)
        return sorted(found)

    def subscriptions(self, app_id: str, now: float) -> dict[str, int]:
        """The other live nodes' subscribers per channel of ``app_id``, as their latest
        heartbeats gave them (at most one heartbeat interval old)."""
        prefix = app_id + "\x00"
        out: dict[str, int] = {}
        for peer in self.peers.values():
            if not self.is_live(peer, now):
                continue
            for key, count in peer.subscriptions.items():
                if key.startswith(prefix):
                    channel = key[len(prefix) :]
                    out[channel] = out.get(channel, 0) + count
        return out

    def subscription_count(self, app_id: str, channel: str, now: float) -> int:
        """The other live nodes' subscribers of one channel (see :meth:`subscriptions`)."""
        key = f"{app_id}\x00{channel}"
        return sum(p.subscriptions.get(key, 0) for p in self.peers.values() if self.is_live(p, now))

    def cleaner(self, now: float) -> str:
        return self.live(now)[0]

    def view_fresh(self, now: float) -> bool:
        """Our own latest heartbeat came back recently: the reader is not lagging, so peers
        that look silent really are (a stalled reader must never declare the cluster dead)."""
        return self.own_seen_at is not None and now - self.own_seen_at <= self.fresh_s

    def expired(self, now: float) -> list[Peer]:
        """Peers not yet declared dead whose heartbeats stopped or who announced a stop."""
        return sorted(
            (
                p
                for p in self.peers.values()
                if not p.dead and (p.stopping or now - p.seen_at > self.timeout_s)
            ),
            key=lambda p: p.incarnation,
        )

    def prune(self, now: float, keep_s: float) -> None:
        """Forget dead peers nobody mentioned for ``keep_s`` (the nodes topic's retention)."""
        for inc in [i for i, p in self.peers.items() if p.dead and now - p.seen_at > keep_s]:
            del self.peers[inc]
