"""Projections: pure folds of the event log and their RocksDB store."""
