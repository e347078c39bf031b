"""The only code that writes statuses.

Every function here is one short transaction: guarded compare-and-set updates (`… WHERE id = ?
AND status = ?`, the affected rows checked) together with their event rows, committed together or
not at all, then published on the hub. A function whose guard does not hold changes nothing and
returns False/None: the caller re-reads and decides. Nothing here awaits step work.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from engine.hub import Change, hub
from engine.store import BatchResult, Ref, Stmt, run_batch, run_batches
from models.status import RUN_TRANSITIONS, STEP_TRANSITIONS, AttemptStatus, RunStatus, StepStatus

_EVENT_SQL = (
    "INSERT INTO events (run_id, step_key, attempt, kind, from_status, to_status, actor, message, created_at)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id"
)


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class EventSpec:
    """An event row to write with a transition, and to publish once committed."""

    kind: str
    run_id: int | Ref
    step_key: str | None = None
    attempt: int | None = None
    from_status: str | None = None
    to_status: str | None = None
    actor: str | None = None
    message: str | None = None

    def stmt(self, now: datetime) -> Stmt:
        return Stmt(
            _EVENT_SQL,
            (
                self.run_id,
                self.step_key,
                self.attempt,
                self.kind,
                self.from_status,
                self.to_status,
                self.actor,
                self.message,
                now,
            ),
        )


Part = tuple[list[Stmt], Sequence[EventSpec]]


def _step_event(
    run_id: int, key: str, attempt: int, from_status: StepStatus, to_status: StepStatus, message: str | None = None
) -> EventSpec:
    return EventSpec(
        "step", run_id, step_key=key, attempt=attempt, from_status=from_status, to_status=to_status, message=message
    )


def _publish(result: BatchResult, events: Sequence[EventSpec], first_event: int, now: datetime) -> None:
    for offset, event in enumerate(events):
        rows = result.rows[first_event + offset]
        run_id = event.run_id if isinstance(event.run_id, int) else result.rows[event.run_id.index][0][0]
        hub.publish(
            Change(
                run_id=run_id,
                kind=event.kind,
                step_key=event.step_key,
                event_id=rows[0][0] if rows else None,
                data={
                    "attempt": event.attempt,
                    "from_status": event.from_status,
                    "to_status": event.to_status,
                    "actor": event.actor,
                    "message": event.message,
                    "at": now.isoformat(),
                },
            )
        )


async def _commit_parts(parts: Sequence[Part], now: datetime) -> list[BatchResult | Exception]:
    """Commit independent transitions together (each all-or-nothing); publish those that held."""
    batches = [[*stmts, *(e.stmt(now) for e in events)] for stmts, events in parts]
    results = await run_batches(batches)
    for (stmts, events), result in zip(parts, results, strict=True):
        if isinstance(result, BatchResult) and result.ok:
            _publish(result, events, len(stmts), now)
    return results


async def _commit(
    stmts: list[Stmt], events: Sequence[EventSpec], now: datetime, stopped: tuple[int, StepStatus, str] | None = None
) -> BatchResult:
    """Run one transition's statements plus its events; publish the events once committed.

    `stopped` (statement index, status, reason) names an INSERT … RETURNING of step events written
    in bulk: those are published first, so viewers receive every event in id order.
    """
    result = (await run_batches([[*stmts, *(e.stmt(now) for e in events)]]))[0]
    if isinstance(result, Exception):
        raise result
    if result.ok:
        if stopped is not None:
            index, to, reason = stopped
            _publish_stopped(result.rows[index], _run_of(events, result), to, reason, now)
        _publish(result, events, len(stmts), now)
    return result


def _run_of(events: Sequence[EventSpec], result: BatchResult) -> int:
    run_id = events[0].run_id
    return run_id if isinstance(run_id, int) else int(result.rows[run_id.index][0][0])


# --- runs ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NewStep:
    key: str
    label: str
    kind: str
    needs: list[str]


async def create_run(
    workflow: str, definition: dict[str, Any], inputs: dict[str, Any], steps: Sequence[NewStep], actor: str
) -> int:
    """Insert a QUEUED run with its PENDING steps; returns the run id."""
    run_id = await _create_run(workflow, definition, inputs, steps, actor, None)
    assert run_id is not None  # nothing but a fire time can be taken already
    return run_id


async def create_scheduled_run(
    definition: dict[str, Any], inputs: dict[str, Any], steps: Sequence[NewStep], fire: ScheduledFire
) -> int | None:
    """`create_run` for a fire time of a schedule, claiming the fire time in the same commit: None when
    it was claimed already (a double firing), and then nothing is written."""
    return await _create_run(fire.workflow, definition, inputs, steps, f"schedule:{fire.schedule}", fire)


async def _create_run(
    workflow: str,
    definition: dict[str, Any],
    inputs: dict[str, Any],
    steps: Sequence[NewStep],
    actor: str,
    fire: ScheduledFire | None,
) -> int | None:
    now = utcnow()
    run = Stmt(
        "INSERT INTO runs (workflow, definition, inputs, status, actor, recoveries, schedule, scheduled_for,"
        " created_at, updated_at) VALUES (?, ?, ?, ?, ?, 0, ?, ?, ?, ?) RETURNING id",
        (
            workflow,
            definition,
            inputs,
            RunStatus.QUEUED,
            actor,
            fire.schedule if fire else None,
            fire.fire_time if fire else None,
            now,
            now,
        ),
        guard=True,
    )
    step_rows = Stmt(
        "INSERT INTO steps (run_id, key, label, position, kind, needs, status, attempt, stale, updated_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, 0, FALSE, ?)",
        many=[(Ref(0), s.key, s.label, i, s.kind, s.needs, StepStatus.PENDING, now) for i, s in enumerate(steps)],
    )
    stmts = [run, step_rows]
    message = f"started a run of {workflow!r}"
    if fire is not None:
        stmts.append(_fire_stmt(fire, "started", Ref(0), None, now))
        message += f" for its fire time {fire.fire_time.isoformat()}"
    events = [
        EventSpec("action", Ref(0), actor=actor, message=message),
        EventSpec("run", Ref(0), to_status=RunStatus.QUEUED, actor=actor),
    ]
    result = await _commit(stmts, events, now)
    if not result.ok:
        return None
    return int(result.rows[0][0][0])


@dataclass(frozen=True, slots=True)
class ScheduledFire:
    workflow: str
    schedule: str
    fire_time: datetime  # UTC


def _fire_stmt(fire: ScheduledFire, outcome: str, run_id: Ref | None, detail: str | None, now: datetime) -> Stmt:
    return Stmt(
        "INSERT INTO schedule_fires (workflow, schedule, fire_time, outcome, run_id, detail, created_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (workflow, schedule, fire_time) DO NOTHING",
        (fire.workflow, fire.schedule, fire.fire_time, outcome, run_id, detail, now),
        guard=True,
    )


async def record_fires(fires: Sequence[ScheduledFire], outcome: str, detail: str | None = None) -> None:
    """`record_fire` for many fire times in one commit; those already recorded are left as they are."""
    if not fires:
        return
    now = utcnow()
    rows = [(f.workflow, f.schedule, f.fire_time, outcome, None, detail, now) for f in fires]
    await run_batch(
        [
            Stmt(
                "INSERT INTO schedule_fires (workflow, schedule, fire_time, outcome, run_id, detail, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (workflow, schedule, fire_time) DO NOTHING",
                many=rows,
            )
        ]
    )


async def record_fire(fire: ScheduledFire, outcome: str, detail: str | None = None) -> bool:
    """Record a fire time that started no run (missed while down, or paused); False if already recorded."""
    now = utcnow()
    return (await run_batch([_fire_stmt(fire, outcome, None, detail, now)])).ok


async def claim_run(run_id: int, owner: str) -> bool:
    """QUEUED → RUNNING for `owner`; applies only to QUEUED rows, returns False otherwise."""
    now = utcnow()
    claim = Stmt(
        "UPDATE runs SET status = ?, owner = ?, heartbeat_at = ?, started_at = COALESCE(started_at, ?),"
        " finished_at = NULL, error = NULL, updated_at = ? WHERE id = ? AND status = ?",
        (RunStatus.RUNNING, owner, now, now, now, run_id, RunStatus.QUEUED),
        guard=True,
    )
    event = EventSpec("run", run_id, from_status=RunStatus.QUEUED, to_status=RunStatus.RUNNING, message=owner)
    return (await _commit([claim], [event], now)).ok


async def finish_run(run_id: int, owner: str, to: RunStatus, error: str | None = None) -> bool:
    """RUNNING → WAITING/COMPLETED/FAILED by its owner; applies only to RUNNING rows it owns.

    Also guarded on the steps: never while one of them runs, and a selection committed meanwhile
    cannot leave a run WAITING with no waiting step, or COMPLETED with an unfinished one. The driver
    then re-reads and goes on.
    """
    assert to in (RunStatus.WAITING, RunStatus.COMPLETED, RunStatus.FAILED)
    now = utcnow()
    finished_at = None if to == RunStatus.WAITING else now
    steps_guard = " AND NOT EXISTS (SELECT 1 FROM steps s WHERE s.run_id = ? AND s.status = ?)"
    params: list[Any] = [run_id, StepStatus.RUNNING]
    if to == RunStatus.WAITING:
        steps_guard += " AND EXISTS (SELECT 1 FROM steps s WHERE s.run_id = ? AND s.status = ?)"
        params += [run_id, StepStatus.WAITING]
    elif to == RunStatus.COMPLETED:
        steps_guard += " AND NOT EXISTS (SELECT 1 FROM steps s WHERE s.run_id = ? AND s.status != ?)"
        params += [run_id, StepStatus.COMPLETED]
    update = Stmt(
        "UPDATE runs SET status = ?, error = ?, owner = NULL, heartbeat_at = NULL, finished_at = ?, updated_at = ?"
        " WHERE id = ? AND status = ? AND owner = ?" + steps_guard,
        (to, error, finished_at, now, run_id, RunStatus.RUNNING, owner, *params),
        guard=True,
    )
    event = EventSpec("run", run_id, from_status=RunStatus.RUNNING, to_status=to, message=error)
    return (await _commit([update], [event], now)).ok


def _running_guard(run_id: int, owner: str | None, heartbeat_at: Any) -> tuple[str, tuple[Any, ...]]:
    """WHERE clause for a RUNNING run, owned by `owner` and with the heartbeat read, when given."""
    sql = "WHERE id = ? AND status = ?" + (" AND owner = ?" if owner else "")
    params: tuple[Any, ...] = (run_id, RunStatus.RUNNING, *((owner,) if owner else ()))
    if heartbeat_at is not ...:
        sql += " AND heartbeat_at IS ?"
        params += (heartbeat_at,)
    return sql, params


async def fail_running_run(
    run_id: int, reason: str, *, owner: str | None = None, actor: str | None = None, heartbeat_at: Any = ...
) -> bool:
    """RUNNING → FAILED with its running steps and attempts (interruption, orphan, shutdown).

    Applies only to a RUNNING run, owned by `owner` when given and, when `heartbeat_at` is given
    (the sweep), still with the heartbeat that was judged stale; returns False otherwise.
    """
    now = utcnow()
    guard_sql, guard_params = _running_guard(run_id, owner, heartbeat_at)
    stmts = [
        Stmt(
            "UPDATE runs SET status = ?, error = ?, owner = NULL, heartbeat_at = NULL, finished_at = ?,"
            f" updated_at = ? {guard_sql}",
            (RunStatus.FAILED, reason, now, now, *guard_params),
            guard=True,
        ),
        *_stop_running_steps(run_id, StepStatus.FAILED, AttemptStatus.FAILED, reason, now),
    ]
    events = [
        EventSpec("run", run_id, from_status=RunStatus.RUNNING, to_status=RunStatus.FAILED, actor=actor, message=reason)
    ]
    return (await _commit(stmts, events, now, stopped=(1, StepStatus.FAILED, reason))).ok


async def requeue_interrupted(
    run_id: int, reason: str, *, owner: str | None = None, heartbeat_at: Any = ..., count: bool = True
) -> bool:
    """RUNNING → QUEUED after an interruption (policy `resume`): the running attempts are failed
    with `reason` and kept in history, their steps go back to PENDING (two events each: running →
    failed → pending), so the next claim runs them as new attempts. `count` adds one to the run's
    recoveries (a crash; a graceful shutdown does not count).

    Same guards as `fail_running_run`; returns False otherwise.
    """
    now = utcnow()
    guard_sql, guard_params = _running_guard(run_id, owner, heartbeat_at)
    event_sql = (
        "INSERT INTO events (run_id, step_key, attempt, kind, from_status, to_status, actor, message, created_at)"
        " SELECT run_id, key, attempt, 'step', ?, ?, NULL, ?, ? FROM steps WHERE run_id = ? AND status = ?"
        " ORDER BY position RETURNING id, step_key, attempt"
    )
    stmts = [
        Stmt(
            "UPDATE runs SET status = ?, error = NULL, owner = NULL, heartbeat_at = NULL,"
            f" recoveries = recoveries + ?, updated_at = ? {guard_sql}",
            (RunStatus.QUEUED, 1 if count else 0, now, *guard_params),
            guard=True,
        ),
        Stmt(event_sql, (StepStatus.RUNNING, StepStatus.FAILED, reason, now, run_id, StepStatus.RUNNING)),
        Stmt(event_sql, (StepStatus.FAILED, StepStatus.PENDING, "re-queued", now, run_id, StepStatus.RUNNING)),
        Stmt(
            "UPDATE attempts SET status = ?, error = COALESCE(error, ?), finished_at = ?"
            " WHERE run_id = ? AND status = ?",
            (AttemptStatus.FAILED, reason, now, run_id, AttemptStatus.RUNNING),
        ),
        Stmt(
            "UPDATE steps SET status = ?, updated_at = ? WHERE run_id = ? AND status = ?",
            (StepStatus.PENDING, now, run_id, StepStatus.RUNNING),
        ),
    ]
    events = [
        EventSpec("run", run_id, from_status=RunStatus.RUNNING, to_status=RunStatus.QUEUED, message=reason),
    ]
    result = (await run_batches([[*stmts, *(e.stmt(now) for e in events)]]))[0]
    if isinstance(result, Exception):
        raise result
    if result.ok:
        _publish_stopped(result.rows[1], run_id, StepStatus.FAILED, reason, now)
        _publish_stopped(result.rows[2], run_id, StepStatus.PENDING, "re-queued", now, StepStatus.FAILED)
        _publish(result, events, len(stmts), now)
    return result.ok


def _publish_stopped(
    rows: list[tuple[Any, ...]],
    run_id: int,
    to: StepStatus,
    reason: str,
    now: datetime,
    from_status: StepStatus = StepStatus.RUNNING,
) -> None:
    for event_id, key, attempt in rows:
        data = {"attempt": attempt, "from_status": from_status, "to_status": to, "message": reason}
        hub.publish(Change(run_id, "step", step_key=key, event_id=event_id, data={**data, "at": now.isoformat()}))


def _stop_running_steps(
    run_id: int, step_to: StepStatus, attempt_to: AttemptStatus, reason: str, now: datetime
) -> list[Stmt]:
    """Statements moving a run's RUNNING attempts and steps to a final status, with step events."""
    return [
        Stmt(
            "INSERT INTO events (run_id, step_key, attempt, kind, from_status, to_status, actor, message, created_at)"
            " SELECT run_id, key, attempt, 'step', status, ?, NULL, ?, ? FROM steps WHERE run_id = ? AND status = ?"
            " RETURNING id, step_key, attempt",
            (step_to, reason, now, run_id, StepStatus.RUNNING),
        ),
        Stmt(
            "UPDATE attempts SET status = ?, error = COALESCE(error, ?), finished_at = ?"
            " WHERE run_id = ? AND status = ?",
            (attempt_to, reason, now, run_id, AttemptStatus.RUNNING),
        ),
        Stmt(
            "UPDATE steps SET status = ?, updated_at = ? WHERE run_id = ? AND status = ?",
            (step_to, now, run_id, StepStatus.RUNNING),
        ),
    ]


