"""What people and scripts do to runs: start, rerun/resume, select, cancel (and preview a rerun).

Each operation reads the current state, decides, and commits through one guarded transition. When
a guard fails (someone acted in between) it re-reads once: a repeated call that already took
effect is a no-op, anything else is a Conflict with a message saying what changed.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from engine import records, transitions
from engine.db import current
from engine.db.base import JsonText
from engine.definitions import WorkflowDef
from engine.errors import Conflict, InvalidInput, NotFound
from engine.inputs import InputError, validate_inputs
from engine.outputs import clean_text
from engine.readmodel import RunDetail, RunDetailJson, created_run, created_run_json
from engine.registry import declared_order
from engine.store import fetch
from models.status import RUN_ACTIVE, RunStatus, StepStatus


async def start_run(defn: WorkflowDef, inputs: Mapping[str, Any], actor: str, *, from_strings: bool = False) -> int:
    """Validate the inputs and queue a new run of `defn` (the caller looks it up in its `Registry`); returns
    its id."""
    _, created = await _create(defn, inputs, actor, from_strings)
    return created.id


async def start_run_detail(
    defn: WorkflowDef, inputs: Mapping[str, Any], actor: str, *, from_strings: bool = False
) -> RunDetail:
    """`start_run`, returning the run as created (queued, or running when this process's engine claimed it
    as it was created; every step pending) without reading it back."""
    values, created = await _create(defn, inputs, actor, from_strings)
    return created_run(created.id, defn, declared_order(defn, values), actor, created.created_at, created.claimed_by)


async def start_run_json(
    defn: WorkflowDef, inputs: Mapping[str, Any], actor: str, *, from_strings: bool = False
) -> RunDetailJson:
    """`start_run_detail(...).to_json()`, its steps' part made once per definition (what the API answers)."""
    values, created = await _create(defn, inputs, actor, from_strings)
    in_order = declared_order(defn, values)
    return created_run_json(created.id, defn, in_order, actor, created.created_at, created.claimed_by)


async def _create(
    defn: WorkflowDef, inputs: Mapping[str, Any], actor: str, from_strings: bool
) -> tuple[dict[str, Any], transitions.CreatedRun]:
    """The inputs validated, and the run queued with them."""
    if not isinstance(inputs, Mapping):
        raise InvalidInput("inputs must be an object mapping input names to values")
    broken = _invalid_text(inputs)
    if broken:
        raise InvalidInput(f"inputs: {broken} contains text that is not valid Unicode", {broken: "invalid text"})
    try:
        values = validate_inputs(defn, inputs, from_strings=from_strings)
    except InputError as exc:
        raise InvalidInput(str(exc), exc.problems) from None
    new = new_run(defn, values, actor)
    claim_new = current().hub.claim_new  # the engine of this process, when it has room for the run now
    return values, await transitions.create_run(new, claim_new() if claim_new is not None else None)


def new_run(defn: WorkflowDef, values: dict[str, Any], actor: str) -> transitions.NewRun:
    """What a run of `defn` with these (validated) inputs starts from."""
    return transitions.NewRun(defn.name, JsonText(defn.snapshot_json()), values, defn.derived(_new_steps), actor)


def _new_steps(defn: WorkflowDef) -> tuple[transitions.NewStep, ...]:
    """The rows every run of `defn` starts with (made once per definition, its `needs` encoded once)."""
    return tuple(
        transitions.NewStep(s.key, s.label, s.kind, JsonText(json.dumps(list(s.needs))), s.retries) for s in defn.steps
    )


async def start_scheduled_run(defn: WorkflowDef, schedule: str, fire_time: datetime) -> int | None:
    """Queue the run of a schedule's fire time, once: None when that fire time already has its run."""
    sched = next(s for s in defn.schedules if s.name == schedule)
    try:
        values = validate_inputs(defn, sched.inputs)
    except InputError as exc:
        raise InvalidInput(str(exc), exc.problems) from None
    steps = defn.derived(_new_steps)
    fire = records.ScheduledFire(defn.name, schedule, fire_time.astimezone(UTC))
    return await transitions.create_scheduled_run(JsonText(defn.snapshot_json()), values, steps, fire)


