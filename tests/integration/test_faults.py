"""Faults around the engine: a database that refuses writes, poisoned batches, steps that try to
exit the process, cancellation storms. None of them may leave a run looking busy."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import pytest
from tortoise import connections

from engine import operations, orphans, queries, records, step_runner, transitions
from engine.db import current
from engine.db.postgres import PostgresDatabase
from engine.db.sqlite import SqliteDatabase
from engine.engine import Engine
from engine.errors import Conflict
from engine.registry import Registry
from engine.settings import Settings
from engine.store import BatchResult, Stmt, fetch, run_batch, run_batches
from tests import stepfns
from tests.conftest import holding_lease, run_status, step_of, wait_for, wait_run

Define = Callable[..., Any]


def _query_only(on: bool) -> None:
    # A real refusal of every write by the database: SQLite's "attempt to write a readonly database" for
    # the engine's writer, PostgreSQL's "cannot execute UPDATE in a read-only transaction".
    database = current()
    if isinstance(database, PostgresDatabase):
        database.refuse_writes(on)
        return
    assert isinstance(database, SqliteDatabase)
    database.pragma("query_only", "ON" if on else "OFF")


@pytest.fixture
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(step_runner, "WRITE_RETRY_DELAYS_S", (0.01, 0.01))


@pytest.mark.usefixtures("quick_retries")
async def test_a_database_refusing_the_outcome_ends_in_a_failed_run_not_a_busy_one(
    engine: Engine, settings: Settings, define: Define, registry: Registry
) -> None:
    define("fragile", [{"key": "a", "call": "tests.stepfns:blocking"}, {"key": "b", "call": "tests.stepfns:noop"}])
    run_id = await operations.start_run(registry.get("fragile"), {}, "tester")
    await wait_for(lambda: _step_is(run_id, "a", "running"), 5, "step a running")
    _query_only(True)
    stepfns.RELEASE.set()  # the step finishes, but its completion cannot be written
    await wait_for(lambda: _no_driver(engine, run_id), 5, "the driver to give up")
    _query_only(False)
    # Its driver is gone and its heartbeat stops: the sweep (here, as the engine's own job) fails it.
    await asyncio.sleep(settings.stale_after_s + 0.2)
    failed = await orphans.recover_orphans(settings, engine.owner)
    assert [v.run_id for v in failed] == [run_id]
    assert await run_status(run_id) == "failed"
    run = (await queries.run_detail(run_id)).to_json()
    assert run["error"] is not None
    assert "driver in this engine stopped" in run["error"]
    assert all(s["status"] != "running" for s in run["steps"])


@pytest.mark.usefixtures("quick_retries")
async def test_a_database_refusing_one_write_for_a_moment_is_retried(
    engine: Engine, define: Define, monkeypatch: pytest.MonkeyPatch, registry: Registry
) -> None:
    define("flaky-db", [{"key": "a", "call": "tests.stepfns:blocking"}, {"key": "b", "call": "tests.stepfns:noop"}])
    run_id = await operations.start_run(registry.get("flaky-db"), {}, "tester")
    await wait_for(lambda: _step_is(run_id, "a", "running"), 5, "step a running")
    original = transitions.complete_step_and_start
    calls = 0

    async def refuse_once(*args: Any, **kwargs: Any) -> Any:
        # The completion in the step's thread was refused; the engine writes it again from the event
        # loop, where it is refused once more, then the database takes writes again.
        nonlocal calls
        if args[0].ref.key != "a":
            return await original(*args, **kwargs)
        calls += 1
        try:
            return await original(*args, **kwargs)
        finally:
            _query_only(False)

    monkeypatch.setattr(transitions, "complete_step_and_start", refuse_once)
    _query_only(True)
    stepfns.RELEASE.set()
    assert await wait_run(run_id, "completed", "failed") == "completed"
    assert calls == 2  # refused on the loop once (after the thread), then written


async def test_a_batch_the_database_refuses_fails_alone_in_a_group_commit(db: str) -> None:
    await run_batch([Stmt("CREATE TABLE probe (v TEXT NOT NULL)")])
    good = [Stmt("INSERT INTO probe (v) VALUES (?)", ("one",))]
    poisoned = [Stmt("INSERT INTO probe (v) VALUES (?)", ("\ud800",))]  # neither database can encode it
    also_good = [Stmt("INSERT INTO probe (v) VALUES (?)", ("two",))]
    results = await run_batches([good, poisoned, also_good])
    refusal = "UnicodeEncodeError" if current().kind == "sqlite" else "DataError"  # asyncpg wraps it
    assert [type(r).__name__ for r in results] == ["BatchResult", refusal, "BatchResult"]
    rows = await connections.get("default").execute_query_dict("SELECT v FROM probe ORDER BY v")
    assert [r["v"] for r in rows] == ["one", "two"]


async def test_a_batch_whose_guard_fails_part_way_leaves_nothing_in_a_group_commit(db: str) -> None:
    """A batch that wrote before its guard failed is undone alone; the group's other batches commit."""
    await run_batch([Stmt("CREATE TABLE probe (v TEXT NOT NULL)")])
    no_row = Stmt("UPDATE probe SET v = 'x' WHERE v = 'absent'", guard=True)
    first_fails = [no_row, Stmt("INSERT INTO probe (v) VALUES ('never')")]
    part_way = [Stmt("INSERT INTO probe (v) VALUES ('undone')"), no_row]
    good = [Stmt("INSERT INTO probe (v) VALUES ('one')"), Stmt("INSERT INTO probe (v) VALUES ('two')")]
    for shape in ([good, first_fails, part_way, good], [first_fails, good], [part_way, good, part_way]):
        await run_batch([Stmt("DELETE FROM probe")])
        results = await run_batches(shape)
        failed = [r.failed_guard for r in results if isinstance(r, BatchResult) and not r.ok]
        assert [isinstance(r, BatchResult) and r.ok for r in results] == [b is good for b in shape]
        assert failed == [0 if b is first_fails else 1 for b in shape if b is not good]
        rows = await connections.get("default").execute_query_dict("SELECT v FROM probe ORDER BY v")
        assert [r["v"] for r in rows] == sorted(["one", "two"] * shape.count(good))


