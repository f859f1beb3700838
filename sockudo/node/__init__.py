"""Composition root and runtime of sockudo-node."""
