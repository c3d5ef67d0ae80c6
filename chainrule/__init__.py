"""chainrule: the application layer (CLI, benchmarks)."""