@pytest.mark.parametrize("call", ["tests.stepfns:exits", "tests.stepfns:interrupts"])
async def test_a_step_that_tries_to_exit_the_process_fails_alone(
    engine: Engine, define: Define, call: str, registry: Registry
) -> None:
    define("exiting", [{"key": "a", "call": call}])
    run_id = await operations.start_run(registry.get("exiting"), {}, "tester")
    assert await wait_run(run_id, "failed", "completed") == "failed"
    step = await step_of(run_id, "a")
    assert step["error"].startswith("StepExit: the step raised")
    again = await operations.start_run(
        registry.get("exiting"), {}, "tester"
    )  # the engine is still alive and takes new work
    assert await wait_run(again, "failed", "completed") == "failed"


async def test_step_slots_come_back_after_a_storm_of_cancellations(
    engine: Engine, settings: Settings, define: Define, registry: Registry
) -> None:
    define("chain", [{"key": f"s{i}", "call": "tests.stepfns:noop"} for i in range(30)])
    runs = [await operations.start_run(registry.get("chain"), {}, "tester") for _ in range(20)]
    for run_id in runs:
        await asyncio.sleep(0.002)
        with contextlib.suppress(Conflict):  # it may already have completed
            await operations.cancel_run(run_id, "tester")
    for run_id in runs:
        await wait_run(run_id, "cancelled", "completed", "failed")
    await engine.wait_idle()
    assert engine.step_slots.free == settings.max_concurrent_steps


async def test_events_of_a_cancel_reach_viewers_in_id_order(engine: Engine, define: Define, registry: Registry) -> None:
    define("two-branches", [{"key": k, "call": "tests.stepfns:sleepy", "needs": []} for k in ("a", "b")])
    run_id = await operations.start_run(registry.get("two-branches"), {}, "tester")
    await wait_for(lambda: _step_is(run_id, "b", "running"), 5, "both running")
    sub = current().hub.subscribe(run_id)
    await operations.cancel_run(run_id, "tester")
    ids = []
    while (change := await sub.get(timeout_s=0.5)) is not None:
        if change.event_id is not None:
            ids.append(change.event_id)
    sub.close()
    assert len(ids) >= 4  # action, two steps, run
    assert ids == sorted(ids)


async def test_the_sweep_does_not_fail_a_run_that_beat_after_it_was_judged(
    db: str, define: Define, registry: Registry
) -> None:
    define("one", [{"key": "a", "call": "tests.stepfns:noop"}])
    run_id = await operations.start_run(registry.get("one"), {}, "tester")
    assert await transitions.claim_run(run_id, await holding_lease("otherhost:1:x"))
    judged = (await queries.run_detail(run_id)).to_json()["heartbeat_at"]
    raw = await fetch("SELECT heartbeat_at FROM runs WHERE id = ?", (run_id,))  # as the sweep reads it
    await asyncio.sleep(0.01)
    assert await records.beat("otherhost:1:x", [run_id]) == 1  # alive after all
    assert judged is not None
    failed = await transitions.fail_running_run(run_id, "stale", heartbeat_at=raw[0]["heartbeat_at"])
    assert failed is False
    assert await run_status(run_id) == "running"


async def _step_is(run_id: int, key: str, status: str) -> bool:
    return bool((await step_of(run_id, key))["status"] == status)


async def _no_driver(engine: Engine, run_id: int) -> bool:
    return run_id not in engine.drivers
