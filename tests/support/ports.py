"""Loopback ports for servers the tests start."""

from __future__ import annotations

import asyncio
import contextlib
import socket


def free_port() -> int:
    """A port that was free on 127.0.0.1 a moment ago (a server may still lose a race)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def wait_accepting(port: int, attempts: int = 100, pause_s: float = 0.05) -> None:
    """Return once 127.0.0.1:``port`` accepts a connection (or after ``attempts`` tries)."""
    for _ in range(attempts):
        with contextlib.suppress(OSError):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        await asyncio.sleep(pause_s)
