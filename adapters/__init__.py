"""refsync adapters."""
