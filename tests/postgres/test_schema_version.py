"""On PostgreSQL several processes share one database: `migrate` is a step of its own, safe to run from
several processes at once, and a server refuses a schema its code does not expect."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

from models.db import tortoise_config
from models.schema import schema_mismatch
from tests.integration.served import ROOT, Workspace, free_port


def serve_once(ws: Workspace) -> subprocess.CompletedProcess[str]:
    """`main.py serve` on the workspace's database, expected to refuse and exit."""
    return subprocess.run(
        [sys.executable, "main.py", "serve", "--port", str(free_port())],
        cwd=ROOT,
        env=ws.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_serve_refuses_a_database_that_was_not_migrated_and_changes_nothing(tmp_path: Path) -> None:
    ws = Workspace(tmp_path, bundled=True)
    done = serve_once(ws)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "the database schema is not up to date" in done.stderr
    assert "uv run main.py migrate" in done.stderr
    assert ws.tables() == set()


def test_four_migrates_at_once_all_succeed_and_apply_each_migration_once(tmp_path: Path) -> None:
    ws = Workspace(tmp_path, bundled=True)
    procs = [ws.start_cli("migrate") for _ in range(4)]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, outputs
    said = sorted("applied" if out.startswith("applied:") else out.strip() for out, _ in outputs)
    assert said == ["applied", "database is up to date", "database is up to date", "database is up to date"]
    assert {"runs", "steps", "attempts", "events", "users"} <= ws.tables()
    assert asyncio.run(schema_mismatch(tortoise_config(ws.db_url))) == ([], [])
    applied = ws.sql("SELECT app, name, count(*) AS n FROM tortoise_migrations GROUP BY app, name")
    assert applied and all(row["n"] == 1 for row in applied)


def test_serve_refuses_a_database_migrated_by_a_newer_version(tmp_path: Path) -> None:
    ws = Workspace(tmp_path, bundled=True)
    assert ws.cli("migrate").returncode == 0
    ws.sql("INSERT INTO tortoise_migrations (app, name, applied_at) VALUES ('models', '9999_future', now())")
    done = serve_once(ws)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "migrated by a newer version of Stepdeck (models.9999_future)" in done.stderr
