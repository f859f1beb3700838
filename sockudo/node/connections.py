"""What sockets change through the log: presence joins and leaves, client events, terminations.

The WebSocket edge calls these; each appends one ``channel-events`` record. Joins wait for this
node's fold (the subscriber's member list is read right after, at the same log position as the
hub join); leaves and client events only wait for the append, which keeps the per-socket order
without holding the socket's read loop for a fold round trip.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter
from dataclasses import dataclass, replace
from typing import Any

from projections.folds.state import IGNORED, Outcome
from projections.reads import presence as presence_reads
from projections.store import keys
from sockudo.channels import resolve_channel_policy
from sockudo.config import AppConfig
from sockudo.errors import FoldTimeout, SockudoError
from sockudo.events.channel import Flags, MessagePublished, Origin, Retention
from sockudo.events.presence import (
    NodeDeclaredDead,
    PresenceMemberJoined,
    PresenceMemberLeft,
    PresenceMemberUpdated,
)
from sockudo.ids import random_uuid
from sockudo.node.services import (
    ChannelService,
    message_flags,
    message_retention,
    presence_policy,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ClientEvent:
    """A validated ``client-*`` event from a socket (spec 01 §3.12)."""

    channel: str
    event: str
    data: str
    data_is_json: bool
    socket_id: str
    user_id: str | None
    """The sender's presence user id (presence channels only: V1 frames carry it)."""
    echo: bool | None = None
    """V2 ``extras.echo`` of the frame; travels in the record's extras."""
    data_is_binary: bool = False
    """``data`` is the JSON int array of raw bytes from a binary-format sender."""


