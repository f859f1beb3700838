"""Read models over the projection store (no writes)."""
