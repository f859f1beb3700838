"""Push notifications (push issue)."""
