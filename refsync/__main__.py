"""`python -m refsync`: the same as the `refsync` command."""

from refsync.connector.cli import main

main()
