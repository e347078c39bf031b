"""Every transition of engine/transitions.py on a real database (a SQLite file, or PostgreSQL).

For each function: the legal move changes the rows and writes its event rows; called on rows in a
wrong status it returns False/None and changes nothing at all (no column, no event). Late results
are recorded as events and never overwrite a terminal state.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pytest

from engine import records, transitions
from engine.notify import kinds as notify
from engine.records import AttemptRef
from engine.store import Stmt, fetch, run_batch
from engine.transitions import NewStep, Selection, StepReset, StepStart
from models.status import RUN_TRANSITIONS, STEP_TRANSITIONS, AttemptStatus, RunStatus, StepStatus
from tests import pgdb
from tests.conftest import commits_of_events, holding_lease

OWNER = "testhost:101:aaaa"
OTHER = "otherhost:202:bbbb"


pytestmark = pytest.mark.usefixtures("audit_clean", "engines_hold_leases")


@pytest.fixture
async def engines_hold_leases(db: str) -> None:
    """Where engines hold leases (PostgreSQL), the engines these tests name hold live ones, as a started
    engine does: a claim or a step start is refused to an engine without one."""
    for owner in (OWNER, OTHER):
        await holding_lease(owner)


# --- helpers ---------------------------------------------------------------------------------------


@dataclass
class Made:
    run_id: int
    ids: dict[str, int]  # step key -> step id
    refs: dict[str, AttemptRef]  # step key -> its current attempt


async def new_run(*keys: str) -> Made:
    """A QUEUED run of a chain of steps (each needs the previous one)."""
    keys = keys or ("a", "b")
    steps = [NewStep(k, k.upper(), "python", [keys[i - 1]] if i else []) for i, k in enumerate(keys)]
    run_id = (await transitions.create_run(transitions.NewRun("wf", {"name": "wf"}, {"x": 1}, steps, "tester"))).id
    rows = await fetch("SELECT id, key FROM steps WHERE run_id = ? ORDER BY position", (run_id,))
    return Made(run_id, {r["key"]: r["id"] for r in rows}, {})


def step_start(
    made: Made, key: str, number: int = 1, owner: str = OWNER, consumed: dict[str, Any] | None = None
) -> StepStart:
    keys = list(made.ids)
    needs = [keys[keys.index(key) - 1]] if keys.index(key) else []
    return StepStart(made.run_id, made.ids[key], key, number, needs, consumed or {}, owner)


async def start(made: Made, key: str, number: int = 1, owner: str = OWNER) -> AttemptRef:
    attempt_id = await transitions.start_step(step_start(made, key, number, owner))
    assert attempt_id is not None
    ref = AttemptRef(made.run_id, made.ids[key], key, attempt_id, number)
    made.refs[key] = ref
    return ref


async def complete(ref: AttemptRef, selected: int | None = 0) -> None:
    outputs = [f"{ref.key}{ref.number}-alt0", f"{ref.key}{ref.number}-alt1"]
    assert await transitions.complete_step(ref, outputs, selected, ["a log line"], 1.0, "done")


async def run_in(status: RunStatus) -> Made:
    """A run of steps a → b brought to `status` through the transitions, as the engine would.

    RUNNING: a is running (attempt 1). WAITING: a waits for a choice. COMPLETED: both completed
    (alternative 0 of two selected). FAILED: a failed. CANCELLED: a was cancelled while running.
    """
    made = await new_run("a", "b")
    if status == RunStatus.QUEUED:
        return made
    assert await transitions.claim_run(made.run_id, OWNER)
    ref = await start(made, "a")
    if status == RunStatus.RUNNING:
        return made
    if status == RunStatus.WAITING:
        await complete(ref, None)
        assert await transitions.finish_run(made.run_id, OWNER, RunStatus.WAITING)
    elif status == RunStatus.COMPLETED:
        await complete(ref)
        await complete(await start(made, "b"))
        assert await transitions.finish_run(made.run_id, OWNER, RunStatus.COMPLETED)
    elif status == RunStatus.FAILED:
        assert await transitions.fail_step(ref, "ValueError: boom", "Traceback …", [])
        assert await transitions.finish_run(made.run_id, OWNER, RunStatus.FAILED, "step 'a' failed: ValueError: boom")
    elif status == RunStatus.CANCELLED:
        assert await transitions.cancel_run(made.run_id, RunStatus.RUNNING, "tester")
    return made


async def snapshot(run_id: int) -> dict[str, list[dict[str, Any]]]:
    """Every row of the run, its steps, attempts and events, every column."""
    return {
        "runs": await fetch("SELECT * FROM runs WHERE id = ?", (run_id,)),
        "steps": await fetch("SELECT * FROM steps WHERE run_id = ? ORDER BY id", (run_id,)),
        "attempts": await fetch("SELECT * FROM attempts WHERE run_id = ? ORDER BY id", (run_id,)),
        "events": await fetch("SELECT * FROM events WHERE run_id = ? ORDER BY id", (run_id,)),
    }


async def events_since(run_id: int, after: int) -> list[tuple[Any, ...]]:
    rows = await fetch(
        "SELECT kind, step_key, attempt, from_status, to_status, actor, message FROM events"
        " WHERE run_id = ? AND id > ? ORDER BY id",
        (run_id, after),
    )
    return [tuple(r.values()) for r in rows]


async def last_event_id(run_id: int) -> int:
    return int((await fetch("SELECT COALESCE(MAX(id), 0) AS n FROM events WHERE run_id = ?", (run_id,)))[0]["n"])


async def run_row(run_id: int) -> dict[str, Any]:
    return (await fetch("SELECT * FROM runs WHERE id = ?", (run_id,)))[0]


async def step_row(step_id: int) -> dict[str, Any]:
    return (await fetch("SELECT * FROM steps WHERE id = ?", (step_id,)))[0]


async def attempt_row(attempt_id: int) -> dict[str, Any]:
    return (await fetch("SELECT * FROM attempts WHERE id = ?", (attempt_id,)))[0]


async def attempt_count(run_id: int) -> int:
    return int((await fetch("SELECT count(*) AS n FROM attempts WHERE run_id = ?", (run_id,)))[0]["n"])


NOT_QUEUED = [s for s in RunStatus if s != RunStatus.QUEUED]
NOT_RUNNING = [s for s in RunStatus if s != RunStatus.RUNNING]


# --- create_run / claim_run ------------------------------------------------------------------------


async def test_create_run_inserts_a_queued_run_with_pending_steps_and_its_events() -> None:
    made = await new_run("a", "b", "c")
    run = await run_row(made.run_id)
    assert (run["status"], run["owner"], run["started_at"], run["finished_at"]) == ("queued", None, None, None)
    steps = await fetch(
        "SELECT key, status, attempt, stale, needs FROM steps WHERE run_id = ? ORDER BY position", (made.run_id,)
    )
    assert [(s["key"], s["status"], s["attempt"], bool(s["stale"])) for s in steps] == [
        ("a", "pending", 0, False),
        ("b", "pending", 0, False),
        ("c", "pending", 0, False),
    ]
    assert await events_since(made.run_id, 0) == [
        ("action", None, None, None, None, "tester", "started a run of 'wf'"),
        ("run", None, None, None, "queued", "tester", None),
    ]


async def test_claim_run_moves_a_queued_run_to_running_for_its_owner() -> None:
    made = await new_run()
    after = await last_event_id(made.run_id)
    assert await transitions.claim_run(made.run_id, OWNER) is True
    run = await run_row(made.run_id)
    assert run["status"] == "running"
    assert run["owner"] == OWNER
    assert run["heartbeat_at"] is not None
    assert run["started_at"] is not None
    assert run["finished_at"] is None
    assert await events_since(made.run_id, after) == [("run", None, None, "queued", "running", None, OWNER)]


@pytest.mark.parametrize("status", NOT_QUEUED)
async def test_claim_run_refuses_a_run_that_is_not_queued(status: RunStatus) -> None:
    made = await run_in(status)
    before = await snapshot(made.run_id)
    assert await transitions.claim_run(made.run_id, OTHER) is False
    assert await snapshot(made.run_id) == before


async def test_claim_runs_claims_the_queued_ones_with_what_their_drivers_read() -> None:
    first, taken, second = await new_run(), await run_in(RunStatus.RUNNING), await new_run("x", "y", "z")
    before = await snapshot(taken.run_id)
    after = await last_event_id(first.run_id)
    claimed = await transitions.claim_runs([first.run_id, taken.run_id, second.run_id], OTHER)
    assert [c.id for c in claimed] == [first.run_id, second.run_id]
    assert await snapshot(taken.run_id) == before  # running already: left as it was
    for made, c in zip((first, second), claimed, strict=True):
        run = await run_row(made.run_id)
        assert (run["status"], run["owner"]) == ("running", OTHER)
        assert json.loads(c.definition) == {"name": "wf"} and json.loads(c.inputs) == {"x": 1}
        # The steps as the driver reads them (`STEP_ROWS_SQL`): id, key, status, attempt, retries used, …
        assert sorted(row[:5] for row in c.steps) == sorted((made.ids[k], k, "pending", 0, 0) for k in made.ids)
    assert await events_since(first.run_id, after) == [("run", None, None, "queued", "running", None, OTHER)]
    assert await transitions.claim_runs([first.run_id], OWNER) == []  # each is claimed once


@contextlib.asynccontextmanager
async def refusing_claims_of(run_id: int) -> AsyncIterator[None]:
    """The database refuses every update of run `run_id` (a trigger raising), as one that cannot write it would."""
    if pgdb.ENABLED:
        create = [
            "CREATE FUNCTION refuse_update() RETURNS trigger AS $$ BEGIN RAISE EXCEPTION 'refused'; END $$"
            " LANGUAGE plpgsql",
            f"CREATE TRIGGER refuse BEFORE UPDATE ON runs FOR EACH ROW WHEN (NEW.id = {run_id})"
            " EXECUTE FUNCTION refuse_update()",
        ]
        drop = ["DROP TRIGGER refuse ON runs", "DROP FUNCTION refuse_update()"]
    else:
        create = [
            f"CREATE TRIGGER refuse BEFORE UPDATE ON runs WHEN NEW.id = {run_id}"
            " BEGIN SELECT RAISE(ABORT, 'refused'); END"
        ]
        drop = ["DROP TRIGGER refuse"]
    await run_batch([Stmt(sql, ()) for sql in create])
    try:
        yield
    finally:
        await run_batch([Stmt(sql, ()) for sql in drop])


async def test_claim_runs_drives_what_the_database_took_and_raises_when_it_took_nothing() -> None:
    refused, fine = await new_run(), await new_run()
    async with refusing_claims_of(refused.run_id):
        claimed = await transitions.claim_runs([refused.run_id, fine.run_id], OWNER)
        assert [c.id for c in claimed] == [fine.run_id]  # committed: its driver must start
        with pytest.raises(Exception, match="refused"):  # nothing claimed: the caller sees why
            await transitions.claim_runs([refused.run_id], OWNER)
    assert (await run_row(refused.run_id))["status"] == "queued"
    assert (await run_row(fine.run_id))["status"] == "running"


# --- finish_run ------------------------------------------------------------------------------------


async def test_finish_run_completed_by_its_owner() -> None:
    made = await run_in(RunStatus.RUNNING)
    await complete(made.refs["a"])
    await complete(await start(made, "b"))
    after = await last_event_id(made.run_id)
    assert await transitions.finish_run(made.run_id, OWNER, RunStatus.COMPLETED) is True
    run = await run_row(made.run_id)
    assert (run["status"], run["owner"], run["heartbeat_at"], run["error"]) == ("completed", None, None, None)
    assert run["finished_at"] is not None
    assert await events_since(made.run_id, after) == [("run", None, None, "running", "completed", None, None)]


async def test_finish_run_waiting_keeps_no_finish_time() -> None:
    made = await run_in(RunStatus.RUNNING)
    await complete(made.refs["a"], None)
    assert await transitions.finish_run(made.run_id, OWNER, RunStatus.WAITING) is True
    run = await run_row(made.run_id)
    assert (run["status"], run["owner"], run["finished_at"]) == ("waiting", None, None)


async def test_finish_run_failed_stores_the_error() -> None:
    made = await run_in(RunStatus.RUNNING)
    assert await transitions.fail_step(made.refs["a"], "ValueError: x", None, [])
    after = await last_event_id(made.run_id)
    assert await transitions.finish_run(made.run_id, OWNER, RunStatus.FAILED, "step 'a' failed: ValueError: x")
    run = await run_row(made.run_id)
    assert (run["status"], run["error"]) == ("failed", "step 'a' failed: ValueError: x")
    assert run["finished_at"] is not None
    assert await events_since(made.run_id, after) == [
        ("run", None, None, "running", "failed", None, "step 'a' failed: ValueError: x")
    ]


async def test_finish_run_by_a_non_owner_changes_nothing() -> None:
    made = await run_in(RunStatus.RUNNING)
    assert await transitions.fail_step(made.refs["a"], "ValueError: x", None, [])
    before = await snapshot(made.run_id)
    assert await transitions.finish_run(made.run_id, OTHER, RunStatus.FAILED, "not mine") is False
    assert await snapshot(made.run_id) == before


async def test_finish_run_completed_with_an_unfinished_step_changes_nothing() -> None:
    made = await run_in(RunStatus.RUNNING)
    await complete(made.refs["a"])  # b is still pending
    before = await snapshot(made.run_id)
    assert await transitions.finish_run(made.run_id, OWNER, RunStatus.COMPLETED) is False
    assert await snapshot(made.run_id) == before


async def test_finish_run_waiting_without_a_waiting_step_changes_nothing() -> None:
    made = await run_in(RunStatus.RUNNING)
    await complete(made.refs["a"])  # a selection landed: nothing waits any more
    before = await snapshot(made.run_id)
    assert await transitions.finish_run(made.run_id, OWNER, RunStatus.WAITING) is False
    assert await snapshot(made.run_id) == before


@pytest.mark.parametrize("status", NOT_RUNNING)
async def test_finish_run_refuses_a_run_that_is_not_running(status: RunStatus) -> None:
    made = await run_in(status)
    before = await snapshot(made.run_id)
    assert await transitions.finish_run(made.run_id, OWNER, RunStatus.FAILED, "late") is False
    assert await snapshot(made.run_id) == before


# --- fail_running_run ------------------------------------------------------------------------------


@pytest.mark.parametrize("owner", [OWNER, None])
async def test_fail_running_run_fails_the_run_its_running_steps_and_attempts(owner: str | None) -> None:
    made = await run_in(RunStatus.RUNNING)
    after = await last_event_id(made.run_id)
    reason = "interrupted: the server stopped while step 'a' was running"
    assert await transitions.fail_running_run(made.run_id, reason, owner=owner, actor="recovery") is True
    run = await run_row(made.run_id)
    assert (run["status"], run["error"], run["owner"], run["heartbeat_at"]) == ("failed", reason, None, None)
    a, b = await step_row(made.ids["a"]), await step_row(made.ids["b"])
    assert (a["status"], b["status"]) == ("failed", "pending")
    attempt = await attempt_row(made.refs["a"].attempt_id)
    assert (attempt["status"], attempt["error"]) == ("failed", reason)
    assert attempt["finished_at"] is not None
    assert sorted(await events_since(made.run_id, after), key=str) == sorted(
        [
            ("run", None, None, "running", "failed", "recovery", reason),
            ("step", "a", 1, "running", "failed", None, reason),
        ],
        key=str,
    )


async def test_fail_running_run_of_another_owner_changes_nothing() -> None:
    made = await run_in(RunStatus.RUNNING)
    before = await snapshot(made.run_id)
    assert await transitions.fail_running_run(made.run_id, "interrupted", owner=OTHER) is False
    assert await snapshot(made.run_id) == before


@pytest.mark.parametrize("status", NOT_RUNNING)
async def test_fail_running_run_refuses_a_run_that_is_not_running(status: RunStatus) -> None:
    made = await run_in(status)
    before = await snapshot(made.run_id)
    assert await transitions.fail_running_run(made.run_id, "interrupted", actor="sweep") is False
    assert await snapshot(made.run_id) == before


# --- cancel_run ------------------------------------------------------------------------------------


async def test_cancel_run_of_a_running_run_cancels_its_running_step_and_attempt() -> None:
    made = await run_in(RunStatus.RUNNING)
    after = await last_event_id(made.run_id)
    assert await transitions.cancel_run(made.run_id, RunStatus.RUNNING, "alice") is True
    run = await run_row(made.run_id)
    assert (run["status"], run["error"], run["owner"]) == ("cancelled", "cancelled by alice", None)
    assert run["finished_at"] is not None
    assert (await step_row(made.ids["a"]))["status"] == "cancelled"
    assert (await step_row(made.ids["b"]))["status"] == "pending"
    attempt = await attempt_row(made.refs["a"].attempt_id)
    assert (attempt["status"], attempt["error"]) == ("cancelled", "cancelled by alice")
    assert sorted(await events_since(made.run_id, after), key=str) == sorted(
        [
            ("action", None, None, None, None, "alice", "cancelled the run"),
            ("run", None, None, "running", "cancelled", "alice", None),
            ("step", "a", 1, "running", "cancelled", None, "cancelled by alice"),
        ],
        key=str,
    )


@pytest.mark.parametrize("status", [RunStatus.QUEUED, RunStatus.WAITING])
async def test_cancel_run_of_a_queued_or_waiting_run(status: RunStatus) -> None:
    made = await run_in(status)
    steps_before = (await snapshot(made.run_id))["steps"]
    after = await last_event_id(made.run_id)
    assert await transitions.cancel_run(made.run_id, status, "alice") is True
    assert (await run_row(made.run_id))["status"] == "cancelled"
    assert (await snapshot(made.run_id))["steps"] == steps_before  # nothing was running
    assert await events_since(made.run_id, after) == [
        ("action", None, None, None, None, "alice", "cancelled the run"),
        ("run", None, None, status.value, "cancelled", "alice", None),
    ]


@pytest.mark.parametrize("status", NOT_RUNNING)
async def test_cancel_run_with_a_stale_observed_status_changes_nothing(status: RunStatus) -> None:
    made = await run_in(status)
    before = await snapshot(made.run_id)
    assert await transitions.cancel_run(made.run_id, RunStatus.RUNNING, "alice") is False
    assert await snapshot(made.run_id) == before


# --- rerun_steps -----------------------------------------------------------------------------------


async def test_rerun_steps_queues_the_run_and_resets_steps_keeping_attempts() -> None:
    made = await run_in(RunStatus.COMPLETED)
    attempts_before = (await snapshot(made.run_id))["attempts"]
    after = await last_event_id(made.run_id)
    resets = [StepReset(made.ids[k], k, StepStatus.COMPLETED) for k in ("a", "b")]
    assert await transitions.rerun_steps(made.run_id, RunStatus.COMPLETED, "a", resets, "alice", "rerun from 'a'")
    run = await run_row(made.run_id)
    assert (run["status"], run["error"], run["finished_at"], run["owner"]) == ("queued", None, None, None)
    for key in ("a", "b"):
        step = await step_row(made.ids[key])
        assert (step["status"], step["attempt"], bool(step["stale"])) == ("pending", 1, False)
    # the attempts stay in history untouched
    assert (await snapshot(made.run_id))["attempts"] == attempts_before
    assert await events_since(made.run_id, after) == [
        ("action", "a", None, None, None, "alice", "rerun from 'a'"),
        ("step", "a", None, "completed", "pending", None, None),
        ("step", "b", None, "completed", "pending", None, None),
        ("run", None, None, "completed", "queued", "alice", None),
    ]


async def test_rerun_steps_clears_stale_flags() -> None:
    made = await run_in(RunStatus.COMPLETED)
    sel = Selection(
        made.run_id,
        made.ids["a"],
        "a",
        made.refs["a"].attempt_id,
        1,
        1,
        0,
        StepStatus.COMPLETED,
        RunStatus.COMPLETED,
        ["b"],
    )
    assert await transitions.select_alternative(sel, "alice")
    assert (await step_row(made.ids["b"]))["stale"]
    resets = [StepReset(made.ids["b"], "b", StepStatus.COMPLETED)]
    assert await transitions.rerun_steps(made.run_id, RunStatus.COMPLETED, "b", resets, "alice", "rerun from 'b'")
    b = await step_row(made.ids["b"])
    assert (b["status"], bool(b["stale"]), b["stale_reason"]) == ("pending", False, None)


async def test_rerun_steps_with_a_stale_observed_step_status_changes_nothing() -> None:
    made = await run_in(RunStatus.COMPLETED)
    before = await snapshot(made.run_id)
    # b was read as failed but is completed: the run update (first statement) must be rolled back too
    resets = [StepReset(made.ids["a"], "a", StepStatus.COMPLETED), StepReset(made.ids["b"], "b", StepStatus.FAILED)]
    assert await transitions.rerun_steps(made.run_id, RunStatus.COMPLETED, "a", resets, "alice", "rerun") is False
    assert await snapshot(made.run_id) == before


async def test_rerun_steps_with_a_stale_observed_run_status_changes_nothing() -> None:
    made = await run_in(RunStatus.COMPLETED)
    before = await snapshot(made.run_id)
    resets = [StepReset(made.ids["a"], "a", StepStatus.COMPLETED)]
    assert await transitions.rerun_steps(made.run_id, RunStatus.FAILED, "a", resets, "alice", "rerun") is False
    assert await snapshot(made.run_id) == before


async def test_a_second_identical_rerun_changes_nothing() -> None:
    made = await run_in(RunStatus.FAILED)
    resets = [StepReset(made.ids["a"], "a", StepStatus.FAILED), StepReset(made.ids["b"], "b", StepStatus.PENDING)]
    assert await transitions.rerun_steps(made.run_id, RunStatus.FAILED, "a", resets, "alice", "rerun") is True
    before = await snapshot(made.run_id)
    assert await transitions.rerun_steps(made.run_id, RunStatus.FAILED, "a", resets, "bob", "rerun") is False
    assert await snapshot(made.run_id) == before


# --- start_step ------------------------------------------------------------------------------------


async def test_start_step_moves_a_pending_step_to_running_with_a_new_attempt() -> None:
    made = await new_run()
    assert await transitions.claim_run(made.run_id, OWNER)
    after = await last_event_id(made.run_id)
    consumed = {"up": {"attempt": 3, "index": 1}}
    attempt_id = await transitions.start_step(step_start(made, "a", consumed=consumed))
    assert attempt_id is not None
    step = await step_row(made.ids["a"])
    assert (step["status"], step["attempt"]) == ("running", 1)
    attempt = await attempt_row(attempt_id)
    assert (attempt["status"], attempt["number"], attempt["owner"], attempt["step_id"]) == (
        "running",
        1,
        OWNER,
        made.ids["a"],
    )
    assert attempt["outputs"] is None
    assert attempt["selected_index"] is None
    assert json.loads(attempt["consumed"]) == {"up": {"attempt": 3, "index": 1}}
    assert await events_since(made.run_id, after) == [("step", "a", 1, "pending", "running", None, None)]


async def test_start_step_on_a_step_that_is_not_pending_changes_nothing() -> None:
    made = await run_in(RunStatus.RUNNING)  # a is running
    before = await snapshot(made.run_id)
    assert await transitions.start_step(step_start(made, "a", 2)) is None
    assert await snapshot(made.run_id) == before
    await complete(made.refs["a"])
    before = await snapshot(made.run_id)
    assert await transitions.start_step(step_start(made, "a", 2)) is None
    assert await snapshot(made.run_id) == before


async def test_start_step_in_a_run_owned_by_another_engine_changes_nothing() -> None:
    made = await new_run()
    assert await transitions.claim_run(made.run_id, OTHER)
    before = await snapshot(made.run_id)
    assert await transitions.start_step(step_start(made, "a")) is None
    assert await snapshot(made.run_id) == before
    assert await attempt_count(made.run_id) == 0


async def test_start_step_of_a_step_whose_need_is_not_completed_changes_nothing() -> None:
    made = await run_in(RunStatus.RUNNING)  # a (needed by b) is running
    before = await snapshot(made.run_id)
    assert await transitions.start_step(step_start(made, "b")) is None
    assert await snapshot(made.run_id) == before


@pytest.mark.parametrize("status", NOT_RUNNING)
async def test_start_step_in_a_run_that_is_not_running_changes_nothing(status: RunStatus) -> None:
    made = await run_in(status)
    key = "a" if status == RunStatus.QUEUED else "b"  # b is pending in every state but completed
    before = await snapshot(made.run_id)
    assert await transitions.start_step(step_start(made, key)) is None
    assert await snapshot(made.run_id) == before


# --- complete_step / fail_step ---------------------------------------------------------------------


async def test_complete_step_with_a_selection_completes_attempt_and_step() -> None:
    made = await run_in(RunStatus.RUNNING)
    ref = made.refs["a"]
    after = await last_event_id(made.run_id)
    assert await transitions.complete_step(ref, ["x", {"k": [1, 2]}], 1, ["l1", "l2"], 0.5, "half") is True
    attempt = await attempt_row(ref.attempt_id)
    assert attempt["status"] == "completed"
    assert attempt["outputs"] == '["x", {"k": [1, 2]}]'
    assert (attempt["selected_index"], attempt["logs"], attempt["progress"], attempt["progress_message"]) == (
        1,
        '["l1", "l2"]',
        0.5,
        "half",
    )
    assert attempt["finished_at"] is not None
    assert (await step_row(made.ids["a"]))["status"] == "completed"
    assert await events_since(made.run_id, after) == [("step", "a", 1, "running", "completed", None, None)]


async def test_complete_step_without_a_selection_leaves_the_step_waiting() -> None:
    made = await run_in(RunStatus.RUNNING)
    after = await last_event_id(made.run_id)
    assert await transitions.complete_step(made.refs["a"], ["x", "y"], None, [], None, None) is True
    assert (await step_row(made.ids["a"]))["status"] == "waiting"
    assert (await attempt_row(made.refs["a"].attempt_id))["selected_index"] is None
    assert await events_since(made.run_id, after) == [("step", "a", 1, "running", "waiting", None, None)]
    assert await transitions.finish_run(made.run_id, OWNER, RunStatus.WAITING)


async def test_complete_step_and_start_starts_the_successor_in_the_same_commit() -> None:
    made = await run_in(RunStatus.RUNNING)
    consumed = {"a": {"attempt": 1, "index": 0}}
    done, ids, finished = await transitions.complete_step_and_start(
        transitions.Completion(made.refs["a"], ["x"], 0, [], None, None), [step_start(made, "b", consumed=consumed)]
    )
    assert (done, finished) == (True, False)
    assert ids[0] is not None
    assert [(await step_row(made.ids[k]))["status"] for k in ("a", "b")] == ["completed", "running"]
    attempt = await attempt_row(ids[0])
    assert (attempt["status"], attempt["number"], json.loads(attempt["consumed"])) == (
        "running",
        1,
        {"a": {"attempt": 1, "index": 0}},
    )


async def test_complete_step_and_start_does_not_start_a_successor_of_a_waiting_step() -> None:
    made = await run_in(RunStatus.RUNNING)
    completed = await transitions.complete_step_and_start(
        transitions.Completion(made.refs["a"], ["x", "y"], None, [], None, None), [step_start(made, "b")]
    )
    assert completed == (True, [None], False)
    assert [(await step_row(made.ids[k]))["status"] for k in ("a", "b")] == ["waiting", "pending"]
    assert await attempt_count(made.run_id) == 1
    assert [e[:2] for e in await events_since(made.run_id, 0) if e[0] == "step"] == [("step", "a"), ("step", "a")]
    assert await transitions.finish_run(made.run_id, OWNER, RunStatus.WAITING)


async def outbox_kinds(run_id: int) -> list[str]:
    """The notifications the run's transitions put in the outbox, in order."""
    return [r["event"] for r in await fetch("SELECT event FROM notifications WHERE run_id = ? ORDER BY id", (run_id,))]


