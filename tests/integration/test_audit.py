"""engine.audit finds each impossible state, planted directly with SQL, and names its run."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from engine import audit, operations, records, transitions
from engine.engine import Engine
from engine.registry import Registry
from engine.store import Stmt, fetch, run_batch
from engine.transitions import NewStep, StepStart
from models.status import RunStatus
from tests.conftest import holding_lease, wait_run

OWNER = "testhost:101:aaaa"


@dataclass
class Planted:
    run_id: int
    ids: dict[str, int]  # step key -> id


async def run_with_steps(status: RunStatus) -> Planted:
    """A consistent run of a → b through the transitions: COMPLETED (a has 2 alternatives, 0 picked),
    WAITING (a waits for a choice), RUNNING (a is running) or QUEUED."""
    steps = [NewStep("a", "A", "python", []), NewStep("b", "B", "python", ["a"])]
    run_id = (await transitions.create_run(transitions.NewRun("wf", {}, {}, steps, "tester"))).id
    rows = await fetch("SELECT id, key FROM steps WHERE run_id = ?", (run_id,))
    made = Planted(run_id, {r["key"]: r["id"] for r in rows})
    if status == RunStatus.QUEUED:
        return made
    assert await transitions.claim_run(run_id, await holding_lease(OWNER))

    async def start(key: str, needs: list[str]) -> records.AttemptRef:
        attempt_id = await transitions.start_step(StepStart(run_id, made.ids[key], key, 1, needs, {}, OWNER))
        assert attempt_id is not None
        return records.AttemptRef(run_id, made.ids[key], key, attempt_id, 1)

    ref = await start("a", [])
    if status == RunStatus.RUNNING:
        return made
    if status == RunStatus.WAITING:
        assert await transitions.complete_step(ref, ["x", "y"], None, [], None, None)
        assert await transitions.finish_run(run_id, OWNER, RunStatus.WAITING)
        return made
    assert await transitions.complete_step(ref, ["x", "y"], 0, [], None, None)
    assert await transitions.complete_step(await start("b", ["a"]), ["z"], 0, [], None, None)
    assert await transitions.finish_run(run_id, OWNER, RunStatus.COMPLETED)
    return made


async def plant(sql: str, *params: Any) -> None:
    result = await run_batch([Stmt(sql, params, guard=True)])
    assert result.ok, f"planting changed no row: {sql}"


async def findings_of(run_id: int) -> set[tuple[str, str | None]]:
    findings, _ = await audit.audit()
    return {(f.problem, f.step) for f in findings if f.run_id == run_id}


async def test_a_clean_database_reports_nothing(db: str) -> None:
    findings, counts = await audit.audit()
    assert findings == []
    assert counts == {"runs": 0, "steps": 0, "attempts": 0, "events": 0}


async def test_runs_in_every_consistent_state_report_nothing(db: str) -> None:
    for status in (RunStatus.QUEUED, RunStatus.RUNNING, RunStatus.WAITING, RunStatus.COMPLETED):
        await run_with_steps(status)
    findings, counts = await audit.audit()
    assert [str(f) for f in findings] == []
    assert counts["runs"] == 4
    assert counts["attempts"] == 1 + 1 + 2


async def test_runs_made_by_the_engine_report_nothing(
    engine: Engine, define: Callable[..., Any], registry: Registry
) -> None:
    define(
        "ok",
        [
            {"key": "a", "call": "tests.stepfns:noop"},
            {"key": "b", "call": "tests.stepfns:alternatives", "alternatives": 2},
        ],
    )
    define("bad", [{"key": "a", "call": "tests.stepfns:boom"}])
    waiting = await operations.start_run(registry.get("ok"), {}, "tester")
    failed = await operations.start_run(registry.get("bad"), {}, "tester")
    assert await wait_run(waiting, "waiting") == "waiting"
    assert await wait_run(failed, "failed") == "failed"
    findings, _ = await audit.audit()
    assert [str(f) for f in findings] == []


# (description, state to start from, SQL planting the impossible state, the problem reported, step named)
CASES: list[tuple[str, RunStatus, list[str], str, str | None]] = [
    (
        "completed step whose current attempt failed",
        RunStatus.COMPLETED,
        ["UPDATE attempts SET status = 'failed' WHERE step_id = {a}"],
        "completed step without a completed current attempt with a selection",
        "a",
    ),
    (
        "completed step without a selection",
        RunStatus.COMPLETED,
        ["UPDATE attempts SET selected_index = NULL WHERE step_id = {b}"],
        "completed step without a completed current attempt with a selection",
        "b",
    ),
    (
        "waiting step whose attempt has a selection",
        RunStatus.WAITING,
        ["UPDATE attempts SET selected_index = 1 WHERE step_id = {a}"],
        "waiting step without a completed current attempt awaiting a choice",
        "a",
    ),
    (
        "running step in a completed run",
        RunStatus.COMPLETED,
        ["UPDATE steps SET status = 'running' WHERE id = {b}"],
        "running step in a run that is not running",
        "b",
    ),
    (
        "running step whose attempt is completed",
        RunStatus.RUNNING,
        ["UPDATE attempts SET status = 'completed', outputs = '[\"x\"]', selected_index = 0 WHERE step_id = {a}"],
        "running step whose current attempt is not running",
        "a",
    ),
    (
        "running attempt of a completed step",
        RunStatus.COMPLETED,
        ["UPDATE attempts SET status = 'running' WHERE step_id = {b}"],
        "running attempt that is not its step's running current attempt",
        "b",
    ),
    (
        "completed run with a pending step",
        RunStatus.COMPLETED,
        ["UPDATE steps SET status = 'pending' WHERE id = {b}"],
        "completed run with unfinished steps",
        "b",
    ),
    (
        "waiting run with no waiting step",
        RunStatus.COMPLETED,
        ["UPDATE runs SET status = 'waiting', finished_at = NULL WHERE id = {run}"],
        "waiting run without a step waiting for a choice",
        None,
    ),
    (
        "running run without an owner",
        RunStatus.RUNNING,
        ["UPDATE runs SET owner = NULL WHERE id = {run}"],
        "running run without an owner",
        None,
    ),
    (
        "selection index out of range",
        RunStatus.COMPLETED,
        ["UPDATE attempts SET selected_index = 2 WHERE step_id = {a}"],
        "selection index out of range",
        "a",
    ),
    (
        "negative selection index",
        RunStatus.COMPLETED,
        ["UPDATE attempts SET selected_index = -1 WHERE step_id = {a}"],
        "selection index out of range",
        "a",
    ),
    (
        "step pointing at a missing attempt",
        RunStatus.COMPLETED,
        ["UPDATE steps SET attempt = 7 WHERE id = {b}"],
        "step pointing at an attempt that does not exist",
        "b",
    ),
    (
        "stale flag on a pending step",
        RunStatus.QUEUED,
        ["UPDATE steps SET stale = TRUE, stale_reason = 'x' WHERE id = {a}"],
        "stale flag on a step that is neither completed nor waiting",
        "a",
    ),
    (
        "queued run with a finish time",
        RunStatus.QUEUED,
        ["UPDATE runs SET finished_at = '2024-01-01 00:00:00+00:00' WHERE id = {run}"],
        "unfinished run with a finish time",
        None,
    ),
]


@pytest.mark.parametrize(("what", "start", "sqls", "problem", "step"), CASES, ids=[c[0] for c in CASES])
async def test_audit_reports_a_planted_impossible_state_with_its_run(
    db: str, what: str, start: RunStatus, sqls: list[str], problem: str, step: str | None
) -> None:
    clean = await run_with_steps(start)  # an identical run left alone must not be reported
    made = await run_with_steps(start)
    for sql in sqls:
        await plant(sql.format(run=made.run_id, a=made.ids["a"], b=made.ids["b"]))
    found = await findings_of(made.run_id)
    assert (problem, step) in found, f"{what}: got {found}"
    assert await findings_of(clean.run_id) == set()
    findings, _ = await audit.audit()
    finding = next(f for f in findings if f.run_id == made.run_id and f.problem == problem)
    assert str(finding).startswith(f"run {made.run_id}")


async def test_audit_is_read_only(db: str) -> None:
    made = await run_with_steps(RunStatus.COMPLETED)
    await plant("UPDATE steps SET status = 'running' WHERE id = ?", made.ids["b"])
    before = await fetch("SELECT * FROM steps WHERE run_id = ? ORDER BY id", (made.run_id,))
    first, _ = await audit.audit()
    second, _ = await audit.audit()
    assert first == second
    assert first != []
    assert await fetch("SELECT * FROM steps WHERE run_id = ? ORDER BY id", (made.run_id,)) == before
