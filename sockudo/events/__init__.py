"""Typed events and their Avro codec (a leaf package)."""