def owned(ref: AttemptRef) -> AttemptRef:
    """The attempt as its engine (OWNER) refers to it."""
    return dataclasses.replace(ref, owner=OWNER)


async def test_the_completion_of_the_last_step_finishes_the_run_in_the_same_commit() -> None:
    made = await run_in(RunStatus.RUNNING)
    await complete(made.refs["a"])
    ref = owned(await start(made, "b"))
    after = await last_event_id(made.run_id)
    completion = transitions.Completion(ref, ["x"], 0, [], None, None, finishes_run=True)
    assert await transitions.complete_step_and_start(completion, ()) == (True, [], True)
    run = await run_row(made.run_id)
    assert (run["status"], run["owner"], run["heartbeat_at"]) == ("completed", None, None)
    assert run["finished_at"] is not None
    assert await events_since(made.run_id, after) == [
        ("step", "b", 1, "running", "completed", None, None),
        ("run", None, None, "running", "completed", None, None),
    ]
    assert await commits_of_events(made.run_id, after) in (1, None)  # None: PostgreSQL cannot tell
    assert await outbox_kinds(made.run_id) == [notify.RUN_COMPLETED]


@pytest.mark.parametrize("waits", [False, True], ids=["a-step-left", "nothing-selected"])
async def test_a_completion_that_does_not_complete_the_run_leaves_it_running(waits: bool) -> None:
    made = await run_in(RunStatus.RUNNING)  # b is still pending; without a selection, a waits
    after = await last_event_id(made.run_id)
    completion = transitions.Completion(
        owned(made.refs["a"]), ["x", "y"], None if waits else 0, [], None, None, finishes_run=True
    )
    assert await transitions.complete_step_and_start(completion, ()) == (True, [], False)
    assert (await run_row(made.run_id))["status"] == "running"
    assert [e[:2] for e in await events_since(made.run_id, after)] == [("step", "a")]
    assert await outbox_kinds(made.run_id) == []