async def cancel_run(run_id: int, from_status: RunStatus, actor: str) -> bool:
    """QUEUED/RUNNING/WAITING → CANCELLED with running steps and attempts; guard on `from_status`."""
    if RunStatus.CANCELLED not in RUN_TRANSITIONS[from_status]:
        return False
    now = utcnow()
    reason = f"cancelled by {actor}"
    stmts = [
        Stmt(
            "UPDATE runs SET status = ?, error = ?, owner = NULL, heartbeat_at = NULL, finished_at = ?, updated_at = ?"
            " WHERE id = ? AND status = ?",
            (RunStatus.CANCELLED, reason, now, now, run_id, from_status),
            guard=True,
        ),
        *_stop_running_steps(run_id, StepStatus.CANCELLED, AttemptStatus.CANCELLED, reason, now),
    ]
    events = [
        EventSpec("action", run_id, actor=actor, message="cancelled the run"),
        EventSpec("run", run_id, from_status=from_status, to_status=RunStatus.CANCELLED, actor=actor),
    ]
    return (await _commit(stmts, events, now, stopped=(1, StepStatus.CANCELLED, reason))).ok


@dataclass(frozen=True, slots=True)
class StepReset:
    step_id: int
    key: str
    from_status: StepStatus


async def rerun_steps(
    run_id: int, run_from: RunStatus, root_key: str, resets: Sequence[StepReset], actor: str, action: str
) -> bool:
    """Run (not running) → QUEUED, and each named step → PENDING with its stale flag cleared.

    Guards: the run is still in `run_from` and every step still has the status it was read with.
    Steps already PENDING are guarded but get no event (nothing changes for them).
    """
    if RunStatus.QUEUED not in RUN_TRANSITIONS[run_from] or any(
        r.from_status != StepStatus.PENDING and StepStatus.PENDING not in STEP_TRANSITIONS[r.from_status]
        for r in resets
    ):
        return False
    now = utcnow()
    stmts = [
        Stmt(
            "UPDATE runs SET status = ?, error = NULL, finished_at = NULL, owner = NULL, heartbeat_at = NULL,"
            " recoveries = 0, updated_at = ? WHERE id = ? AND status = ?",  # a person took over: a fresh count
            (RunStatus.QUEUED, now, run_id, run_from),
            guard=True,
        ),
        Stmt(
            "UPDATE steps SET status = ?, stale = FALSE, stale_reason = NULL, updated_at = ?"
            " WHERE id = ? AND status = ?",
            many=[(StepStatus.PENDING, now, r.step_id, r.from_status) for r in resets],
            guard=True,
        ),
    ]
    events = [
        EventSpec("action", run_id, step_key=root_key, actor=actor, message=action),
        *(
            EventSpec("step", run_id, step_key=r.key, from_status=r.from_status, to_status=StepStatus.PENDING)
            for r in resets
            if r.from_status != StepStatus.PENDING
        ),
        EventSpec("run", run_id, from_status=run_from, to_status=RunStatus.QUEUED, actor=actor),
    ]
    return (await _commit(stmts, events, now)).ok


