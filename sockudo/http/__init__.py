"""Signed HTTP API edge."""