async def _assert_only_late_result(made: Made, before: dict[str, list[dict[str, Any]]], what: str) -> None:
    after = await snapshot(made.run_id)
    assert {k: v for k, v in after.items() if k != "events"} == {k: v for k, v in before.items() if k != "events"}
    assert after["events"][: len(before["events"])] == before["events"]
    new = after["events"][len(before["events"]) :]
    assert [(e["kind"], e["step_key"], e["attempt"], e["from_status"], e["to_status"]) for e in new] == [
        ("late_result", "a", 1, None, None)
    ]
    assert new[0]["message"] == f"late result discarded: attempt 1 {what} after it had already ended"


@pytest.mark.parametrize("status", [RunStatus.CANCELLED, RunStatus.FAILED])
async def test_complete_step_after_the_attempt_ended_records_a_late_result_only(status: RunStatus) -> None:
    made = await run_in(RunStatus.RUNNING)
    ref = made.refs["a"]
    if status == RunStatus.CANCELLED:
        assert await transitions.cancel_run(made.run_id, RunStatus.RUNNING, "alice")
    else:
        assert await transitions.fail_running_run(made.run_id, "interrupted: shutdown", owner=OWNER)
    before = await snapshot(made.run_id)
    assert await transitions.complete_step(ref, ["late"], 0, ["late log"], 1.0, "late") is False
    await _assert_only_late_result(made, before, "completed")
    attempt = await attempt_row(ref.attempt_id)
    assert (attempt["status"], attempt["outputs"], attempt["selected_index"]) == (status.value, None, None)


