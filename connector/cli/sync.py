"""`refsync sync`, `run`, `ops`, `retry`, `runs` and `sandbox`: the CRMs and the outbox."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click

from refsync.connector.cli.base import EXIT_PROBLEMS, Context, crm_targets, handles_errors, print_json, print_table
from refsync.errors import ConfigError, InputError


@click.command()
@click.option("--once", is_flag=True, required=True, help="Run one full cycle and exit.")
@click.option("--dry-run", is_flag=True, help="Print what would be written, per record and field; write nothing.")
@click.option("--reconcile", "with_reconcile", is_flag=True, help="Also compare the ledger with the CRMs in full.")
@click.option("--json", "as_json", is_flag=True, help="Print the cycle's counts as JSON.")
@click.pass_obj
@handles_errors
def sync(obj: Context, once: bool, dry_run: bool, with_reconcile: bool, as_json: bool) -> None:
    """One full cycle: push attribution to every CRM, poll back, guard, push repairs, expire,
    tell the alert sinks and deliver partner webhooks."""
    from refsync.connector.sync import run_cycle, settings_from_config

    ledger = obj.ledger()
    settings = settings_from_config(obj.config, with_reconcile=with_reconcile)
    if dry_run:
        targets = crm_targets(obj)
        _dry_run(ledger, {n: t for n, t in targets.items() if t.ready}, settings, as_json)
        for target in targets.values():
            if not target.ready:
                click.echo(f"refsync: problem: {target.name}: not ready: {target.not_ready}", err=True)
        if not all(t.ready for t in targets.values()):
            sys.exit(EXIT_PROBLEMS)
        return
    targets = crm_targets(obj)
    with obj.worker(ledger):
        report = run_cycle(ledger, targets, settings)
    counts = report.counts()
    if "commissions" in report.after:
        counts["commissions"] = report.after["commissions"]  # with [compensation]: what this cycle did
    if as_json:
        print_json({**counts, "errors": report.errors})
    else:
        click.echo(f"planned {counts['planned']}, pushed {counts['pushed']} (created {counts['created']}, "
                   f"unchanged {counts['unchanged']}), failed {counts['failed']}, dead {counts['dead']}, "
                   f"{counts['api_calls']} API calls")
        for error in report.errors:
            click.echo(f"refsync: problem: {error}", err=True)
    if report.errors or counts["dead"]:
        sys.exit(EXIT_PROBLEMS)


def _dry_run(ledger, targets, settings, as_json: bool) -> None:  # type: ignore[no-untyped-def]
    from datetime import timedelta

    from refsync.connector.dryrun import DryRunAdapter
    from refsync.connector.push import push_round

    planned = []
    for target in targets.values():
        target.adapter = DryRunAdapter(target.adapter)
        push_round(ledger, target, "dry-run", limit=10**9, lease=timedelta(seconds=1),
                   max_attempts=settings.max_attempts, dry_run=True)
        planned += target.adapter.planned
    if as_json:
        print_json([{"crm": p.crm, "object": p.object, "action": p.action, "key": p.key, "values": p.values}
                     for p in planned])
        return
    for p in planned:
        click.echo(f"{p.crm} {p.object} {p.action} {p.key}:")
        for name, value in p.values.items():
            click.echo(f"    {name} = {value!r}")
    click.echo(f"dry run: {len(planned)} records would be written; nothing was written")


@click.command()
@click.pass_obj
@handles_errors
def run(obj: Context) -> None:
    """Run the daemon in the foreground until SIGTERM/SIGINT."""
    from refsync.connector.daemon import Daemon
    from refsync.connector.reconcile import ReconcileSettings
    from refsync.connector.sync import settings_from_config
    from refsync.connector.web.app import HttpSettings, parse_listen

    ledger = obj.ledger()  # refuses an unreachable or unmigrated ledger before anything starts
    daemon = obj.config.daemon
    targets = crm_targets(obj)  # refuses a broken mapping file
    settings = settings_from_config(obj.config)
    alerts = obj.config.alerts
    http = obj.config.http
    if http.listen:
        parse_listen(http.listen)  # a malformed address stops the start-up with the fix
    elif http.intake_token:
        raise ConfigError("http.intake_token is set but http.listen is \"\" (HTTP server disabled), so the "
                          "intake could not be reached; set a listen address or remove intake_token")
    # An intake token that does not resolve (variable unset, file missing) stops the start-up too:
    # an intake silently left off would lose the referrals sent to it.
    token = http.intake_token.resolve("http.intake_token", obj.config.base_dir) if http.intake_token else None
    from refsync.connector.web import settings_from_config as web_settings

    http_settings = HttpSettings(http.listen, token, obj.config.attribution.policy(),
                                 web=web_settings(obj.config))  # the partner portal and program dashboard
    with obj.worker(ledger):  # registered and beating until the scheduler stopped (connector/worker.py)
        Daemon(ledger, targets, settings, daemon.push_interval_seconds, daemon.poll_interval_seconds,
               daemon.reconcile_cron or None, ReconcileSettings(alerts.stale_after_days, alerts.won_lookback_days),
               http=http_settings, heartbeat_seconds=daemon.heartbeat_seconds, retention=obj.config.retention).run()


@click.command()
@click.option("--dead", is_flag=True, help="Only dead ops (they need a fix, then `refsync retry`).")
@click.option("--state", type=click.Choice(["pending", "in_flight", "done", "failed", "dead"]))
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
@handles_errors
def ops(obj: Context, dead: bool, state: str | None, limit: int, as_json: bool) -> None:
    """Outbound ops by state, with their last error."""
    rows = obj.ledger().ops(state="dead" if dead else state, limit=limit)
    if as_json:
        print_json(rows)
        return
    columns = ["id", "kind", "state", "crm", "referral", "attempts", "next attempt", "last error"]
    print_table(f"{len(rows)} ops", columns, [
        [o["id"], o["kind"], o["state"], o["crm"], o["referral_id"], o["attempts"], o["next_attempt_at"],
         f"{o['last_error']['code'] or o['last_error']['class']}: {o['last_error']['message']}"
         if o["last_error"] else ""] for o in rows])


@click.command()
@click.argument("op_ids", nargs=-1, type=int)
@click.option("--json", "as_json", is_flag=True, help="Print the requeued and refused ids as JSON.")
@click.pass_obj
@handles_errors
def retry(obj: Context, op_ids: tuple[int, ...], as_json: bool) -> None:
    """Requeue dead ops (all of them, or the given ids) after fixing their cause. An id the ledger
    does not know stops the command before anything is requeued (exit 2); an op that is not dead is
    left alone and reported (exit 1)."""
    from refsync.state.outbox import op_states, retry_dead

    ledger = obj.ledger()
    wanted = list(dict.fromkeys(op_ids))
    states = op_states(ledger, wanted) if wanted else {}
    unknown = [i for i in wanted if i not in states]
    if unknown:
        raise InputError(f"no op with id {', '.join(map(str, unknown))}; nothing was requeued "
                         "(`refsync ops --dead` lists the dead ops and their ids)")
    not_dead = {i: s for i, s in states.items() if s != "dead"}
    dead = [i for i in wanted if i not in not_dead]
    count = retry_dead(ledger, dead) if dead or not wanted else 0
    if as_json:
        print_json({"requeued": count, "not_dead": [{"id": i, "state": s} for i, s in not_dead.items()]})
    else:
        click.echo(f"{count} dead ops requeued")
        for op_id, state in not_dead.items():
            click.echo(f"refsync: problem: op {op_id} is {state}, not dead; left alone", err=True)
    if not_dead:
        sys.exit(EXIT_PROBLEMS)


@click.command()
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
@handles_errors
def runs(obj: Context, limit: int, as_json: bool) -> None:
    """The last runs of each job, with their counts."""
    rows = obj.ledger().runs(limit)
    if as_json:
        print_json(rows)
        return
    print_table(f"{len(rows)} runs", ["id", "job", "started", "finished", "status", "counts"],
           [[r["id"], r["job"], r["started_at"], r["finished_at"], r["status"], json.dumps(r["counts"])]
            for r in rows])


@click.command()
@click.option("--dir", "directory", type=click.Path(file_okay=False, path_type=Path), default=".sandbox",
              show_default=True, help="Where the sandbox keeps its CA and certificates.")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--salesforce-port", type=int, default=0, help="0 picks a free port.")
@click.option("--hubspot-port", type=int, default=0, help="0 picks a free port.")
@handles_errors
def sandbox(directory: Path, host: str, salesforce_port: int, hubspot_port: int) -> None:
    """Start both CRM emulators and print one JSON line with their URLs and credentials."""
    from refsync.adapters.sandbox.run import start_sandbox

    running = start_sandbox(directory, host=host, salesforce_port=salesforce_port, hubspot_port=hubspot_port)
    click.echo(json.dumps(running.info()), nl=True)
    sys.stdout.flush()
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        running.stop()