def _encodes(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _invalid_text(value: Any, where: str = "") -> str | None:
    """Where a lone surrogate hides in the inputs (SQLite refuses them), or None."""
    if isinstance(value, str):
        return None if _encodes(value) else (where or "a value")
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not _encodes(str(key)):
                return clean_text(f"{where}.{key}" if where else str(key))
            found = _invalid_text(item, f"{where}.{key}" if where else str(key))
            if found:
                return found
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            found = _invalid_text(item, f"{where}[{i}]")
            if found:
                return found
    return None


# --- reading what an operation needs -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Run:
    id: int
    status: RunStatus
    defn: WorkflowDef
    steps: dict[str, dict[str, Any]]  # key -> row of the step with its current attempt


async def _read_run(run_id: int) -> _Run:
    rows = await fetch("SELECT id, status, definition FROM runs WHERE id = ?", (run_id,))
    if not rows:
        raise NotFound(f"run {run_id} does not exist")
    steps = await fetch(
        "SELECT s.id, s.key, s.status, s.attempt, s.stale, a.id AS attempt_id, a.status AS attempt_status, a.outputs,"
        " a.selected_index FROM steps s LEFT JOIN attempts a ON a.step_id = s.id AND a.number = s.attempt"
        " WHERE s.run_id = ? ORDER BY s.position",
        (run_id,),
    )
    definition = rows[0]["definition"]
    defn = WorkflowDef.from_snapshot(json.loads(definition) if isinstance(definition, str) else definition)
    return _Run(run_id, RunStatus(rows[0]["status"]), defn, {s["key"]: s for s in steps})


def _step(run: _Run, key: str) -> dict[str, Any]:
    try:
        return run.steps[key]
    except KeyError:
        known = ", ".join(run.steps)
        raise NotFound(f"run {run.id} has no step {key!r} (steps: {known})") from None


# --- rerun / resume --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RerunPlan:
    """What `rerun_from(run, step)` would do: steps re-run (in order) and steps kept as they are."""

    run_id: int
    step: str
    rerun: list[str]
    keep: list[str]
    allowed: bool
    reason: str | None  # why it is not allowed


def _plan(run: _Run, key: str, *also: str) -> RerunPlan:
    chosen: set[str] = set()
    for start in (key, *also):
        _step(run, start)
        chosen |= {start, *run.defn.dependents(start)}
    # Failed or cancelled steps elsewhere are retried too: the run cannot complete without them.
    for other, row in run.steps.items():
        if row["status"] in (StepStatus.FAILED, StepStatus.CANCELLED) and other not in chosen:
            chosen |= {other, *run.defn.dependents(other)}
    order = run.defn.keys()
    rerun = [k for k in order if k in chosen]
    keep = [k for k in order if k not in chosen]
    reason = None
    if run.status in RUN_ACTIVE:
        reason = f"run {run.id} is {run.status.value}: cancel it or wait until it stops"
    return RerunPlan(run.id, key, rerun, keep, reason is None, reason)


async def rerun_plan(run_id: int, step_key: str) -> RerunPlan:
    """Preview of a rerun from `step_key`: what would be re-run and what kept."""
    return _plan(await _read_run(run_id), step_key)


async def rerun_from(run_id: int, step_key: str, actor: str) -> RerunPlan:
    """Reset the step, its dependents (and failed steps elsewhere) to PENDING and queue the run.

    Their attempts stay in history and stale flags are cleared; exactly one of several concurrent
    calls takes effect, the others get a Conflict.
    """
    run = await _read_run(run_id)
    return await _apply(run, _plan(run, step_key), actor, f"rerun from step {step_key!r}")


def _stale_roots(run: _Run) -> list[str]:
    """The stale steps no other stale step leads to: re-running from them refreshes every stale step."""
    stale = [k for k, row in run.steps.items() if row["stale"]]  # in declared order
    below = {d for k in stale for d in run.defn.dependents(k)}
    return [k for k in stale if k not in below]


async def refresh_stale_plan(run_id: int) -> RerunPlan:
    """Preview of `refresh_stale`: the stale steps and what depends on them run again."""
    run = await _read_run(run_id)
    roots = _stale_roots(run)
    if not roots:
        raise Conflict(f"run {run_id} has no stale step")
    return _plan(run, *roots)


async def refresh_stale(run_id: int, actor: str) -> RerunPlan:
    """Re-run every stale step (and what depends on them), keeping everything else as it is."""
    run = await _read_run(run_id)
    roots = _stale_roots(run)
    if not roots:
        raise Conflict(f"run {run_id} has no stale step")
    return await _apply(run, _plan(run, *roots), actor, "refresh stale steps")


async def _apply(run: _Run, plan: RerunPlan, actor: str, what: str) -> RerunPlan:
    run_id, step_key = run.id, plan.step
    if not plan.allowed:
        raise Conflict(plan.reason or "rerun not allowed")
    resets = [
        transitions.StepReset(run.steps[k]["id"], k, StepStatus(run.steps[k]["status"]))
        for k in plan.rerun
        if run.steps[k]["status"] != StepStatus.RUNNING
    ]
    if len(resets) != len(plan.rerun):
        raise Conflict(f"run {run_id} still has running steps; run `main.py check` or wait for the sweep")
    action = f"{what}: " + ", ".join(plan.rerun)
    if not await transitions.rerun_steps(run_id, run.status, step_key, resets, actor, action):
        now = await _read_run(run_id)
        raise Conflict(f"run {run_id} changed meanwhile (now {now.status.value}); the rerun was not applied twice")
    return plan


async def resume_run(run_id: int, actor: str) -> RerunPlan:
    """Resume a failed or cancelled run from its first failed, cancelled (or else pending) step.

    Steps waiting for a choice keep their alternatives: resuming never pays for them again.
    """
    run = await _read_run(run_id)
    for wanted in ((StepStatus.FAILED, StepStatus.CANCELLED), (StepStatus.PENDING,)):
        for key, row in run.steps.items():
            if row["status"] in wanted:
                return await rerun_from(run_id, key, actor)
    raise Conflict(f"run {run_id} has no failed, cancelled or pending step to resume from; rerun a step instead")


# --- select ------------------------------------------------------------------------------------------


async def selection_stales(run_id: int, step_key: str) -> list[str]:
    """The steps a new choice on this (completed) step would flag stale: its dependents that ran on
    the current one. Empty for a step that waits for its first choice."""
    run = await _read_run(run_id)
    if StepStatus(_step(run, step_key)["status"]) != StepStatus.COMPLETED:
        return []
    built_on_it = (StepStatus.COMPLETED, StepStatus.WAITING)
    return [k for k in run.defn.dependents(step_key) if run.steps[k]["status"] in built_on_it]


async def select(run_id: int, step_key: str, index: int, actor: str) -> bool:
    """Pick alternative `index` of the step's current attempt; False when it was already picked.

    A WAITING step completes and its run continues; on a COMPLETED step the dependents that used the
    previous choice are flagged stale, with the reason, until they are re-run.
    """
    if isinstance(index, bool) or not isinstance(index, int):
        raise InvalidInput("index must be an integer", {"index": "must be an integer"})
    for _ in range(2):
        run = await _read_run(run_id)
        row = _step(run, step_key)
        status = StepStatus(row["status"])
        if status not in (StepStatus.WAITING, StepStatus.COMPLETED) or row["outputs"] is None:
            raise Conflict(f"step {step_key!r} is {status.value}: there is nothing to select")
        if status == StepStatus.WAITING and run.status in (RunStatus.FAILED, RunStatus.CANCELLED):
            # Its alternatives are kept for a resume; choosing now would complete a step of a stopped run.
            raise Conflict(f"run {run_id} is {run.status.value}: resume it to choose among the alternatives")
        outputs = json.loads(row["outputs"]) if isinstance(row["outputs"], str) else row["outputs"]
        if not 0 <= index < len(outputs):
            raise InvalidInput(
                f"index {index} is out of range: step {step_key!r} has {len(outputs)} alternative"
                f"{'s' if len(outputs) != 1 else ''} (0 to {len(outputs) - 1})",
                {"index": f"must be between 0 and {len(outputs) - 1}"},
            )
        if status == StepStatus.COMPLETED and row["selected_index"] == index:
            return False
        stale: list[str] = []
        if status == StepStatus.COMPLETED:
            if run.status in RUN_ACTIVE:
                raise Conflict(f"run {run_id} is {run.status.value}: change a completed selection once it stops")
            built_on_it = (StepStatus.COMPLETED, StepStatus.WAITING)
            stale = [k for k in run.defn.dependents(step_key) if run.steps[k]["status"] in built_on_it]
        sel = transitions.Selection(
            run_id=run_id,
            step_id=row["id"],
            key=step_key,
            attempt_id=row["attempt_id"],
            number=row["attempt"],
            index=index,
            previous_index=row["selected_index"],
            step_from=status,
            run_from=run.status,
            stale_keys=stale,
        )
        if await transitions.select_alternative(sel, actor):
            return True
    raise Conflict(f"step {step_key!r} of run {run_id} keeps changing; reload and try again")


# --- cancel ----------------------------------------------------------------------------------------


async def cancel_run(run_id: int, actor: str) -> bool:
    """Cancel a queued, running or waiting run; False when it was already cancelled."""
    for _ in range(3):
        run = await _read_run(run_id)
        if run.status == RunStatus.CANCELLED:
            return False
        if run.status not in (RunStatus.QUEUED, RunStatus.RUNNING, RunStatus.WAITING):
            raise Conflict(f"run {run_id} is already {run.status.value}: there is nothing to cancel")
        if await transitions.cancel_run(run_id, run.status, actor):
            return True
    raise Conflict(f"run {run_id} keeps changing; try again")
