"""chainrule: the application layer (CLI, benchmarks)."""

__version__ = "0.1.0"  # keep equal to pyproject's [project] version
