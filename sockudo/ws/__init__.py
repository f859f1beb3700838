"""WebSocket edge (protocol issues)."""
