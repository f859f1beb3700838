"""A signed HTTP API client for tests, signing exactly as the Pusher SDKs do."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx

from sockudo.auth import signed_query_params


class SignedClient:
    """Signs every request with the app's key and secret (spec 01 §4)."""

    def __init__(self, base_url: str, app_id: str, key: str, secret: str) -> None:
        self.base_url = base_url
        self.app_id = app_id
        self.key = key
        self.secret = secret
        self.http = httpx.Client(base_url=base_url, timeout=30)

    def close(self) -> None:
        self.http.close()

    def request(
        self,
        method: str,
        path: str,
        *,
        body: bytes = b"",
        params: dict[str, str] | None = None,
        timestamp: int | None = None,
        secret: str | None = None,
        key: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        query = signed_query_params(
            key or self.key,
            secret or self.secret,
            method,
            path,
            timestamp=int(time.time()) if timestamp is None else timestamp,
            body=body,
            params=params,
        )
        return self.http.request(method, path, params=query, content=body or None, headers=headers)

    def publish(self, body: dict[str, Any], **kw: Any) -> httpx.Response:
        return self.request(
            "POST", f"/apps/{self.app_id}/events", body=json.dumps(body).encode(), **kw
        )

    def history(self, channel: str, **params: str) -> httpx.Response:
        return self.request(
            "GET", f"/apps/{self.app_id}/channels/{channel}/history", params=params or None
        )

    def history_state(self, channel: str) -> httpx.Response:
        return self.request("GET", f"/apps/{self.app_id}/channels/{channel}/history/state")