class ConnectionService:
    """Log-backed actions of this node's sockets."""

    def __init__(self, channels: ChannelService) -> None:
        self.channels = channels
        self.runtime = channels.runtime
        self.settings = channels.settings
        self._owed_leaves: dict[tuple[str, str, str], tuple[AppConfig, str, str]] = {}
        """Leaves not yet in the log, by (app id, channel, socket id) → (app, user id, cause):
        ones the log refused, and ones owed after a join whose outcome is unknown (it may have
        landed although the client was told it failed). :meth:`pay_owed_leaves` appends them
        once the log answers again, so no member outlives its socket."""
        self._joining: dict[tuple[str, str], Counter[str]] = {}
        """Users whose join of (app, channel) this node appended and has not seen folded yet:
        the member limit counts them, or joins that arrive together would all pass it."""

    def _origin(self, socket_id: str | None = None, user_id: str | None = None) -> Origin:
        return Origin(
            node=self.runtime.incarnation,
            socket_id=socket_id,
            user_id=user_id,
            request_id=random_uuid(),
        )

    def _presence_policy(self, app: AppConfig, channel: str) -> tuple[Flags, Retention]:
        return presence_policy(resolve_channel_policy(channel, app, self.settings))

    # --- presence ---------------------------------------------------------------------------

    def _presence_fields(
        self, app: AppConfig, channel: str, socket_id: str, user_id: str
    ) -> dict[str, Any]:
        """What every ``presence.*`` record of one connection carries."""
        flags, retention = self._presence_policy(app, channel)
        return {
            "event_id": random_uuid(),
            "app_id": app.id,
            "channel": channel,
            "origin": self._origin(socket_id, user_id),
            "user_id": user_id,
            "socket_id": socket_id,
            "incarnation": self.runtime.incarnation,
            "flags": flags,
            "retention": retention,
        }

    def admits(self, app: AppConfig, channel: str, user_id: str) -> bool:
        """Whether the member limit lets ``user_id`` join ``channel`` (spec 01 §3.8): a user
        already present (another tab) always; else while fewer distinct users than the limit
        are members or joining through this node."""
        limit = app.limits.max_presence_members_per_channel
        if not limit or self.is_member(app, channel, user_id):
            return True
        joining = self._joining.get((app.id, channel), ())
        if user_id in joining:
            return True
        pending = sum(1 for u in joining if not self.is_member(app, channel, u))
        return self.channels.presence_user_count(app, channel) + pending < limit

    async def join(
        self, app: AppConfig, channel: str, socket_id: str, user_id: str, user_info_json: str | None
    ) -> Outcome:
        fields = self._presence_fields(app, channel, socket_id, user_id)
        key = (app.id, channel)
        joining = self._joining.setdefault(key, Counter())
        joining[user_id] += 1
        try:
            outcome = await self.channels.append_and_wait(
                PresenceMemberJoined(**fields, user_info_json=user_info_json)
            )
            # Joined now: an earlier unknown join of this socket is this membership.
            self._owed_leaves.pop((app.id, channel, socket_id), None)
            return outcome
        finally:
            joining[user_id] -= 1
            if joining[user_id] <= 0:
                del joining[user_id]
            if not joining:
                del self._joining[key]

    async def leave(
        self, app: AppConfig, channel: str, socket_id: str, user_id: str, cause: str
    ) -> None:
        try:
            await self._append_leave(app, channel, socket_id, user_id, cause)
        except SockudoError:
            self.owe_leave(app, channel, socket_id, user_id, cause)
            raise

    async def _append_leave(
        self, app: AppConfig, channel: str, socket_id: str, user_id: str, cause: str
    ) -> None:
        fields = self._presence_fields(app, channel, socket_id, user_id)
        await self.channels.append(PresenceMemberLeft(**fields, cause=cause))

    def owe_leave(
        self, app: AppConfig, channel: str, socket_id: str, user_id: str, cause: str
    ) -> None:
        """Append this leave later (:meth:`pay_owed_leaves`): the log is away, or a join's
        outcome is unknown. A leave of a connection that is not a member changes nothing."""
        self._owed_leaves[(app.id, channel, socket_id)] = (app, user_id, cause)

    async def pay_owed_leaves(self) -> int:
        """Append the owed leaves, oldest first, until the log refuses one; how many went."""
        paid = 0
        for key, (app, user_id, cause) in list(self._owed_leaves.items()):
            _app_id, channel, socket_id = key
            try:
                await self._append_leave(app, channel, socket_id, user_id, cause)
            except SockudoError as exc:
                log.warning("owed presence leaves wait for the log: %s", exc)
                break
            if self._owed_leaves.get(key) == (app, user_id, cause):
                del self._owed_leaves[key]
            paid += 1
        return paid

    async def update(
        self, app: AppConfig, channel: str, socket_id: str, user_id: str, user_info_json: str
    ) -> None:
        fields = self._presence_fields(app, channel, socket_id, user_id)
        await self.channels.append(PresenceMemberUpdated(**fields, user_info_json=user_info_json))

    def is_member(self, app: AppConfig, channel: str, user_id: str) -> bool:
        store = self.runtime.store
        assert store is not None
        return presence_reads.member(store, app.id, channel, user_id) is not None

    # --- client events ----------------------------------------------------------------------

    async def client_event(self, app: AppConfig, ev: ClientEvent) -> None:
        policy = resolve_channel_policy(ev.channel, app, self.settings)
        await self.channels.append(
            MessagePublished(
                event_id=random_uuid(),
                app_id=app.id,
                channel=ev.channel,
                origin=self._origin(ev.socket_id, ev.user_id),
                message_id=random_uuid(),
                name=ev.event,
                data=ev.data,
                data_is_json=ev.data_is_json,
                flags=message_flags(policy),
                retention=message_retention(policy),
                extras_json=None if ev.echo is None else json.dumps({"echo": ev.echo}),
                client_event=True,
                data_is_binary=ev.data_is_binary,
            )
        )

    # --- node hygiene -----------------------------------------------------------------------

    def orphaned_incarnations(self) -> set[str]:
        """Earlier incarnations of this node still holding presence connections.

        On the embedded log this node is the only writer, so every other incarnation is an
        earlier run of it; on Kafka only incarnations with this node's id are (spec 05 §8.1).
        """
        store = self.runtime.store
        assert store is not None
        own = self.runtime.incarnation
        node_prefix = f"{self.settings.node_id}/"
        found: set[str] = set()
        for p in range(self.runtime.partitions):
            prefix = keys.u32(p)
            for key, _ in store.scan(keys.BY_NODE, prefix, keys.prefix_end(prefix)):
                incarnation = key[4:].split(b"\x00", 1)[0].decode()
                if incarnation == own:
                    continue
                if self.settings.log_backend == "kafka" and not incarnation.startswith(node_prefix):
                    continue
                found.add(incarnation)
        return found

    async def declare_dead(self, incarnation: str, *, last_seen_ms: int = 0) -> NodeDeclaredDead:
        """Append ``node.dead`` to every partition: each fold removes the members it holds.

        Appends to all partitions at once, then waits for this node's fold of each. A failed
        append raises (declaring again is harmless: the fold is idempotent); a fold that does
        not confirm in time (a stalled partition) is only logged. Returns the declaration, for
        the summary the cleaner appends to ``nodes`` (spec 05 §9.3).
        """
        key = b"__node__\x00" + incarnation.encode()
        summary = NodeDeclaredDead(
            event_id=random_uuid(),
            origin=self._origin(),
            incarnation=incarnation,
            declared_by=self.runtime.incarnation,
            last_seen_ms=last_seen_ms,
        )
        appended = await asyncio.gather(
            *(
                self.channels.append(replace(summary, event_id=random_uuid()), partition=p, key=key)
                for p in range(self.runtime.partitions)
            )
        )
        runner = self.runtime.runner
        assert runner is not None
        removed = 0
        for partition, offset in appended:
            try:
                outcome = await runner.wait_applied(partition, offset, 10.0)
            except FoldTimeout as exc:
                log.warning("node.dead of %s on partition %s: %s", incarnation, partition, exc)
                continue
            if outcome.kind != IGNORED:
                removed += int(outcome.details.get("connections", 0))
        log.info("declared %s dead: %s presence connection(s) removed", incarnation, removed)
        return summary
