"""Writes racing on PostgreSQL, where other processes commit between the statements of a transaction
(READ COMMITTED): a statement that waited for a row another transaction changed acts on its new row."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import asyncpg

from engine import operations
from engine.engine import Engine
from engine.orphans import prune_finished
from engine.registry import Registry
from engine.store import Stmt, fetch, run_batch
from models.schema import dsn
from tests.conftest import wait_for, wait_run

LONG_AGO = "2000-01-01 00:00:00+00:00"


async def test_a_run_requeued_while_the_prune_waits_for_it_is_kept(
    db: str, engine: Engine, define: Callable[..., Any], registry: Registry
) -> None:
    define("p", [{"key": "a", "call": "tests.stepfns:noop"}])
    run_id = await operations.start_run(registry.get("p"), {}, "t")
    await wait_run(run_id, "completed")
    await run_batch([Stmt("UPDATE runs SET finished_at = ? WHERE id = ?", (LONG_AGO, run_id))])
    other = await asyncpg.connect(dsn(db))  # another process, re-queuing the run (a rerun)
    try:
        rerun = other.transaction()
        await rerun.start()
        await other.execute("UPDATE runs SET status = 'queued', finished_at = NULL WHERE id = $1", run_id)
        prune = asyncio.ensure_future(prune_finished(30))
        # The prune's delete has picked the run and waits for the rerun's row lock.
        await wait_for(lambda: _waiting_for_a_lock(db), what="the prune to wait for the run's row")
        await rerun.commit()
        assert await prune == 0
    finally:
        await other.close()
    kept = await fetch(
        "SELECT (SELECT count(*) FROM runs WHERE id = ?) AS runs, count(*) AS steps FROM steps WHERE run_id = ?",
        (run_id, run_id),
    )
    assert kept == [{"runs": 1, "steps": 1}]


async def _waiting_for_a_lock(db: str) -> bool:
    rows = await fetch(
        "SELECT count(*) AS n FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
        " AND query LIKE 'DELETE FROM runs%'"
    )
    return bool(rows[0]["n"])
