"""On PostgreSQL the times an engine writes come from the database's clock, not its host's: an engine whose
host clock is days off writes the same times as every other process of the database."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import pytest

from engine import operations, records
from engine.registry import Registry
from engine.settings import Settings
from engine.store import fetch
from tests import stepfns
from tests.conftest import engine_running, wait_for, wait_run

SKEW = timedelta(days=3)
CLOSE = timedelta(minutes=10)  # far more than the test takes, far less than the skew


async def test_an_engine_with_a_skewed_clock_writes_the_database_clock(
    db: str, settings: Settings, define: Callable[..., Any], monkeypatch: pytest.MonkeyPatch, registry: Registry
) -> None:
    host_clock = records.utcnow
    monkeypatch.setattr(records, "utcnow", lambda: host_clock() - SKEW)
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
