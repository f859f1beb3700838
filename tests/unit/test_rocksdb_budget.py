"""Both RocksDB databases of a node open with bounded memtables, WAL and caches.

RocksDB writes the options it runs with into the database's ``OPTIONS-*`` file: the test reads
what it actually applied, for the database and for every column family.
"""

from __future__ import annotations

from pathlib import Path

from projections.store.rocks import ProjectionStore
from sockudo import rocksdb_budget
from sockudo.log.embedded import EmbeddedLog


def applied(path: Path) -> tuple[dict[str, str], list[dict[str, str]]]:
    """(database options, table options of each column family) from the newest OPTIONS file."""
    newest = max(path.glob("OPTIONS-*"), key=lambda f: int(f.name.split("-")[1]))
    db: dict[str, str] = {}
    tables: list[dict[str, str]] = []
    section: dict[str, str] | None = None
    for line in newest.read_text().splitlines():
        line = line.strip()
        if line.startswith("["):
            section = db if line == "[DBOptions]" else None
            if line.startswith("[TableOptions/BlockBasedTable"):
                section = {}
                tables.append(section)
        elif section is not None and "=" in line:
            k, v = line.split("=", 1)
            section[k] = v
    return db, tables


def assert_bounded(path: Path, column_families: int) -> None:
    db, tables = applied(path)
    assert int(db["db_write_buffer_size"]) == rocksdb_budget.WRITE_BUFFERS_BYTES
    assert int(db["max_total_wal_size"]) == rocksdb_budget.WAL_BYTES
    assert len(tables) >= column_families
    for table in tables:  # index and filter blocks count in the block cache
        assert table["cache_index_and_filter_blocks"] == "true"


def test_the_projection_is_bounded(tmp_path: Path) -> None:
    store = ProjectionStore(tmp_path / "p")
    store.close()
    assert_bounded(tmp_path / "p", column_families=10)


async def test_the_embedded_log_is_bounded(tmp_path: Path) -> None:
    log = EmbeddedLog(tmp_path / "log")
    await log.start()
    await log.ensure_topic("t", 1, {"cleanup.policy": "delete"})
    await log.close()
    assert_bounded(tmp_path / "log", column_families=2)
