"""A `migrate` killed part-way on PostgreSQL (kill -9 inside a migration, or between two) leaves a database
that the next `migrate` finishes and every command then opens; migrates started together wait for each other;
a database an older version left half-migrated is repaired with a message. Real processes, killed at named
points (`STEPDECK_TEST_PAUSE_AT`, models/testhooks.py), not at a moment guessed from the clock."""

from __future__ import annotations

import asyncio
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from models.db import tortoise_config
from models.schema import MIGRATION_LOCK_KEY, schema_mismatch
from models.testhooks import PAUSE_AT
from tests.integration.served import QUICK_MODULES, QUICK_WORKFLOWS, ROOT, Workspace, serving
from tests.postgres.test_schema_version import serve_once

MIGRATIONS = sorted(p.stem for p in (ROOT / "models" / "migrations").glob("0*.py"))
TABLES = {"runs", "steps", "attempts", "events", "llm_usage", "users", "api_tokens", "audit", "schedule_states"}


def workspace(directory: Path) -> Workspace:
    return Workspace(directory, QUICK_WORKFLOWS, QUICK_MODULES)


class Paused:
    """`main.py migrate` started with a pause point, until it says it stopped there."""

    def __init__(self, ws: Workspace, point: str) -> None:
        self.point = point
        self.proc = subprocess.Popen(
            [sys.executable, "main.py", "migrate"],
            cwd=ROOT,
            env={**ws.env, PAUSE_AT: point},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        said: list[str] = []
        try:
            while True:
                line = self.lines.get(timeout=90)  # a start on a starved machine; the pause itself never ends
                if line is None:
                    raise AssertionError(f"migrate ended before {point}:\n{''.join(said)}")
                said.append(line)
                if f"stepdeck: paused at {point} " in line:
                    return
        except BaseException:
            self.kill()
            raise

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.put(line)
        self.lines.put(None)

    def kill(self) -> None:
        """kill -9, and wait until it is gone."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)
        self.reader.join(timeout=30)
        assert self.proc.stderr is not None
        self.proc.stderr.close()


def recorded(ws: Workspace) -> list[str]:
    rows = ws.sql("SELECT name, count(*) AS n FROM tortoise_migrations WHERE app = 'models' GROUP BY name")
    assert all(r["n"] == 1 for r in rows), rows
    return sorted(r["name"] for r in rows)


def applied_by(out: str) -> list[str]:
    """The migrations a `migrate` said it applied (`applied: models.0001_initial, …`)."""
    if not out.startswith("applied: "):
        return []
    return [name.strip().removeprefix("models.") for name in out.removeprefix("applied: ").split(",")]


def assert_opens_everywhere(ws: Workspace) -> None:
    """Up to date, each migration recorded once, every table there; `check` clean; a server starts."""
    assert asyncio.run(schema_mismatch(tortoise_config(ws.db_url))) == ([], [])
    assert recorded(ws) == MIGRATIONS
    assert ws.tables() >= TABLES
    done = ws.cli("check")
    assert done.returncode == 0, done.stdout + done.stderr
    assert not any(said in done.stderr for said in ("Traceback", "already exists", "half-migrated")), done.stderr
    with serving(ws) as server:
        assert server.client.get("/api/health").status_code == 200
        run_id = server.start_run("quick")
        assert server.wait_run(run_id, "completed", timeout_s=60)["status"] == "completed"


def killed_at(ws: Workspace, moment: str, migration: str) -> None:
    """`main.py migrate` killed with -9 at a named point of a migration."""
    paused = Paused(ws, f"migrate:{moment}:models.{migration}")
    paused.kill()
    assert paused.proc.returncode == -signal.SIGKILL


@pytest.mark.timeout(600)  # ten process starts (186 s with a load of 25 on two cores)
def test_migrates_killed_part_way_leave_whole_migrations_the_next_one_finishes(tmp_path: Path) -> None:
    ws = workspace(tmp_path)
    # Inside the first migration: nothing of it stays, not even a table without its record.
    killed_at(ws, "applied", MIGRATIONS[0])
    assert recorded(ws) == []
    assert ws.tables() <= {"tortoise_migrations"}
    # A server refuses such a database and says what to do.
    refused = serve_once(ws)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "the database schema is not up to date" in refused.stderr
    assert "Traceback" not in refused.stderr
    # Between two migrations; inside one with hand-written SQL; inside the last: each later migrate goes on
    # from where the one before it was cut off.
    killed_at(ws, "committed", "0002_llm")
    assert recorded(ws) == MIGRATIONS[:2]
    killed_at(ws, "applied", "0006_retries_notifications")
    assert recorded(ws) == MIGRATIONS[: MIGRATIONS.index("0006_retries_notifications")]
    killed_at(ws, "applied", MIGRATIONS[-1])
    assert recorded(ws) == MIGRATIONS[:-1]

    finished = ws.cli("migrate")
    assert finished.returncode == 0, finished.stdout + finished.stderr
    assert "already exists" not in finished.stdout + finished.stderr
    assert applied_by(finished.stdout) == MIGRATIONS[-1:]
    assert_opens_everywhere(ws)


@pytest.mark.timeout(600)
def test_migrates_started_while_one_holds_the_lock_wait_for_it_and_finish_after_it_is_killed(tmp_path: Path) -> None:
    ws = workspace(tmp_path)
    first = Paused(ws, "migrate:applied:models.0003_users")
    others = [ws.start_cli("migrate") for _ in range(3)]
    try:
        # All three wait on the advisory lock the paused one holds (seen in pg_locks, not guessed from time).
        deadline = time.monotonic() + 90
        while waiting_for_the_lock(ws) < 3:
            assert time.monotonic() < deadline, "the other migrates never queued on the lock"
            assert all(p.poll() is None for p in others), [p.communicate() for p in others if p.poll() is not None]
            time.sleep(0.05)
        first.kill()
        outputs = [p.communicate(timeout=120) for p in others]
    finally:
        for p in others:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=30)
    assert [p.returncode for p in others] == [0, 0, 0], outputs
    assert not any("already exists" in out + err or "Traceback" in err for out, err in outputs), outputs
    said = sorted(applied_by(out) for out, _ in outputs)
    assert said == [[], [], MIGRATIONS[MIGRATIONS.index("0003_users") :]], outputs
    assert_opens_everywhere(ws)


def waiting_for_the_lock(ws: Workspace) -> int:
    rows = ws.sql(
        "SELECT count(*) AS n FROM pg_locks l JOIN pg_database d ON d.oid = l.database "
        "WHERE l.locktype = 'advisory' AND NOT l.granted AND d.datname = current_database() "
        "AND ((l.classid::bigint << 32) | l.objid::bigint) = ?",
        (MIGRATION_LOCK_KEY,),
    )
    n: int = rows[0]["n"]
    return n


@pytest.mark.timeout(600)
def test_a_database_left_half_migrated_by_an_older_version_is_repaired_with_a_message(tmp_path: Path) -> None:
    # What Tortoise's own executor left when cut off between a migration's tables and its record: the tables
    # of the later migrations are there, their records are not.
    ws = workspace(tmp_path)
    assert ws.cli("migrate").returncode == 0
    cut = MIGRATIONS[2]
    ws.sql("DELETE FROM tortoise_migrations WHERE name >= ?", (cut,))
    repaired = ws.cli("migrate")
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert f"half-migrated (models.{cut}" in repaired.stderr
    assert f"repaired migration models.{cut}" in repaired.stderr
    assert applied_by(repaired.stdout) == MIGRATIONS[2:]
    assert_opens_everywhere(ws)  # whose `check` says nothing more about it
