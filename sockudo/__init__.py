"""sockudo-py: a Sockudo-compatible realtime node on an append-only log."""