@pytest.mark.parametrize("status", [AttemptStatus.CANCELLED, AttemptStatus.FAILED, AttemptStatus.COMPLETED])
async def test_fail_step_after_the_attempt_ended_records_a_late_result_only(status: AttemptStatus) -> None:
    made = await run_in(RunStatus.RUNNING)
    ref = made.refs["a"]
    if status == AttemptStatus.CANCELLED:
        assert await transitions.cancel_run(made.run_id, RunStatus.RUNNING, "alice")
        error = "cancelled by alice"
    elif status == AttemptStatus.FAILED:
        assert await transitions.fail_step(ref, "ValueError: first", "tb", [])
        error = "ValueError: first"
    else:
        await complete(ref)
        error = None
    before = await snapshot(made.run_id)
    assert await transitions.fail_step(ref, "TimeoutError: late", "late tb", ["late"]) is False
    await _assert_only_late_result(made, before, "failed: TimeoutError: late")
    attempt = await attempt_row(ref.attempt_id)
    assert (attempt["status"], attempt["error"]) == (status.value, error)


async def test_fail_step_stores_error_detail_logs_and_partial_output() -> None:
    made = await run_in(RunStatus.RUNNING)
    ref = made.refs["a"]
    after = await last_event_id(made.run_id)
    assert await transitions.fail_step(ref, "ValueError: bad", "Traceback: …", ["l1"], "half a sent") is True
    attempt = await attempt_row(ref.attempt_id)
    assert (
        attempt["status"],
        attempt["error"],
        attempt["error_detail"],
        attempt["logs"],
        attempt["partial_output"],
    ) == (
        "failed",
        "ValueError: bad",
        "Traceback: …",
        '["l1"]',
        "half a sent",
    )
    assert (await step_row(made.ids["a"]))["status"] == "failed"
    assert await events_since(made.run_id, after) == [("step", "a", 1, "running", "failed", None, "ValueError: bad")]