# --- steps and attempts ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StepStart:
    """What starting a step needs: a new attempt `number`, and what it consumed from its needs."""

    run_id: int
    step_id: int
    key: str
    number: int
    needs: Sequence[str]
    consumed: dict[str, Any]
    owner: str


def _start_part(start: StepStart, now: datetime) -> Part:
    # Readiness is checked by the database too: every need must be COMPLETED when the step starts.
    needs_done = ""
    params: list[Any] = [StepStatus.RUNNING, start.number, now, start.step_id, StepStatus.PENDING]
    params += [start.run_id, RunStatus.RUNNING, start.owner]
    if start.needs:
        marks = ", ".join("?" for _ in start.needs)
        needs_done = (
            f" AND NOT EXISTS (SELECT 1 FROM steps n WHERE n.run_id = ? AND n.key IN ({marks}) AND n.status != ?)"
        )
        params += [start.run_id, *start.needs, StepStatus.COMPLETED]
    stmts = [
        Stmt(
            "UPDATE steps SET status = ?, attempt = ?, updated_at = ? WHERE id = ? AND status = ?"
            " AND EXISTS (SELECT 1 FROM runs WHERE runs.id = ? AND runs.status = ? AND runs.owner = ?)" + needs_done,
            params,
            guard=True,
        ),
        Stmt(
            "INSERT INTO attempts (run_id, step_id, number, status, consumed, logs, owner, started_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
            (start.run_id, start.step_id, start.number, AttemptStatus.RUNNING, start.consumed, [], start.owner, now),
        ),
    ]
    event = _step_event(start.run_id, start.key, start.number, StepStatus.PENDING, StepStatus.RUNNING)
    return stmts, [event]


