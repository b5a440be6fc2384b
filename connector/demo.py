"""`refsync demo`: the whole story on a laptop, against an embedded SQLite ledger.

It writes its own config under ``.demo/`` (the ledger lives there too), imports the shipped sample
referrals, and prints what the ledger now knows. It grows with the sync engine.
"""

from __future__ import annotations

from pathlib import Path

import click

from connector.cli_support import run_cli

SAMPLE = Path(__file__).resolve().parent.parent / "examples" / "referrals.csv"


def demo_config(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    config = directory / "refsync.toml"
    config.write_text(
        "# Written by `refsync demo`.\n"
        "[ledger]\n"
        'url = "sqlite:///refsync.db"\n'
        "[attribution]\n"
        'model = "first_touch"\n'
        'on_duplicate = "flag"\n'
        "[logging]\n"
        'level = "warning"\n'
    )
    return config


def run_demo(directory: Path, sample: Path = SAMPLE) -> int:
    for stale in directory.glob("refsync.db*"):
        stale.unlink()
    config = demo_config(directory)
    steps = [
        ("Create the ledger", ["init"]),
        ("Import the sample referrals (with a duplicate prospect)", ["import", str(sample)]),
        ("Import them again: nothing changes", ["import", str(sample)]),
        ("Referrals and their attribution", ["referrals", "list"]),
        ("Partners", ["partners", "list"]),
    ]
    for title, args in steps:
        click.secho(f"\n== {title}: refsync {' '.join(args)}", bold=True)
        code = run_cli(["--config", str(config), *args])
        if code not in (0,):
            click.echo(f"demo step failed with exit code {code}", err=True)
            return code
    click.secho(f"\nDone. The demo ledger is {directory / 'refsync.db'}; explore it with "
                f"`refsync --config {config} referrals list --json`.", bold=True)
    return 0