async def test_a_result_of_an_earlier_attempt_never_touches_the_current_one() -> None:
    made = await run_in(RunStatus.CANCELLED)  # attempt 1 of a was cancelled while running
    old = made.refs["a"]
    resets = [StepReset(made.ids["a"], "a", StepStatus.CANCELLED), StepReset(made.ids["b"], "b", StepStatus.PENDING)]
    assert await transitions.rerun_steps(made.run_id, RunStatus.CANCELLED, "a", resets, "alice", "rerun")
    assert await transitions.claim_run(made.run_id, OWNER)
    new = await start(made, "a", 2)
    before = await snapshot(made.run_id)
    assert await transitions.complete_step(old, ["stale"], 0, [], None, None) is False
    assert await transitions.fail_step(old, "late", None, []) is False
    after = await snapshot(made.run_id)
    assert {k: v for k, v in after.items() if k != "events"} == {k: v for k, v in before.items() if k != "events"}
    assert [(e["kind"], e["attempt"]) for e in after["events"][len(before["events"]) :]] == [
        ("late_result", 1),
        ("late_result", 1),
    ]
    assert (await attempt_row(new.attempt_id))["status"] == "running"
    assert await transitions.fail_running_run(made.run_id, "test over", owner=OWNER)


# --- keep_partial_output / record_late_result ------------------------------------------------------