def _started_attempt(result: BatchResult | Exception) -> int | None:
    if isinstance(result, BatchResult) and result.ok:
        return int(result.rows[1][0][0])
    return None


async def start_step(start: StepStart) -> int | None:
    """PENDING → RUNNING with a new attempt; returns its id.

    Applies only to a PENDING step whose needs are all COMPLETED, of a RUNNING run owned by
    `start.owner`; returns None otherwise.
    """
    now = utcnow()
    return _started_attempt((await _commit_parts([_start_part(start, now)], now))[0])


@dataclass(frozen=True, slots=True)
class AttemptRef:
    run_id: int
    step_id: int
    key: str
    attempt_id: int
    number: int


async def complete_step(
    ref: AttemptRef,
    outputs: list[Any],
    selected_index: int | None,
    logs: list[str],
    progress: float | None,
    progress_message: str | None,
) -> bool:
    """Attempt RUNNING → COMPLETED; step RUNNING → COMPLETED (or WAITING when nothing is selected).

    Applies only while both are RUNNING and the attempt is still the step's current one; a result
    that arrives later is recorded as a late-result event instead and changes nothing.
    """
    done, _ = await complete_step_and_start(ref, outputs, selected_index, logs, progress, progress_message, ())
    return done


async def complete_step_and_start(
    ref: AttemptRef,
    outputs: list[Any],
    selected_index: int | None,
    logs: list[str],
    progress: float | None,
    progress_message: str | None,
    starts: Sequence[StepStart],
    llm: dict[str, Any] | None = None,
) -> tuple[bool, list[int | None]]:
    """`complete_step`, then `start_step` for each of `starts`, sharing one commit.

    Each is its own guarded transition (a start whose guard fails changes nothing); the starts see
    the completion, so a successor starts only once this step is COMPLETED.
    """
    now = utcnow()
    to = StepStatus.COMPLETED if selected_index is not None else StepStatus.WAITING
    stmts = [
        Stmt(
            "UPDATE attempts SET status = ?, outputs = ?, selected_index = ?, logs = ?, progress = ?,"
            " progress_message = ?, finished_at = ? WHERE id = ? AND status = ?",
            (
                AttemptStatus.COMPLETED,
                outputs,
                selected_index,
                logs,
                progress,
                progress_message,
                now,
                ref.attempt_id,
                AttemptStatus.RUNNING,
            ),
            guard=True,
        ),
        _step_from_running(ref, to, now),
        *_llm_stmts(ref, llm, AttemptStatus.COMPLETED, now),
    ]
    event = _step_event(ref.run_id, ref.key, ref.number, StepStatus.RUNNING, to)
    results = await _commit_parts([(stmts, [event]), *(_start_part(s, now) for s in starts)], now)
    if isinstance(results[0], Exception):
        raise results[0]
    if not results[0].ok:
        await record_late_result(ref, "completed", llm)
        return False, [None] * len(starts)
    return True, [_started_attempt(r) for r in results[1:]]


