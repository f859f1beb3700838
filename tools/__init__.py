"""sockudo-tools: the operator CLI."""