async def test_keep_partial_output_applies_to_a_stopped_attempt_only() -> None:
    made = await run_in(RunStatus.RUNNING)
    ref = made.refs["a"]
    before = await snapshot(made.run_id)
    assert await records.keep_partial_output(ref, "partial", ["l"]) is False  # still running
    assert await snapshot(made.run_id) == before
    assert await transitions.cancel_run(made.run_id, RunStatus.RUNNING, "alice")
    events_before = (await snapshot(made.run_id))["events"]
    assert await records.keep_partial_output(ref, "partial", ["l1", "l2"]) is True
    attempt = await attempt_row(ref.attempt_id)
    assert (attempt["status"], attempt["partial_output"], attempt["logs"]) == ("cancelled", "partial", '["l1", "l2"]')
    assert (await snapshot(made.run_id))["events"] == events_before  # writes no status, no event


async def test_keep_partial_output_never_touches_a_completed_attempt() -> None:
    made = await run_in(RunStatus.COMPLETED)
    before = await snapshot(made.run_id)
    assert await records.keep_partial_output(made.refs["a"], "partial", ["x"]) is False
    assert await snapshot(made.run_id) == before


async def test_record_late_result_writes_an_event_and_no_status() -> None:
    made = await run_in(RunStatus.COMPLETED)
    before = await snapshot(made.run_id)
    await records.record_late_result(made.refs["b"], AttemptStatus.COMPLETED)
    await records.record_late_result(made.refs["b"], AttemptStatus.FAILED, error="RuntimeError: boom")
    after = await snapshot(made.run_id)
    assert {k: v for k, v in after.items() if k != "events"} == {k: v for k, v in before.items() if k != "events"}
    assert len(after["events"]) == len(before["events"]) + 2
    assert [e["kind"] for e in after["events"][-2:]] == ["late_result", "late_result"]
    assert [e["message"] for e in after["events"][-2:]] == [
        "late result discarded: attempt 1 completed after it had already ended",
        "late result discarded: attempt 1 failed: RuntimeError: boom after it had already ended",
    ]