async def fail_step(
    ref: AttemptRef,
    error: str,
    detail: str | None,
    logs: list[str],
    partial_output: str | None = None,
    llm: dict[str, Any] | None = None,
) -> bool:
    """Attempt and step RUNNING → FAILED with the error; same guards and late handling as completion."""
    now = utcnow()
    stmts = [
        Stmt(
            "UPDATE attempts SET status = ?, error = ?, error_detail = ?, logs = ?, partial_output = ?, finished_at = ?"
            " WHERE id = ? AND status = ?",
            (AttemptStatus.FAILED, error, detail, logs, partial_output, now, ref.attempt_id, AttemptStatus.RUNNING),
            guard=True,
        ),
        _step_from_running(ref, StepStatus.FAILED, now),
        *_llm_stmts(ref, llm, AttemptStatus.FAILED, now),
    ]
    event = _step_event(ref.run_id, ref.key, ref.number, StepStatus.RUNNING, StepStatus.FAILED, error)
    if (await _commit(stmts, [event], now)).ok:
        return True
    await record_late_result(ref, f"failed: {error}", llm)
    return False


def _step_from_running(ref: AttemptRef, to: StepStatus, now: datetime) -> Stmt:
    return Stmt(
        "UPDATE steps SET status = ?, updated_at = ? WHERE id = ? AND status = ? AND attempt = ?",
        (to, now, ref.step_id, StepStatus.RUNNING, ref.number),
        guard=True,
    )


