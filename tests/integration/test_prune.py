"""The prune job deletes old finished runs with everything they own, and nothing else."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from engine import operations
from engine.engine import Engine
from engine.orphans import prune_finished
from engine.registry import Registry
from engine.store import Stmt, fetch, run_batch
from tests.conftest import wait_run

Define = Callable[..., Any]
LONG_AGO = "2000-01-01 00:00:00+00:00"


async def _count(table: str, run_id: int) -> int:
    column = "id" if table == "runs" else "run_id"
    return int((await fetch(f"SELECT count(*) AS n FROM {table} WHERE {column} = ?", (run_id,)))[0]["n"])


async def test_prune_deletes_old_finished_runs_and_keeps_the_rest(
    engine: Engine, define: Define, registry: Registry
) -> None:
    define("p", [{"key": "a", "call": "tests.stepfns:noop"}])
    define("w", [{"key": "a", "call": "tests.stepfns:alternatives", "alternatives": 2}])
    old_done = [await operations.start_run(registry.get("p"), {}, "t") for _ in range(5)]
    recent = await operations.start_run(registry.get("p"), {}, "t")
    waiting = await operations.start_run(registry.get("w"), {}, "t")
    for run_id in [*old_done, recent]:
        await wait_run(run_id, "completed")
    await wait_run(waiting, "waiting")
    marks = ", ".join("?" for _ in old_done)
    await run_batch([Stmt(f"UPDATE runs SET finished_at = ? WHERE id IN ({marks})", (LONG_AGO, *old_done))])
    await run_batch([Stmt("UPDATE runs SET created_at = ? WHERE id = ?", (LONG_AGO, waiting))])

    assert await prune_finished(0) == 0  # 0 keeps everything
    assert await prune_finished(30, batch=2) == 5  # several small batches
    for run_id in old_done:
        assert [await _count(t, run_id) for t in ("runs", "steps", "attempts", "events")] == [0, 0, 0, 0]
    assert await _count("runs", recent) == 1
    assert await _count("runs", waiting) == 1  # not finished: never pruned, however old
    assert await prune_finished(30) == 0  # idempotent
