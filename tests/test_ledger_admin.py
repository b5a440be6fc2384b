"""`refsync ledger copy` (a SQLite ledger into PostgreSQL, for a second replica) and `refsync ledger
backup` (SQLite's online backup), on a ledger with a real history: the demo's (referrals imported,
pushed to both sandbox CRMs over HTTP, a merge, a duplicate, a conversion, a restored overwrite)."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from refsync.connector.cli import cli
from refsync.state import db
from refsync.state.models import Base

REFSYNC = str(Path(sys.executable).with_name("refsync"))
HEADER = "partner,prospect_email,prospect_company,prospect_name,source,medium,campaign,submitted_at,link,external_id"


@pytest.fixture(scope="module")
def demo_ledger(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The config of a SQLite ledger `refsync demo` filled (module-wide: the tests only read it)."""
    folder = tmp_path_factory.mktemp("demo")
    result = subprocess.run([REFSYNC, "demo", "--dir", str(folder)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return folder / "refsync.toml"


def refsync(config: Path, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, ["--config", str(config), *args], catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def config_for(url: str, beside: Path, name: str) -> Path:
    """The demo's config with another ledger URL."""
    text = beside.read_text()
    path = beside.with_name(name)
    path.write_text(text.replace('url = "sqlite:///refsync.db"', f'url = "{url}"', 1))
    assert path.read_text() != text
    return path


def every_row(url: str) -> dict[str, list[dict[str, Any]]]:
    """Every ledger table's rows, in key order, as the models read them."""
    engine = db.make_engine(url)
    try:
        with engine.connect() as connection:
            return {t.name: [dict(r) for r in connection.execute(
                        select(t).order_by(*t.primary_key.columns)).mappings()]
                    for t in Base.metadata.sorted_tables}
    finally:
        engine.dispose()


def source_url(config: Path) -> str:
    return f"sqlite:///{config.parent / 'refsync.db'}"


@pytest.mark.postgres
def test_copy_moves_a_sqlite_ledger_into_postgresql_with_every_row_and_id(demo_ledger: Path, pg_url: str) -> None:
    code, out, err = refsync(demo_ledger, "ledger", "copy", "--to", pg_url, "--json")
    assert code == 0, err
    report = json.loads(out)
    source = every_row(source_url(demo_ledger))
    assert report["tables"] == {name: len(rows) for name, rows in source.items()}
    assert report["tables"]["referrals"] == 7 and report["tables"]["audit_events"] > 0
    assert report["tables"]["sync_ops"] > 0 and report["tables"]["crm_links"] > 0
    assert every_row(pg_url) == source  # ids, self-references (merged, superseded), times, JSON

    pg_config = config_for(pg_url, demo_ledger, "pg.toml")
    code, out, err = refsync(pg_config, "status", "--json")
    code_sqlite, out_sqlite, _ = refsync(demo_ledger, "status", "--json")
    assert (code, json.loads(out)) == (code_sqlite, json.loads(out_sqlite)), err
    assert json.loads(out)["ops"]["done"] > 0

    # The sequences moved past the copied ids: new rows of every kind go in after them.
    more = demo_ledger.with_name("more.csv")
    more.write_text(HEADER + "\nacme-partners,new.one@example.org,Newco,New One,partner,referral,q4,"
                    "2026-11-02T00:00:00Z,,copy-new-1\n")
    code, out, err = refsync(pg_config, "import", str(more))
    assert code == 0 and "1 imported" in out, err
    after = every_row(pg_url)
    for table in ("status_transitions", "audit_events"):
        assert max(r["id"] for r in after[table]) > max(r["id"] for r in source[table])


@pytest.mark.postgres
def test_copy_refuses_a_target_that_holds_rows_and_leaves_it_alone(demo_ledger: Path, pg_url: str) -> None:
    assert refsync(demo_ledger, "ledger", "copy", "--to", pg_url)[0] == 0
    before = every_row(pg_url)
    code, _, err = refsync(demo_ledger, "ledger", "copy", "--to", pg_url)
    assert code == 2
    assert err.startswith("refsync: error: the target ledger") and "is not empty: " in err and "referrals (7)" in err
    assert every_row(pg_url) == before


def test_copy_into_a_new_database_creates_its_schema_first(demo_ledger: Path, tmp_path: Path) -> None:
    target = f"sqlite:///{tmp_path / 'fresh.db'}"
    code, out, err = refsync(demo_ledger, "ledger", "copy", "--to", target)
    assert code == 0, err
    assert "every table's count matches" in out
    assert every_row(target) == every_row(source_url(demo_ledger))
    assert refsync(config_for(target, demo_ledger, "fresh.toml"), "referrals", "list", "--json")[0] == 0


def test_copy_warns_when_a_refsync_process_still_works_on_the_source(demo_ledger: Path, tmp_path: Path) -> None:
    from refsync.connector.worker import registered_worker
    from refsync.state.ledger import Ledger

    ledger = Ledger.open(source_url(demo_ledger))
    try:
        with registered_worker(ledger, 5) as worker:
            code, _, err = refsync(demo_ledger, "ledger", "copy", "--to", f"sqlite:///{tmp_path / 'copy.db'}")
    finally:
        ledger.close()
    assert code == 0
    assert err.startswith("refsync: warning: 1 refsync process(es) work on this ledger") and worker in err


def test_copy_refuses_itself_a_malformed_url_and_an_unreachable_target_without_its_password(demo_ledger: Path) -> None:
    code, _, err = refsync(demo_ledger, "ledger", "copy", "--to", source_url(demo_ledger))
    assert code == 2 and "is the configured ledger itself" in err
    code, _, err = refsync(demo_ledger, "ledger", "copy", "--to", "not a url")
    assert code == 2 and "is not a database URL" in err
    code, _, err = refsync(demo_ledger, "ledger", "copy", "--to",
                           "postgresql+psycopg://refsync:s3cret-pw@127.0.0.1:1/refsync")
    assert code == 2 and err.count("\n") == 1
    assert "cannot reach the target ledger postgresql+psycopg://refsync:***@127.0.0.1:1/refsync" in err
    assert "s3cret-pw" not in err


def test_backup_copies_a_sqlite_ledger_in_use_without_what_is_not_committed(demo_ledger: Path,
                                                                           tmp_path: Path) -> None:
    backup = tmp_path / "backup.db"
    writer = sqlite3.connect(demo_ledger.parent / "refsync.db", isolation_level=None, timeout=30)
    try:
        writer.execute("BEGIN IMMEDIATE")  # a writer in the middle of its transaction
        writer.execute("INSERT INTO partners (code, name, created_at) VALUES ('uncommitted', 'U', '2026-11-01')")
        code, out, err = refsync(demo_ledger, "ledger", "backup", "--to", str(backup), "--json")
    finally:
        writer.execute("ROLLBACK")
        writer.close()
    assert code == 0, err
    report = json.loads(out)
    assert report["backup"] == str(backup) and report["bytes"] == backup.stat().st_size and report["schema"]
    assert backup.stat().st_mode & 0o777 == 0o600  # the ledger holds prospects' names and emails
    assert every_row(f"sqlite:///{backup}") == every_row(source_url(demo_ledger))
    backed_up = config_for(f"sqlite:///{backup}", demo_ledger, "backup.toml")
    code, out, _ = refsync(backed_up, "partners", "list", "--json")
    assert code == 0 and "uncommitted" not in out and "acme-partners" in out

    size = backup.stat().st_size
    code, _, err = refsync(demo_ledger, "ledger", "backup", "--to", str(backup))
    assert code == 2 and "already exists" in err and backup.stat().st_size == size
    assert not [p.name for p in tmp_path.iterdir() if "partial" in p.name]  # no partial file left behind


@pytest.mark.postgres
def test_backup_of_a_postgresql_ledger_points_to_pg_dump(pg_url: str, tmp_path: Path) -> None:
    config = tmp_path / "refsync.toml"
    config.write_text(f'[ledger]\nurl = "{pg_url}"\n')
    code, _, err = refsync(config, "ledger", "backup", "--to", str(tmp_path / "b.db"))
    assert code == 2 and "pg_dump" in err and not (tmp_path / "b.db").exists()
