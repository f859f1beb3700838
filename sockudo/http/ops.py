"""Operator routes ``/usage``, ``/stats``, ``/operator/stats`` and HTTP call metrics (spec 01 §7).

The routes exist only when ``settings.usage_enabled``; otherwise the app's plain-text 404 answers
them like any unknown path. Numbers are this node's: the Hub's sockets and subscriptions, and the
host's memory from ``/proc/meminfo``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sockudo import metrics
from sockudo.channels import is_presence_channel
from sockudo.config import Settings
from sockudo.http.context import HttpContext, context
from sockudo.node.hub import Hub

MEMINFO = Path("/proc/meminfo")


# --- memory -------------------------------------------------------------------------------------


def parse_meminfo(text: str) -> dict[str, int]:
    """``/proc/meminfo`` as bytes per field (values there are in KiB)."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        name, sep, rest = line.partition(":")
        fields = rest.split()
        if sep and fields and fields[0].isdigit():
            scale = 1024 if len(fields) > 1 and fields[1].lower() == "kb" else 1
            out[name.strip()] = int(fields[0]) * scale
    return out


def memory(meminfo: Path = MEMINFO) -> dict[str, int | float]:
    """Host memory: ``free`` is what is available to new work (MemAvailable)."""
    try:
        info = parse_meminfo(meminfo.read_text())
    except OSError:
        info = {}
    total = info.get("MemTotal", 0)
    # Older kernels lack MemAvailable; MemFree understates what is available but is honest.
    free = min(info.get("MemAvailable", info.get("MemFree", 0)), total)
    used = total - free
    percent = round(used / total * 100, 2) if total else 0.0
    return {"free": free, "used": used, "total": total, "percent": percent}


# --- stats --------------------------------------------------------------------------------------


def app_stats(hub: Hub, app_id: str) -> dict[str, Any]:
    """One entry of ``apps`` in ``/stats``."""
    channels = hub.channels(app_id)
    presence = {ch: n for ch, n in channels.items() if is_presence_channel(ch)}
    members: set[tuple[str, str]] = set()
    for channel in presence:
        for outbox in hub.subscribers(app_id, channel):
            user = hub.member_of(outbox.socket_id, channel)
            if user is not None:
                members.add((channel, user))
    return {
        "app_id": app_id,
        "connections": hub.connection_count(app_id),
        "authenticated_connections": hub.authenticated_count(app_id),
        "users": len(hub.users(app_id)),
        # Connection metadata is a V2 feature this node does not track yet.
        "connections_with_meta": 0,
        "occupancy": {
            "channels": len(channels),
            "subscriptions": sum(channels.values()),
            "presence_channels": len(presence),
            "presence_subscriptions": sum(presence.values()),
            "presence_members": len(members),
        },
    }


_SUMMED = ("connections", "authenticated_connections", "users", "connections_with_meta")


def totals(apps: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"apps": len(apps)}
    for key in _SUMMED:
        out[key] = sum(a[key] for a in apps)
    occupancy_keys = (
        "channels",
        "subscriptions",
        "presence_channels",
        "presence_subscriptions",
        "presence_members",
    )
    out["occupancy"] = {k: sum(a["occupancy"][k] for a in apps) for k in occupancy_keys}
    return out


def history_section(ctx: HttpContext, *, enabled: bool) -> dict[str, Any]:
    """History health as seen from this node.

    The event log is both backend and state authority. ``degraded_channels`` counts the log
    partitions this node stopped folding (each may hold many channels; the count of partitions
    is the honest number we have). ``reset_required_channels`` is always 0: resets are per
    stream and not tracked node-wide. ``queue_depth`` is the local fold lag in records.
    """
    return {
        "enabled": enabled,
        "backend": "event_log",
        "state_authority": "event_log",
        "degraded_channels": len(ctx.channels.stalled_partitions()),
        "reset_required_channels": 0,
        "queue_depth": ctx.channels.lag(),
    }


def stats(ctx: HttpContext) -> dict[str, Any]:
    """The ``/stats`` document of spec 01 §7.3."""
    hub = ctx.hub
    apps = [app_stats(hub, app_id) for app_id in sorted(hub.counts_per_app())]
    body: dict[str, Any] = {
        "memory": memory(),
        "history": history_section(ctx, enabled=ctx.settings.history_enabled),
        "presence_history": history_section(ctx, enabled=ctx.settings.presence_history_enabled),
        "totals": totals(apps),
        "apps": apps,
    }
    if ctx.settings.server_role == "api":
        body["server_role"] = "api"
    return body


async def get_usage(request: Request) -> Response:
    return JSONResponse({"memory": memory()})


async def get_stats(request: Request) -> Response:
    return JSONResponse(stats(context(request)))


def routes(settings: Settings) -> list[BaseRoute]:
    """The operator routes, or none when ``HTTP_API_USAGE_ENABLED=false``."""
    if not settings.usage_enabled:
        return []
    return [
        Route("/usage", get_usage, methods=["GET"]),
        Route("/stats", get_stats, methods=["GET"]),
        Route("/operator/stats", get_stats, methods=["GET"]),
    ]


# --- HTTP call metrics --------------------------------------------------------------------------


def metered_app(scope: Scope) -> str | None:
    """The ``app_id`` label of a metered call, or ``None`` for paths that are not counted."""
    path: str = scope.get("path", "")
    parts = path.strip("/").split("/")
    ctx: HttpContext | None = getattr(getattr(scope.get("app"), "state", None), "ctx", None)
    settings = ctx.settings if ctx is not None else None
    if parts[0] == "up":
        app_id = parts[1] if len(parts) > 1 else ""
    elif parts[0] == "apps" and len(parts) > 1:
        app_id = parts[1]
    elif parts[0] == "users":
        # The alias path carries no app id; the signature's auth_key names the app.
        key = Request(scope).query_params.get("auth_key", "")
        app = settings.app_by_key(key) if settings is not None else None
        return app.id if app is not None else ""
    else:
        return None
    # Only configured ids become label values: callers choose the path, not the cardinality.
    if settings is None or settings.app_by_id(app_id) is None:
        return ""
    return app_id


class BodyBytes:
    """The body bytes of one metered call, both ways, counted as they pass (spec 01 §7.4)."""

    __slots__ = ("_receive", "app_id", "received", "sent")

    def __init__(self, app_id: str, receive: Receive) -> None:
        self.app_id = app_id
        self._receive = receive
        self.received = 0
        self.sent = 0

    async def receive(self) -> Message:
        """The call's ``receive``, counting request body bytes."""
        message = await self._receive()
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
        return message

    def count_sent(self, message: Message) -> None:
        if message["type"] == "http.response.body":
            self.sent += len(message.get("body", b""))

    def record(self) -> None:
        metrics.http_call(self.app_id, self.received, self.sent)


class HttpMetricsMiddleware:
    """Counts signed API calls and ``/up`` with their body bytes (spec 01 §7.4)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        app_id = metered_app(scope)
        if app_id is None:
            await self.app(scope, receive, send)
            return
        counter = BodyBytes(app_id, receive)

        async def counting_send(message: Message) -> None:
            counter.count_sent(message)
            await send(message)

        try:
            await self.app(scope, counter.receive, counting_send)
        finally:
            counter.record()
