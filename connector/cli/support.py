"""Running the CLI in-process (the demo's steps, tests) and getting its exit code."""

from __future__ import annotations


def run_cli(args: list[str]) -> int:
    from refsync.connector.cli import cli

    try:
        cli.main(args=args, prog_name="refsync", standalone_mode=False)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0