# --- select_alternative ----------------------------------------------------------------------------


def _selection(
    made: Made,
    index: int,
    previous: int | None,
    step_from: StepStatus,
    run_from: RunStatus,
    stale: list[str] | None = None,
) -> Selection:
    ref = made.refs["a"]
    return Selection(
        made.run_id, ref.step_id, "a", ref.attempt_id, ref.number, index, previous, step_from, run_from, stale or []
    )


async def test_select_alternative_completes_a_waiting_step_and_requeues_the_run() -> None:
    made = await run_in(RunStatus.WAITING)
    after = await last_event_id(made.run_id)
    assert await transitions.select_alternative(_selection(made, 1, None, StepStatus.WAITING, RunStatus.WAITING), "al")
    assert (await step_row(made.ids["a"]))["status"] == "completed"
    assert (await attempt_row(made.refs["a"].attempt_id))["selected_index"] == 1
    assert (await run_row(made.run_id))["status"] == "queued"
    assert await events_since(made.run_id, after) == [
        ("action", "a", 1, None, None, "al", "selected alternative 2"),
        ("step", "a", 1, "waiting", "completed", None, None),
        ("run", None, None, "waiting", "queued", "al", None),
    ]


async def test_select_alternative_on_a_completed_step_flags_dependents_stale() -> None:
    made = await run_in(RunStatus.COMPLETED)
    after = await last_event_id(made.run_id)
    sel = _selection(made, 1, 0, StepStatus.COMPLETED, RunStatus.COMPLETED, ["b"])
    assert await transitions.select_alternative(sel, "alice")
    a, b = await step_row(made.ids["a"]), await step_row(made.ids["b"])
    assert (a["status"], bool(a["stale"])) == ("completed", False)
    assert (b["status"], bool(b["stale"])) == ("completed", True)
    assert "'a'" in b["stale_reason"]
    assert "from alternative 1 to 2" in b["stale_reason"]
    assert (await run_row(made.run_id))["status"] == "completed"
    events = await events_since(made.run_id, after)
    assert events[0] == ("action", "a", 1, None, None, "alice", "selected alternative 2 (was 1)")
    assert [e[:2] for e in events[1:]] == [("stale", "b")]
    assert events[1][6] == b["stale_reason"]


