"""Embedded log durability: acknowledged means on disk (check 22), and group commit."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from pathlib import Path

from sockudo.log.embedded import EmbeddedLog

CHILD = textwrap.dedent(
    """
    import asyncio, sys
    from sockudo.log.embedded import EmbeddedLog

    async def main() -> None:
        log = EmbeddedLog(sys.argv[1])
        await log.start()
        await log.ensure_topic("t", 1, {"cleanup.policy": "delete"})
        i = 0
        while True:  # killed from outside; never closes cleanly
            window = [log.append("t", 0, b"k", b"value-%d" % (i + j), timeout_ms=10_000)
                      for j in range(8)]
            for r in await asyncio.gather(*window):
                print(r.offset, flush=True)
            i += 8

    asyncio.run(main())
    """
)


async def read_values(path: Path) -> list[tuple[int, bytes | None]]:
    log = EmbeddedLog(path)
    await log.start()
    try:
        start, end = await log.bounds("t", 0)
        reader = log.reader("t", {0: start})
        out: list[tuple[int, bytes | None]] = []
        while len(out) < end - start:
            out += [(r.offset, r.value) for r in await reader.poll(1000, 500)]
        await reader.close()
        return out
    finally:
        await log.close()


def test_sigkill_right_after_acknowledged_appends_loses_nothing(tmp_path: Path) -> None:
    path = tmp_path / "log"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path)], stdout=subprocess.PIPE, text=True
    )
    assert child.stdout is not None
    acked: list[int] = []
    for line in child.stdout:
        acked.append(int(line))
        if len(acked) >= 300:
            child.kill()  # SIGKILL with appends still in flight
            break
    child.wait(10)
    child.stdout.close()
    assert len(acked) >= 300, "the child stopped acknowledging before it was killed"
    stored = asyncio.run(read_values(path))
    offsets = [o for o, _ in stored]
    assert offsets == list(range(len(stored))), "offsets contiguous from 0"
    assert set(acked) <= set(offsets), "every acknowledged record survived"
    values = dict(stored)
    assert all(values[o] == b"value-%d" % o for o in acked)


async def test_concurrent_appends_share_synced_writes(tmp_path: Path) -> None:
    log = EmbeddedLog(tmp_path / "log")
    await log.start()
    try:
        await log.ensure_topic("t", 1, {"cleanup.policy": "delete"})
        before = log.sync_batches
        results = await asyncio.gather(
            *(log.append("t", 0, b"k", b"%d" % i, timeout_ms=10_000) for i in range(1000))
        )
        synced = log.sync_batches - before
        assert sorted(r.offset for r in results) == list(range(1000))
        assert 1 <= synced <= 100, f"{synced} synced writes for 1000 appends"
    finally:
        await log.close()


async def test_reopen_continues_offsets_and_time(tmp_path: Path) -> None:
    log = EmbeddedLog(tmp_path / "log")
    await log.start()
    await log.ensure_topic("t", 2, {"cleanup.policy": "delete"})
    first = [await log.append("t", 1, b"k", b"a", timeout_ms=10_000) for _ in range(3)]
    await log.close()

    log = EmbeddedLog(tmp_path / "log")
    await log.start()
    try:
        assert await log.partitions("t") == 2
        assert await log.bounds("t", 1) == (0, 3)
        assert await log.bounds("t", 0) == (0, 0)
        nxt = await log.append("t", 1, b"k", b"b", timeout_ms=10_000)
        assert nxt.offset == 3
        assert nxt.timestamp_ms >= first[-1].timestamp_ms
    finally:
        await log.close()
