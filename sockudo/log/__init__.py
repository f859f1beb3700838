"""Append-only log backends behind one contract."""
