"""Memory and disk bounds for each RocksDB database the node opens (the embedded log, the
projection).

Unbounded, RocksDB gives every column family 2 write buffers of 64 MiB and a 32 MiB block
cache of its own, and keeps the write-ahead log until every column family with data in its
oldest file has flushed. With about fifteen column families and churn that rewrites a few
keys (presence, checkpoints), a node's memory grew by megabytes per thousand joins and its
WAL by hundreds of MiB, and a restart replayed all of it.
"""

from __future__ import annotations

from typing import Final

from rocksdict import BlockBasedOptions, Cache, Options

WRITE_BUFFERS_BYTES: Final = 32 << 20
"""All memtables of one database together; past it RocksDB flushes the largest."""

WAL_BYTES: Final = 64 << 20
"""Write-ahead log kept before the column families that pin its oldest file are flushed."""

BLOCK_CACHE_BYTES: Final = 16 << 20
"""One block cache per database, shared by its column families."""


def bounded(opts: Options) -> Options:
    """``opts`` (a database's options) with the write-buffer and WAL bounds set."""
    opts.set_db_write_buffer_size(WRITE_BUFFERS_BYTES)
    opts.set_max_total_wal_size(WAL_BYTES)
    return opts


def block_cache() -> Cache:
    """A cache to share among one database's column families (:func:`table_options`)."""
    return Cache(BLOCK_CACHE_BYTES)


def table_options(cache: Cache) -> BlockBasedOptions:
    """Block-based table options reading through ``cache``."""
    table = BlockBasedOptions()
    table.set_block_cache(cache)
    # Index and filter blocks in the cache too: held per table file outside it, they grow
    # with the data. The newest files' stay pinned, as reads of recent data need them.
    table.set_cache_index_and_filter_blocks(True)
    table.set_pin_l0_filter_and_index_blocks_in_cache(True)
    return table
