"""The reads of pages and jobs stay index-backed at 100k runs: checked by SQLite's query plans (which
do not depend on machine speed), and the search count is bounded."""

from __future__ import annotations

import pytest

from engine.db.base import Stmt
from engine.store import fetch, run_batch
from ui import run_list
from ui.run_list import RunFilter

pytestmark = pytest.mark.usefixtures("db")


async def plan(sql: str, params: tuple[object, ...] = ()) -> str:
    rows = await fetch("EXPLAIN QUERY PLAN " + sql, params)
    return " | ".join(str(r["detail"]) for r in rows)


async def add_runs(count: int, workflow: str = "wf", inputs: str = '{"topic": "bees"}') -> None:
    now = "2026-01-01T00:00:00+00:00"
    await run_batch(
        [
            Stmt(
                "INSERT INTO runs (workflow, status, inputs, definition, actor, recoveries, created_at, updated_at)"
                " VALUES (?, 'completed', ?, '{}', 'tester', 0, ?, ?)",
                many=[(workflow, inputs, now, now)] * count,
            )
        ]
    )


@pytest.mark.sqlite_only
async def test_the_runs_list_filtered_by_status_is_read_in_id_order_from_an_index() -> None:
    detail = await plan("SELECT r.id FROM runs r WHERE r.status = ? ORDER BY r.id DESC LIMIT 50", ("completed",))
    assert "runs_status_id" in detail, detail
    assert "TEMP B-TREE" not in detail, detail  # no sort of every matching run per refresh


@pytest.mark.sqlite_only
async def test_the_prune_and_run_deletion_use_indexes() -> None:
    prune = await plan("SELECT id FROM runs WHERE finished_at < ?", ("2026-01-01",))
    assert "runs_finished_at" in prune, prune
    for table in ("llm_usage", "schedule_fires"):
        detail = await plan(f"SELECT id FROM {table} WHERE run_id = ?", (1,))
        assert f"{table}_run_id" in detail, detail


async def test_a_search_counts_its_matches_up_to_the_cap() -> None:
    await add_runs(run_list.SEARCH_COUNT_CAP + 20)
    await add_runs(3, workflow="other", inputs='{"topic": "wasps"}')
    assert await run_list.count_runs(RunFilter(search="bees")) == run_list.SEARCH_COUNT_CAP + 1
    assert await run_list.count_runs(RunFilter(search="wasps")) == 3  # below the cap: exact
    assert await run_list.count_runs(RunFilter()) == run_list.SEARCH_COUNT_CAP + 23  # no search: exact
