"""refsync state."""