async def keep_partial_output(
    ref: AttemptRef, partial_output: str | None, logs: list[str], llm: dict[str, Any] | None = None
) -> bool:
    """Store what an attempt produced before it was stopped; applies only to CANCELLED/FAILED attempts."""
    result = await run_batch(
        [
            Stmt(
                "UPDATE attempts SET partial_output = COALESCE(?, partial_output), logs = ?"
                " WHERE id = ? AND status IN (?, ?)",
                (partial_output, logs, ref.attempt_id, AttemptStatus.CANCELLED, AttemptStatus.FAILED),
                guard=True,
            ),
            *_llm_stmts(ref, llm, AttemptStatus.CANCELLED, utcnow()),
        ]
    )
    return result.ok


async def save_partial(
    ref: AttemptRef, partial_output: str | None, llm: dict[str, Any] | None, *, final: bool = False
) -> None:
    """Checkpoint what a running attempt has produced so far (streamed text, LLM usage); no status changes.

    `final`: the attempt is about to end without a result of its own (re-queued at shutdown): its
    usage rows are written now, since the tokens were spent.
    """
    now = utcnow()
    await run_batch(
        [
            Stmt(
                "UPDATE attempts SET partial_output = COALESCE(?, partial_output), llm = COALESCE(?, llm)"
                " WHERE id = ? AND status = ?",
                (partial_output, llm, ref.attempt_id, AttemptStatus.RUNNING),
            ),
            *(_llm_stmts(ref, llm, AttemptStatus.FAILED, now) if final else []),
        ]
    )


