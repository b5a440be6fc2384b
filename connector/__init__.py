"""refsync connector."""
