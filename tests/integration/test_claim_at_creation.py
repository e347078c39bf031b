"""A run started in a process whose engine has room for it is claimed in the commit that creates it
(`Engine.claim_new`): written running and owned, driven at once, with no claim of its own to commit.
Only on one machine's SQLite: engines sharing PostgreSQL claim through their leases, and there a new
run is queued as before (each test says which it expects)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from engine import operations, transitions
from engine.definitions import WorkflowDef
from engine.engine import Engine
from engine.settings import Settings
from engine.store import fetch
from models.status import RunStatus
from tests import stepfns
from tests.conftest import commits_of_events, engine_running, run_status, wait_for, wait_run

Define = Callable[..., WorkflowDef]
PROMPT_S = 10.0  # far longer than any of this takes on an idle machine

pytestmark = pytest.mark.usefixtures("audit_clean")


async def run_events(run_id: int) -> list[tuple[str, str | None, str | None]]:
    rows = await fetch(
        "SELECT kind, from_status, to_status FROM events WHERE run_id = ? AND kind = 'run' ORDER BY id", (run_id,)
    )
    return [(r["kind"], r["from_status"], r["to_status"]) for r in rows]


async def test_a_run_started_while_the_engine_has_room_is_running_from_its_creation(
    engine: Engine, define: Define
) -> None:
    defn = define("at-once", [{"key": "a", "call": "tests.stepfns:noop"}, {"key": "b", "call": "tests.stepfns:noop"}])
    first = await operations.start_run(defn, {}, "tester")  # the engine has looked at the queue by its end
    assert await wait_run(first, "completed", "failed", timeout_s=PROMPT_S) == "completed"

    run = await operations.start_run_detail(defn, {}, "tester")
    if engine.shared:  # PostgreSQL: claimed by a worker with a lease, never at creation
        assert (run.status, run.owner, run.started_at) == (RunStatus.QUEUED, None, None)
    else:
        assert (run.status, run.owner, run.started_at) == (RunStatus.RUNNING, engine.owner, run.created_at)
        assert run.heartbeat_at == run.created_at
    assert await wait_run(run.id, "completed", "failed", timeout_s=PROMPT_S) == "completed"
    # Its story is the same either way: queued by its creator, then running for its engine.
    assert await run_events(run.id) == [
        ("run", None, "queued"),
        ("run", "queued", "running"),
        ("run", "running", "completed"),
    ]
    if not engine.shared:  # SQLite: the rows of one commit share its time
        rows = await fetch("SELECT kind, to_status, created_at FROM events WHERE run_id = ? ORDER BY id", (run.id,))
        claimed = next(i for i, r in enumerate(rows) if r["to_status"] == "running")
        assert {r["created_at"] for r in rows[: claimed + 1]} == {rows[0]["created_at"]}, "one commit"
        assert await commits_of_events(run.id, 0) not in (None, 1)  # its steps came in commits of their own


async def test_a_run_started_while_the_engine_is_full_waits_its_turn(settings: Settings, define: Define) -> None:
    stepfns.reset()
    gated = define("full-gated", [{"key": "hold", "call": "tests.stepfns:gated"}])
    quick = define("full-quick", [{"key": "a", "call": "tests.stepfns:noop"}])
    async with engine_running(settings.with_overrides(max_concurrent_runs=1)) as eng:
        warm = await operations.start_run(quick, {}, "tester")
        assert await wait_run(warm, "completed", "failed", timeout_s=PROMPT_S) == "completed"
        hold = await operations.start_run(gated, {}, "tester")
        await wait_for(lambda: _status_is(hold, "running"), PROMPT_S, "the gated run to run")
        second = await operations.start_run_detail(quick, {}, "tester")
        third = await operations.start_run_detail(quick, {}, "tester")
        assert (second.status, third.status) == (RunStatus.QUEUED, RunStatus.QUEUED)  # no room: queued
        assert list(eng.drivers) == [hold]
        stepfns.gate("hold").set()
        for run_id in (hold, second.id, third.id):
            assert await wait_run(run_id, "completed", "failed", timeout_s=PROMPT_S) == "completed"
    started = await fetch("SELECT id FROM runs WHERE id IN (?, ?) ORDER BY started_at, id", (second.id, third.id))
    assert [r["id"] for r in started] == [second.id, third.id]  # in the order they were queued


async def test_a_run_created_claimed_as_its_engine_stops_goes_back_to_the_queue(
    settings: Settings, define: Define
) -> None:
    defn = define("stopping", [{"key": "a", "call": "tests.stepfns:noop"}])
    eng = Engine(settings)
    await eng.start()
    stopping: asyncio.Task[None] | None = None
    try:
        warm = await operations.start_run(defn, {}, "tester")
        assert await wait_run(warm, "completed", "failed", timeout_s=PROMPT_S) == "completed"
        claim = eng.claim_new()
        if eng.shared:
            assert claim is None  # PostgreSQL: never at creation
            return
        assert claim is not None
        stopping = asyncio.create_task(eng.stop())
        await asyncio.sleep(0.05)
        assert not stopping.done(), "the stop waits for the run being created"
        assert eng.claim_new() is None  # a stopping engine takes no more
        created = await transitions.create_run(operations.new_run(defn, {}, "tester"), claim)
        assert created.claimed_by == eng.owner
        await asyncio.wait_for(stopping, PROMPT_S)
    finally:
        if stopping is None:
            await eng.stop()
    # Never left running by an engine that is gone: released to the queue, for the next engine.
    assert await run_status(created.id) == "queued"
    assert [e[2] for e in await run_events(created.id)] == ["queued", "running", "queued"]
    async with engine_running(settings):
        assert await wait_run(created.id, "completed", "failed", timeout_s=PROMPT_S) == "completed"


async def _status_is(run_id: int, status: str) -> bool:
    return await run_status(run_id) == status


async def test_a_run_whose_creator_stopped_waiting_is_driven_all_the_same(engine: Engine, define: Define) -> None:
    """A request cancelled while its run is being committed: the commit stands, and so does the claim in it,
    so the engine drives the run (a run left running with no driver would wait for the sweep)."""
    defn = define("abandoned", [{"key": "a", "call": "tests.stepfns:noop"}])
    warm = await operations.start_run(defn, {}, "tester")
    assert await wait_run(warm, "completed", "failed", timeout_s=PROMPT_S) == "completed"
    if engine.shared:
        assert engine.claim_new() is None  # PostgreSQL: never at creation
        return
    creating = asyncio.create_task(operations.start_run(defn, {}, "tester"))
    await asyncio.sleep(0)  # it waits for its commit now
    creating.cancel()
    with pytest.raises(asyncio.CancelledError):
        await creating

    async def created() -> int | None:
        rows = await fetch("SELECT id FROM runs WHERE workflow = ? AND id > ?", (defn.name, warm))
        return rows[0]["id"] if rows else None

    run_id: int = await wait_for(created, PROMPT_S, "the run to be committed")
    assert await wait_run(run_id, "completed", "failed", timeout_s=PROMPT_S) == "completed"
