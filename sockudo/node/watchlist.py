"""Watchlist events (spec 01 §3.11): online/offline notices for users a signed-in socket watches.

Node-local: "online" means the user has a socket with that identity on this node. Across a
cluster the same rule would need user-level online edges in the log; see the README's notes.
"""

from __future__ import annotations

from sockudo.node.hub import Hub


class Watchlists:
    """Who watches whom, per app, for this node's sockets."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self._lists: dict[str, tuple[str, tuple[str, ...]]] = {}
        self._watchers: dict[tuple[str, str], set[str]] = {}

    def signed_in(
        self,
        app_id: str,
        socket_id: str,
        user_id: str,
        watchlist: tuple[str, ...],
        was_online: bool,
    ) -> None:
        """Register the watchlist, send its current status, then announce ``user_id`` online."""
        self._forget(socket_id)
        self._lists[socket_id] = (app_id, watchlist)
        for watched in watchlist:
            self._watchers.setdefault((app_id, watched), set()).add(socket_id)
        online = [u for u in watchlist if self.hub.sockets_of_user(app_id, u)]
        offline = [u for u in watchlist if u not in online]
        status = [(name, ids) for name, ids in (("online", online), ("offline", offline)) if ids]
        outbox = self.hub.get(socket_id)
        if status and outbox is not None:
            outbox.offer(outbox.egress.watchlist_events(status))
        if not was_online:
            self._announce(app_id, user_id, "online")

    def socket_gone(self, app_id: str, socket_id: str, user_id: str | None) -> None:
        """Forget its watchlist; tell watchers ``offline`` when the user's last socket left."""
        self._forget(socket_id)
        if user_id is not None and not self.hub.sockets_of_user(app_id, user_id):
            self._announce(app_id, user_id, "offline")

    def _announce(self, app_id: str, user_id: str, name: str) -> None:
        watchers = self._watchers.get((app_id, user_id))
        if not watchers:
            return
        events = [(name, [user_id])]
        for socket_id in list(watchers):
            outbox = self.hub.get(socket_id)
            if outbox is not None:
                outbox.offer(outbox.egress.watchlist_events(events))

    def _forget(self, socket_id: str) -> None:
        entry = self._lists.pop(socket_id, None)
        if entry is None:
            return
        app_id, watchlist = entry
        for watched in watchlist:
            watchers = self._watchers.get((app_id, watched))
            if watchers is not None:
                watchers.discard(socket_id)
                if not watchers:
                    del self._watchers[(app_id, watched)]