_USAGE_SQL = (
    "INSERT INTO llm_usage (run_id, attempt_id, workflow, step_key, alternative, provider, model, max_tokens,"
    " prompt_tokens, completion_tokens, peak_call_tokens, finish_reason, truncated, continuations, outcome, created_at)"
    " SELECT id, ?, workflow, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ? FROM runs WHERE id = ?"
    " ON CONFLICT (attempt_id, alternative) DO NOTHING"
)


def _llm_stmts(ref: AttemptRef, llm: dict[str, Any] | None, outcome: AttemptStatus, now: datetime) -> list[Stmt]:
    """Store an attempt's LLM record and one usage row per alternative that made a call."""
    if llm is None:
        return []
    rows = [
        (
            ref.attempt_id,
            ref.key,
            alt["index"],
            llm["provider"],
            llm["model"],
            llm["max_tokens"],
            alt["prompt_tokens"],
            alt["completion_tokens"],
            alt["peak_call_tokens"],
            alt["finish_reason"],
            alt["truncated"],
            alt["continuations"],
            outcome,
            now,
            ref.run_id,
        )
        for alt in llm["alternatives"]
        if alt["calls"]
    ]
    stmts = [Stmt("UPDATE attempts SET llm = ? WHERE id = ?", (llm, ref.attempt_id))]
    if rows:
        stmts.append(Stmt(_USAGE_SQL, many=rows))
    return stmts


async def record_late_result(ref: AttemptRef, what: str, llm: dict[str, Any] | None = None) -> None:
    """Record that an attempt's result arrived after it had already ended; writes no status, but
    keeps what its model calls cost (the tokens were spent)."""
    now = utcnow()
    message = f"late result discarded: attempt {ref.number} {what} after it had already ended"
    event = EventSpec("late_result", ref.run_id, step_key=ref.key, attempt=ref.number, message=message)
    await _commit(_llm_stmts(ref, llm, AttemptStatus.FAILED, now), [event], now)


@dataclass(frozen=True, slots=True)
class Selection:
    run_id: int
    step_id: int
    key: str
    attempt_id: int
    number: int
    index: int
    previous_index: int | None
    step_from: StepStatus  # WAITING or COMPLETED, as read
    run_from: RunStatus  # as read; a WAITING run is re-queued
    stale_keys: Sequence[str]  # completed or waiting dependents built on the previous choice


