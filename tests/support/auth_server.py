"""A tiny local auth endpoint for real Pusher clients, signing with the real ``pusher`` SDK.

It plays the customer backend of spec 01 §3.7/§3.10: pusher-js POSTs form fields to it and
sends whatever it answers to the server unchanged.

* ``POST /channel-auth/<user>`` — fields ``socket_id``, ``channel_name``. Private channels:
  ``pusher.Pusher.authenticate(channel, socket_id)``; presence channels also pass
  ``{"user_id": <user>, "user_info": …}`` as ``custom_data``, so the SDK's own JSON text (with
  ``", "``/``": "`` separators) is what the server must verify byte for byte.
* ``POST /user-auth/<user>`` — field ``socket_id``: ``authenticate_user(socket_id, user_data)``
  with ``{"id": <user>, "user_info"?, "watchlist"?}``.

``<user>`` is registered with :meth:`AuthServer.add_user`; an unknown user, or a channel in
``denied_channels``, gets ``403`` (pusher-js then synthesises ``pusher:subscription_error``).
Every request is recorded in ``requests``.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote

import pusher

from tests.support.local_http import LocalJsonServer


@dataclass
class UserProfile:
    user_id: str
    user_info: dict[str, Any] | None = None
    watchlist: list[str] | None = None

    def channel_data(self) -> dict[str, Any]:
        data: dict[str, Any] = {"user_id": self.user_id}
        if self.user_info is not None:
            data["user_info"] = self.user_info
        return data

    def user_data(self) -> dict[str, Any]:
        data: dict[str, Any] = {"id": self.user_id}
        if self.user_info is not None:
            data["user_info"] = self.user_info
        if self.watchlist is not None:
            data["watchlist"] = self.watchlist
        return data


@dataclass
class AuthRequest:
    kind: str
    """``channel`` or ``user``."""
    user_id: str
    form: dict[str, str]
    status: int
    response: dict[str, Any] | None


@dataclass
class AuthServer(LocalJsonServer):
    """An HTTP auth endpoint on ``127.0.0.1:<free port>``, served from a daemon thread."""

    thread_name = "auth-server"

    app_id: str
    key: str
    secret: str
    users: dict[str, UserProfile] = field(default_factory=dict)
    denied_channels: set[str] = field(default_factory=set)
    requests: list[AuthRequest] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.signer = pusher.Pusher(app_id=self.app_id, key=self.key, secret=self.secret)

    # -- configuration -------------------------------------------------------------------------

    def add_user(
        self,
        user_id: str,
        user_info: dict[str, Any] | None = None,
        watchlist: list[str] | None = None,
    ) -> UserProfile:
        profile = UserProfile(user_id, user_info, watchlist)
        with self._lock:
            self.users[user_id] = profile
        return profile

    def channel_endpoint(self, user_id: str = "anonymous") -> str:
        return f"{self.base_url}/channel-auth/{user_id}"

    def user_endpoint(self, user_id: str = "anonymous") -> str:
        return f"{self.base_url}/user-auth/{user_id}"

    def requests_of(self, kind: str) -> list[AuthRequest]:
        with self._lock:
            return [r for r in self.requests if r.kind == kind]

    # -- signing -------------------------------------------------------------------------------

    def answer(self, kind: str, user_id: str, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        with self._lock:
            profile = self.users.get(user_id)
            denied = form.get("channel_name", "") in self.denied_channels
        socket_id = form.get("socket_id", "")
        if kind == "channel":
            channel = form.get("channel_name", "")
            if denied:
                return 403, {"error": f"channel {channel} denied"}
            if channel.startswith("presence-"):
                if profile is None:
                    return 403, {"error": f"unknown user {user_id}"}
                body = self.signer.authenticate(channel, socket_id, profile.channel_data())
            else:
                body = self.signer.authenticate(channel, socket_id)
        elif kind == "user":
            if profile is None:
                return 403, {"error": f"unknown user {user_id}"}
            body = self.signer.authenticate_user(socket_id, profile.user_data())
        else:
            return 404, {"error": "not found"}
        return 200, {k: v.decode() if isinstance(v, bytes) else v for k, v in body.items()}

    # -- lifecycle -----------------------------------------------------------------------------

    def handle_post(self, path: str, body: bytes) -> tuple[int, Any]:
        parts = path.split("?", 1)[0].strip("/").split("/")
        kind = {"channel-auth": "channel", "user-auth": "user"}.get(parts[0], "?")
        user_id = unquote(parts[1]) if len(parts) > 1 else "anonymous"
        form = {k: v[0] for k, v in parse_qs(body.decode(), keep_blank_values=True).items()}
        try:
            status, answer = self.answer(kind, user_id, form)
        except Exception as exc:  # a signing error must reach the test, not hang it
            status, answer = 500, {"error": repr(exc)}
        with self._lock:
            self.requests.append(
                AuthRequest(kind, user_id, form, status, answer if status == 200 else None)
            )
        return status, answer
