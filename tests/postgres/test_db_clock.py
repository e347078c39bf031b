"""On PostgreSQL the times a process writes come from the database's clock, not its host's: a process whose
host clock is days off writes the same times as every other process of the database (status writes take
the server's clock in the statement; the rest, a retry's due time, an account's row, a prune's cutoff, the
server's clock as measured on open)."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from engine import auth, operations, orphans
from engine.db import current
from engine.db.postgres import PostgresDatabase
from engine.registry import Registry
from engine.settings import Settings
from engine.store import fetch
from tests import stepfns
from tests.conftest import engine_running, wait_for, wait_run
from tests.integration.served import PATIENCE_S, Workspace, shifted_clock

LATE = """\
name: late
steps:
  - key: a
    call: tests.stepfns:boom
    retries: 1
    retry_delay_s: 300
"""
SKEW = timedelta(days=3)
CLOSE = timedelta(minutes=10)  # far more than the test takes, far less than the skew


async def host_clock_off_by(skew: timedelta) -> PostgresDatabase:
    """This process's database, as if its host's clock were `skew` behind (measured again, as on open)."""
    database = current()
    assert isinstance(database, PostgresDatabase)
    database.host_clock = lambda: datetime.now(UTC) - skew
    assert abs(await database.sync_clock() - skew) < CLOSE
    return database


async def test_an_engine_with_a_skewed_clock_writes_the_database_clock(
    db: str, settings: Settings, define: Callable[..., Any], registry: Registry
) -> None:
    await host_clock_off_by(SKEW)
    stepfns.reset()
    define(
        "clock",
        [{"key": "a", "call": "tests.stepfns:blocking"}, {"key": "b", "call": "tests.stepfns:noop", "needs": ["a"]}],
    )
    async with engine_running(settings):
        run_id = await operations.start_run(registry.get("clock"), {}, "tester")
        claimed = await wait_for(lambda: _beat(run_id), what="the run to be claimed")
        # A heartbeat of the engine (every 0.2 s) while step a runs.
        await wait_for(lambda: _beat(run_id, after=claimed), what="a heartbeat after the claim")
        stepfns.RELEASE.set()
        assert await wait_run(run_id, "completed") == "completed"

    db_now: datetime = (await fetch("SELECT now() AS t"))[0]["t"]
    written = {
        **_times("run", await fetch("SELECT id, created_at, updated_at, started_at, finished_at FROM runs")),
        **_times("step", await fetch("SELECT key, updated_at FROM steps")),
        **_times("attempt", await fetch("SELECT step_id, started_at, finished_at FROM attempts")),
        **_times("event", await fetch("SELECT id, created_at FROM events")),
        **_times("worker", await fetch("SELECT id, started_at, lease_until FROM workers")),
        "heartbeat": claimed,
    }
    assert len(written) >= 4 + 2 + 4 + 6 + 1
    far = {what: t for what, t in written.items() if abs(db_now - t) > CLOSE}
    assert far == {}, f"written by the host's clock ({SKEW} behind the database's {db_now}): {far}"


async def test_retry_times_accounts_and_the_prune_cutoff_follow_the_database_clock(
    db: str, settings: Settings, define: Callable[..., Any], registry: Registry
) -> None:
    database = await host_clock_off_by(SKEW)
    stepfns.reset()
    define("late", [{"key": "a", "call": "tests.stepfns:boom", "retries": 1, "retry_delay_s": 300}])
    async with engine_running(settings):
        run_id = await operations.start_run(registry.get("late"), {}, "tester")
        retry_at = await wait_for(lambda: _retry_at(run_id), what="the retry to be planned")
        await auth.add_user("clocked", "a long enough password", "viewer")
        await operations.cancel_run(run_id, "tester")
        await wait_run(run_id, "cancelled")

    db_now: datetime = (await fetch("SELECT now() AS t"))[0]["t"]
    planned = retry_at - timedelta(seconds=300)
    assert abs(db_now - planned) < CLOSE, f"a retry planned by the host's clock ({SKEW} behind): due {retry_at}"
    [user] = await fetch("SELECT created_at FROM users WHERE name = ?", ("clocked",))
    assert abs(db_now - user["created_at"]) < CLOSE, f"an account row dated by the host's clock: {user}"
    assert abs(database.now() - db_now) < CLOSE

    # A run that finished a day ago (database clock) is kept with two days' retention, whatever the host
    # says; a host two days ahead of the database would otherwise take it as three days old.
    await host_clock_off_by(-2 * SKEW / 3)
    await fetch("UPDATE runs SET finished_at = now() - interval '1 day' WHERE id = ?", (run_id,))
    assert await orphans.prune_finished(retention_days=2) == 0
    assert await orphans.prune_finished(retention_days=0.5) == 1


async def _retry_at(run_id: int) -> datetime | None:
    rows = await fetch("SELECT retry_at FROM steps WHERE run_id = ? AND retry_at IS NOT NULL", (run_id,))
    return rows[0]["retry_at"] if rows else None


async def _beat(run_id: int, after: datetime | None = None) -> datetime | None:
    rows = await fetch("SELECT heartbeat_at FROM runs WHERE id = ? AND status = 'running'", (run_id,))
    beat: datetime | None = rows[0]["heartbeat_at"] if rows else None
    return beat if beat is not None and (after is None or beat > after) else None


def _times(table: str, rows: list[dict[str, Any]]) -> dict[str, datetime]:
    """Every time of the rows, named by table, row and column."""
    out = {}
    for row in rows:
        key, *_ = row.values()
        for column, value in row.items():
            if isinstance(value, datetime):
                out[f"{table} {key} {column}"] = value
    return out


def test_processes_on_a_host_three_days_behind_write_the_database_clock(tmp_path: Path) -> None:
    """Real processes whose host clock is three days behind (libfaketime): a `users add` and a headless run
    that plans a retry. Every time they write is the database's."""
    host_behind = shifted_clock("-3d")
    ws = Workspace(tmp_path, workflows={"late": LATE}, env=host_behind)
    ws.migrate_for_serve()
    behind = ws.cli("users", "add", "clocked", "--role", "viewer", input="a long enough password\n")
    assert behind.returncode == 0, behind.stdout + behind.stderr
    run = ws.start_cli("run", "late")
    try:
        deadline = time.monotonic() + PATIENCE_S
        while not (planned := ws.sql("SELECT retry_at FROM steps WHERE retry_at IS NOT NULL")):
            assert run.poll() is None, run.communicate()
            assert time.monotonic() < deadline, "no retry was planned"
            time.sleep(0.1)
    finally:
        run.terminate()
        run.communicate(timeout=PATIENCE_S)
    [row] = ws.sql("SELECT now() AS t, (SELECT created_at FROM users WHERE name = 'clocked') AS user_created")
    written = {
        "the user's row": row["user_created"],
        "the retry's planning": planned[0]["retry_at"] - timedelta(seconds=300),
        **_times("run", ws.sql("SELECT id, created_at, started_at FROM runs")),
        **_times("event", ws.sql("SELECT id, created_at FROM events")),
    }
    far = {what: t for what, t in written.items() if abs(row["t"] - t) > CLOSE}
    assert far == {}, f"written by a host clock 3 days behind the database's {row['t']}: {far}"