async def test_select_alternative_with_a_changed_step_status_changes_nothing() -> None:
    made = await run_in(RunStatus.COMPLETED)  # read as waiting, but it is completed meanwhile
    before = await snapshot(made.run_id)
    assert not await transitions.select_alternative(
        _selection(made, 1, None, StepStatus.WAITING, RunStatus.WAITING), "x"
    )
    assert await snapshot(made.run_id) == before


async def test_select_alternative_with_a_changed_run_status_changes_nothing() -> None:
    made = await run_in(RunStatus.WAITING)
    before = await snapshot(made.run_id)
    sel = _selection(made, 1, None, StepStatus.WAITING, RunStatus.CANCELLED)
    assert await transitions.select_alternative(sel, "x") is False
    assert await snapshot(made.run_id) == before


async def test_select_alternative_of_an_attempt_that_did_not_complete_changes_nothing() -> None:
    made = await run_in(RunStatus.CANCELLED)  # attempt 1 of a is cancelled
    before = await snapshot(made.run_id)
    sel = _selection(made, 0, None, StepStatus.CANCELLED, RunStatus.CANCELLED)
    assert await transitions.select_alternative(sel, "x") is False
    assert await snapshot(made.run_id) == before


# --- beat ------------------------------------------------------------------------------------------


async def test_beat_refreshes_only_the_running_runs_its_owner_drives() -> None:
    mine, theirs, done = await run_in(RunStatus.RUNNING), await new_run(), await run_in(RunStatus.COMPLETED)
    undriven = await run_in(RunStatus.RUNNING)  # ours, but its driver is gone: it must stop beating
    assert await transitions.claim_run(theirs.run_id, OTHER)
    old = "2000-01-01 00:00:00+00:00"
    ids = (mine.run_id, theirs.run_id, undriven.run_id)
    await run_batch([Stmt("UPDATE runs SET heartbeat_at = ? WHERE id IN (?, ?, ?)", (old, *ids))])
    before_theirs, before_done = await snapshot(theirs.run_id), await snapshot(done.run_id)
    events_mine = (await snapshot(mine.run_id))["events"]
    assert await records.beat(OWNER, [mine.run_id, theirs.run_id, done.run_id]) == 1
    assert _when((await run_row(undriven.run_id))["heartbeat_at"]) == _when(old)
    mine_row = await run_row(mine.run_id)
    assert _when(mine_row["heartbeat_at"]) > _when(old)
    assert mine_row["status"] == "running"
    assert (await snapshot(mine.run_id))["events"] == events_mine
    assert await snapshot(theirs.run_id) == before_theirs
    assert await snapshot(done.run_id) == before_done


def _when(value: str | datetime) -> datetime:
    """A stored time as read back: text on SQLite, a timestamp on PostgreSQL."""
    return value if isinstance(value, datetime) else datetime.fromisoformat(value)


# --- the allowed-transition tables -----------------------------------------------------------------


async def test_every_status_event_written_by_the_transitions_is_allowed_by_the_tables() -> None:
    for status in RunStatus:
        await run_in(status)
    made = await run_in(RunStatus.WAITING)
    assert await transitions.select_alternative(_selection(made, 0, None, StepStatus.WAITING, RunStatus.WAITING), "x")
    made = await run_in(RunStatus.COMPLETED)
    resets = [StepReset(made.ids[k], k, StepStatus.COMPLETED) for k in ("a", "b")]
    assert await transitions.rerun_steps(made.run_id, RunStatus.COMPLETED, "a", resets, "x", "rerun")
    made = await run_in(RunStatus.RUNNING)
    assert await transitions.fail_running_run(made.run_id, "interrupted", owner=OWNER)
    rows = await fetch("SELECT kind, step_key, from_status, to_status FROM events WHERE kind IN ('run', 'step')")
    seen = {(r["kind"], r["from_status"], r["to_status"]) for r in rows}
    assert len(seen) >= 15
    for kind, frm, to in seen:
        if kind == "run" and frm is None:
            assert to == RunStatus.QUEUED  # creation
            continue
        table: dict[Any, Any] = RUN_TRANSITIONS if kind == "run" else STEP_TRANSITIONS
        enum = RunStatus if kind == "run" else StepStatus
        assert enum(to) in table[enum(frm)], f"{kind} {frm} → {to} is not in the table"


async def test_attempt_statuses_written_are_reached_only_from_running() -> None:
    for status in RunStatus:
        await run_in(status)
    rows = await fetch("SELECT DISTINCT status FROM attempts")
    assert {r["status"] for r in rows} == {s.value for s in AttemptStatus}


@pytest.mark.parametrize("case", ["cancel completed run", "cancel failed run", "reset a running step"])
async def test_transitions_refuse_a_move_the_tables_forbid(case: str) -> None:
    """The caller supplies the observed status; a move outside the tables must still be refused."""
    if case.startswith("cancel"):
        status = RunStatus(case.split()[1])
        made = await run_in(status)
        assert status not in {s for s, to in RUN_TRANSITIONS.items() if RunStatus.CANCELLED in to}
        before = await snapshot(made.run_id)
        assert await transitions.cancel_run(made.run_id, status, "alice") is False
    else:
        made = await run_in(RunStatus.RUNNING)
        assert StepStatus.PENDING not in STEP_TRANSITIONS[StepStatus.RUNNING]
        before = await snapshot(made.run_id)
        resets = [StepReset(made.ids["a"], "a", StepStatus.RUNNING)]
        assert await transitions.rerun_steps(made.run_id, RunStatus.RUNNING, "a", resets, "alice", "rerun") is False
    assert await snapshot(made.run_id) == before
