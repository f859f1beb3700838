"""Pieces shared by the live benchmarks (``fanout.py``, ``recovery.py``)."""

from __future__ import annotations

import asyncio
from urllib.parse import urlencode

from sockudo.auth import signed_query_params
from tests.support.node import APP_KEY, APP_SECRET


async def signed_post(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    port: int,
    path: str,
    body: bytes,
    timestamp: int,
) -> bytes:
    """One signed ``POST`` on a keep-alive HTTP/1.1 connection; the answer's body.

    Raises ``RuntimeError`` unless the node answers 200.
    """
    query = urlencode(
        signed_query_params(APP_KEY, APP_SECRET, "POST", path, timestamp=timestamp, body=body)
    )
    writer.write(
        (
            f"POST {path}?{query} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        + body
    )
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    answer = await reader.readexactly(length)
    if not head.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(f"publish failed: {head[:40]!r} {answer[:200]!r}")
    return answer