async def select_alternative(sel: Selection, actor: str) -> bool:
    """Set the selected alternative of the current attempt; WAITING → COMPLETED; flag stale dependents.

    Guards: the attempt is COMPLETED and current, the step and run still have the statuses read.
    """
    now = utcnow()
    step_to = StepStatus.COMPLETED
    stmts = [
        Stmt(
            "UPDATE attempts SET selected_index = ? WHERE id = ? AND status = ?",
            (sel.index, sel.attempt_id, AttemptStatus.COMPLETED),
            guard=True,
        ),
        Stmt(
            "UPDATE steps SET status = ?, updated_at = ? WHERE id = ? AND status = ? AND attempt = ?",
            (step_to, now, sel.step_id, sel.step_from, sel.number),
            guard=True,
        ),
        Stmt("UPDATE runs SET updated_at = ? WHERE id = ? AND status = ?", (now, sel.run_id, sel.run_from), guard=True),
    ]
    events = [
        EventSpec(
            "action",
            sel.run_id,
            step_key=sel.key,
            attempt=sel.number,
            actor=actor,
            message=f"selected alternative {sel.index + 1}"
            + (f" (was {sel.previous_index + 1})" if sel.previous_index is not None else ""),
        )
    ]
    if sel.step_from != step_to:
        events.append(_step_event(sel.run_id, sel.key, sel.number, sel.step_from, step_to))
    if sel.stale_keys:
        reason = (
            f"upstream step {sel.key!r} changed its selection from alternative "
            f"{(sel.previous_index or 0) + 1} to {sel.index + 1} ({actor}, {now:%Y-%m-%d %H:%M:%S} UTC);"
            " re-run to refresh"
        )
        stmts.append(
            Stmt(
                "UPDATE steps SET stale = TRUE, stale_reason = ?, updated_at = ?"
                " WHERE run_id = ? AND key = ? AND status IN (?, ?)",
                many=[
                    (reason, now, sel.run_id, key, StepStatus.COMPLETED, StepStatus.WAITING) for key in sel.stale_keys
                ],
            )
        )
        events.extend(EventSpec("stale", sel.run_id, step_key=key, message=reason) for key in sel.stale_keys)
    if sel.run_from == RunStatus.WAITING:
        stmts.append(
            Stmt(
                "UPDATE runs SET status = ?, updated_at = ? WHERE id = ? AND status = ?",
                (RunStatus.QUEUED, now, sel.run_id, RunStatus.WAITING),
                guard=True,
            )
        )
        events.append(
            EventSpec("run", sel.run_id, from_status=RunStatus.WAITING, to_status=RunStatus.QUEUED, actor=actor)
        )
    return (await _commit(stmts, events, now)).ok


# --- liveness --------------------------------------------------------------------------------


async def beat(owner: str, run_ids: Sequence[int]) -> int:
    """Refresh `heartbeat_at` of the RUNNING runs of `owner` that it still drives (no status write).

    Only runs with a live driver: a run whose driver died stops beating, and the sweep fails it.
    """
    if not run_ids:
        return 0
    now = utcnow()
    marks = ", ".join("?" for _ in run_ids)
    result = await run_batch(
        [
            Stmt(
                f"UPDATE runs SET heartbeat_at = ? WHERE owner = ? AND status = ? AND id IN ({marks})",
                (now, owner, RunStatus.RUNNING, *run_ids),
            )
        ]
    )
    return result.rowcounts[0]


async def release_run(run_id: int, owner: str, why: str) -> bool:
    """RUNNING → QUEUED for a run claimed but never driven (its engine is stopping); applies only
    to a RUNNING run owned by `owner` with no step started since the claim."""
    now = utcnow()
    update = Stmt(
        "UPDATE runs SET status = ?, owner = NULL, heartbeat_at = NULL, updated_at = ?"
        " WHERE id = ? AND status = ? AND owner = ?"
        " AND NOT EXISTS (SELECT 1 FROM steps s WHERE s.run_id = ? AND s.status = ?)",
        (RunStatus.QUEUED, now, run_id, RunStatus.RUNNING, owner, run_id, StepStatus.RUNNING),
        guard=True,
    )
    event = EventSpec("run", run_id, from_status=RunStatus.RUNNING, to_status=RunStatus.QUEUED, message=why)
    return (await _commit([update], [event], now)).ok
