"""Transitions of runs: create, claim, finish, fail or re-queue after an interruption, cancel, rerun,
release, and a person's selection (which may re-queue a waiting run)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from engine import events, leases, logs, records
from engine.db import current
from engine.db.base import Batch, BatchResult, JsonText, Ref, Stmt
from engine.events import EventSpec, Stopped
from engine.hub import Change, ChangeKind
from engine.notify import kinds as notify
from engine.records import ScheduledFire, fire_stmt
from engine.store import run_batches
from models.status import RUN_TRANSITIONS, STEP_TRANSITIONS, AttemptStatus, RunStatus, StepStatus

log = logs.logger(__name__)

ACTION, RUN, STALE = ChangeKind.ACTION, ChangeKind.RUN, ChangeKind.STALE


async def _commit(
    stmts: list[Stmt], evs: Sequence[EventSpec], stopped: Sequence[Stopped] = (), now: datetime | None = None
) -> bool:
    """One transition: its statements and event rows in one transaction; True if every guard held."""
    return await _commit_batch(events.batch(stmts, evs, now or records.utcnow(), stopped))


async def _commit_batch(batch: Batch) -> bool:
    result = (await run_batches([batch]))[0]
    if isinstance(result, Exception):
        raise result
    return result.ok


@dataclass(frozen=True, slots=True)
class NewStep:
    key: str
    label: str
    kind: str
    needs: list[str] | JsonText  # the keys, or their JSON list encoded already
    retries: int = 0  # automatic retries its policy allows (shown as "attempt 2 of 3")


@dataclass(frozen=True, slots=True)
class NewRun:
    """What a run starts from: its workflow, the definition's snapshot, its inputs and steps, and who starts it."""

    workflow: str
    definition: Mapping[str, Any] | JsonText
    inputs: dict[str, Any]
    steps: Sequence[NewStep]
    actor: str


@dataclass(frozen=True, slots=True)
class CreatedRun:
    """A run as `create_run` wrote it: its id and creation time as stored, and whether it was claimed as
    it was created (`NewRunClaim`: RUNNING, its owner's; else QUEUED)."""

    id: int
    created_at: datetime
    claimed_by: str | None = None


class NewRunClaim(Protocol):
    """An engine of this process that claims a run as it is created, because it has room for it now
    (`Engine.claim_new`): the run is written RUNNING and owned, with the claim's event, in the commit
    that creates it, instead of QUEUED and claimed in a commit of its own."""

    owner: str

    def adopt(self, claimed: ClaimedRun) -> None:
        """Drive the run: called on the event loop once the creation committed, before its changes are
        published, whether or not the caller of `create_run` still waits for it."""

    def release(self) -> None:
        """The creation is over (committed or not): the room kept for it is free again unless `adopt`
        took it. Called once the caller stops waiting for it."""


async def create_run(new: NewRun, claim: NewRunClaim | None = None) -> CreatedRun:
    """Insert a QUEUED run with its PENDING steps; with `claim`, RUNNING for `claim.owner` already, its
    claim in the same commit (the claim's event follows the creation's), then adopted (`NewRunClaim`)."""
    try:
        created = await _create_run(new, None, claim)
    finally:
        if claim is not None:
            claim.release()
    assert created is not None  # nothing but a fire time can be taken already
    return created


async def create_scheduled_run(
    definition: Mapping[str, Any] | JsonText, inputs: dict[str, Any], steps: Sequence[NewStep], fire: ScheduledFire
) -> int | None:
    """`create_run` for a fire time of a schedule, claiming the fire time in the same commit: None when
    it was claimed already (a double firing), and then nothing is written."""
    new = NewRun(fire.workflow, definition, inputs, steps, f"schedule:{fire.schedule}")
    created = await _create_run(new, fire, None)
    return created.id if created is not None else None


async def _create_run(new: NewRun, fire: ScheduledFire | None, claim: NewRunClaim | None) -> CreatedRun | None:
    now = records.utcnow()
    owner = claim.owner if claim is not None else None
    run = Stmt(
        "INSERT INTO runs (workflow, definition, inputs, status, actor, owner, heartbeat_at, started_at, recoveries,"
        " schedule, scheduled_for, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0, ?, ?, ?, ?)"
        " RETURNING id, created_at",
        (
            new.workflow,
            new.definition,
            new.inputs,
            RunStatus.QUEUED if claim is None else RunStatus.RUNNING,
            new.actor,
            owner,
            None if claim is None else now,
            None if claim is None else now,
            fire.schedule if fire else None,
            fire.fire_time if fire else None,
            now,
            now,
        ),
        guard=True,
    )
    step_rows = Stmt(
        "INSERT INTO steps (run_id, key, label, position, kind, needs, status, attempt, stale, retries, retries_used,"
        " updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, 0, FALSE, ?, 0, ?)",
        many=[
            (Ref(0), s.key, s.label, i, s.kind, s.needs, StepStatus.PENDING, s.retries, now)
            for i, s in enumerate(new.steps)
        ],
    )
    stmts = [run, step_rows]
    message = f"started a run of {new.workflow!r}"
    if fire is not None:
        stmts.append(fire_stmt(fire, "started", Ref(0), None, now))
        message += f" for its fire time {fire.fire_time.isoformat()}"
    evs = [
        EventSpec(ACTION, Ref(0), actor=new.actor, message=message),
        EventSpec(RUN, Ref(0), to_status=RunStatus.QUEUED, actor=new.actor),
    ]
    batch = events.batch(stmts, evs, now) if claim is None else _claimed_at_creation(stmts, evs, now, claim)
    result = (await run_batches([batch]))[0]
    if isinstance(result, Exception):
        raise result
    if not result.ok:
        return None
    run_id, created_at = result.rows[0][0]
    return CreatedRun(
        int(run_id), created_at if isinstance(created_at, datetime) else datetime.fromisoformat(created_at), owner
    )


def _claimed_at_creation(stmts: list[Stmt], evs: list[EventSpec], now: datetime, claim: NewRunClaim) -> Batch:
    """The creation's batch for a run written RUNNING: the claim's event after the creation's, the run's
    steps read back for its driver, and the driver started (`NewRunClaim.adopt`) before the changes are
    published, so that its engine knows the queued run is its own."""
    read = len(stmts)
    stmts = [*stmts, Stmt(STEP_ROWS_SQL, (Ref(0),))]
    claimed = EventSpec(RUN, Ref(0), from_status=RunStatus.QUEUED, to_status=RunStatus.RUNNING, message=claim.owner)
    batch = events.batch(stmts, [*evs, claimed], now)
    definition, inputs = stmts[0].params[1], dict(stmts[0].params[2])  # its steps' own, as if read back
    publish = batch.on_commit
    assert publish is not None

    def on_commit(result: BatchResult) -> None:
        try:
            claim.adopt(ClaimedRun(result.rows[0][0][0], definition, inputs, result.rows[read]))
        finally:
            publish(result)

    return dataclasses.replace(batch, on_commit=on_commit)


# What a run's driver reads of its steps: each with its current attempt's outcome (`RunDriver._refresh`).
STEP_ROWS_SQL = (
    "SELECT s.id, s.key, s.status, s.attempt, s.retries_used, s.retry_at, a.outputs, a.selected_index, a.error"
    " FROM steps s LEFT JOIN attempts a ON a.step_id = s.id AND a.number = s.attempt WHERE s.run_id = ?"
)


@dataclass(frozen=True, slots=True)
class ClaimedRun:
    """A run `claim_runs` claimed, with what its driver reads first, read in the claim's transaction: the
    definition and inputs as stored, and its steps' rows (the columns of `STEP_ROWS_SQL`)."""

    id: int
    definition: Any
    inputs: Any
    steps: list[tuple[Any, ...]]


def _claim_batch(run_id: int, owner: str, now: datetime, *, load: bool) -> Batch:
    lease = leases.live_lease_sql("?")
    claim = Stmt(
        "UPDATE runs SET status = ?, owner = ?, heartbeat_at = ?, started_at = COALESCE(started_at, ?),"
        " finished_at = NULL, error = NULL, updated_at = ? WHERE id = ? AND status = ?"
        + lease
        + (" RETURNING definition, inputs" if load else ""),
        (RunStatus.RUNNING, owner, now, now, now, run_id, RunStatus.QUEUED, *((owner,) if lease else ())),
        guard=True,
    )
    stmts = [claim, Stmt(STEP_ROWS_SQL, (run_id,))] if load else [claim]
    event = EventSpec(RUN, run_id, from_status=RunStatus.QUEUED, to_status=RunStatus.RUNNING, message=owner)
    return events.batch(stmts, [event], now)


async def claim_run(run_id: int, owner: str) -> bool:
    """QUEUED → RUNNING for `owner`; applies only to QUEUED rows (and, where engines hold leases, while
    `owner`'s holds), returns False otherwise."""
    return await _commit_batch(_claim_batch(run_id, owner, records.utcnow(), load=False))


async def claim_runs(run_ids: Sequence[int], owner: str) -> list[ClaimedRun]:
    """`claim_run` for each of `run_ids`, in one commit, each claimed run with what its driver reads first
    (so that a driver starts without a read of its own). The runs that were not QUEUED any more are left
    out. A claim that the database refused leaves its run QUEUED: when every claim was refused, the first
    refusal is raised (nothing was claimed); otherwise the refusals are logged and the claimed runs
    returned, to be driven."""
    now = records.utcnow()
    outcomes = await run_batches([_claim_batch(run_id, owner, now, load=True) for run_id in run_ids])
    refused = [result for result in outcomes if isinstance(result, Exception)]
    if refused and len(refused) == len(outcomes):
        raise refused[0]
    claimed = []
    for run_id, result in zip(run_ids, outcomes, strict=True):
        if isinstance(result, Exception):
            log.error("run %s: could not be claimed (%s: %s); it stays queued", run_id, type(result).__name__, result)
        elif result.ok:
            (definition, inputs), steps = result.rows[0][0], result.rows[1]
            claimed.append(ClaimedRun(run_id, definition, inputs, steps))
    return claimed


_QUEUED, _RUNNING = RunStatus.QUEUED.value, RunStatus.RUNNING.value
# Literal statuses: the partial index of queued runs (`runs_queued`) serves only a query that names its value.
# The rows to take are picked once, in a CTE of their own: as `UPDATE … WHERE id IN (SELECT … LIMIT n FOR
# UPDATE SKIP LOCKED)`, PostgreSQL may plan a nested-loop semi-join that runs the sub-select again for every
# queued row, each time locking the next rows, so that one worker took every queued run whatever its limit.
_CLAIM_QUEUED_SQL = (
    f"WITH picked AS MATERIALIZED (SELECT id FROM runs WHERE status = '{_QUEUED}' AND id <> ALL(?)"
    " ORDER BY id LIMIT ? FOR UPDATE SKIP LOCKED),"
    " claimed AS (UPDATE runs SET status = ?, owner = ?, heartbeat_at = ?, started_at = COALESCE(started_at, ?),"
    " finished_at = NULL, error = NULL, updated_at = ?"
    f" FROM picked WHERE runs.id = picked.id AND runs.status = '{_QUEUED}'"
    " AND EXISTS (SELECT 1 FROM workers w WHERE w.id = ? AND w.lease_until > now())"
    " RETURNING runs.id)"
    f" INSERT INTO events ({events.COLUMNS})"
    f" SELECT id, NULL, NULL, '{RUN.value}', '{_QUEUED}', '{_RUNNING}', NULL, ?, ? FROM claimed ORDER BY id"
    " RETURNING id, run_id, created_at"
)


async def claim_queued_runs(owner: str, limit: int, skip: Sequence[int] = ()) -> list[int]:
    """QUEUED → RUNNING for `owner` of the oldest `limit` queued runs that no other engine is claiming
    (PostgreSQL: `FOR UPDATE SKIP LOCKED`, the engines never wait for each other), leaving out `skip`;
    applies only while `owner` holds a live lease. Returns the ids claimed."""
    now = records.utcnow()
    stmt = Stmt(_CLAIM_QUEUED_SQL, (list(skip), limit, RunStatus.RUNNING, owner, now, now, now, owner, owner, now))

    def on_commit(result: BatchResult) -> None:
        hub = current().hub
        for event_id, run_id, created_at in result.rows[0]:
            at = events.written_at(created_at, now)
            hub.publish(
                Change(
                    run_id=run_id,
                    kind=RUN,
                    event_id=event_id,
                    from_status=RunStatus.QUEUED,
                    to_status=RunStatus.RUNNING,
                    message=owner,
                    at=at,
                )
            )

    result = (await run_batches([Batch([stmt], on_commit, clock=now)]))[0]
    if isinstance(result, Exception):
        raise result
    return [run_id for _, run_id, _ in result.rows[0]]


async def finish_run(run_id: int, owner: str, to: RunStatus, error: str | None = None) -> bool:
    """RUNNING → WAITING/COMPLETED/FAILED by its owner; applies only to RUNNING rows it owns.

    Also guarded on the steps: never while one of them runs or has a retry pending, and a selection committed meanwhile
    cannot leave a run WAITING with no waiting step, or COMPLETED with an unfinished one. The driver
    then re-reads and goes on.
    """
    return await _commit_batch(finish_batch(run_id, owner, to, error, records.utcnow()))


def finish_batch(run_id: int, owner: str, to: RunStatus, error: str | None, now: datetime) -> Batch:
    """`finish_run` as a batch, to commit with others (a run's last step completing: `steps.Completion`)."""
    assert to in (RunStatus.WAITING, RunStatus.COMPLETED, RunStatus.FAILED)
    finished_at = None if to == RunStatus.WAITING else now
    steps_guard = " AND NOT EXISTS (SELECT 1 FROM steps s WHERE s.run_id = ? AND s.status IN (?, ?))"
    params: list[Any] = [run_id, StepStatus.RUNNING, StepStatus.RETRYING]
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
    event = EventSpec(RUN, run_id, from_status=RunStatus.RUNNING, to_status=to, message=error)
    outbox = notify.outbox_stmt(run_id, _RUN_EVENTS[to], now)
    return events.batch([update, outbox], [event], now)


_RUN_EVENTS = {
    RunStatus.WAITING: notify.RUN_WAITING,
    RunStatus.COMPLETED: notify.RUN_COMPLETED,
    RunStatus.FAILED: notify.RUN_FAILED,
    RunStatus.CANCELLED: notify.RUN_CANCELLED,
}


def _running_guard(run_id: int, owner: str | None, heartbeat_at: Any) -> tuple[str, tuple[Any, ...]]:
    """WHERE clause for a RUNNING run, owned by `owner` and with the heartbeat read, when given."""
    sql = "WHERE id = ? AND status = ?" + (" AND owner = ?" if owner else "")
    params: tuple[Any, ...] = (run_id, RunStatus.RUNNING, *((owner,) if owner else ()))
    if heartbeat_at is not ...:
        if heartbeat_at is None:
            sql += " AND heartbeat_at IS NULL"
        else:
            sql += " AND heartbeat_at = ?"
            params += (heartbeat_at,)
    return sql, params


def _stop_running_steps(
    run_id: int, step_to: StepStatus, attempt_to: AttemptStatus, reason: str, now: datetime
) -> list[Stmt]:
    """Statements moving a run's RUNNING attempts and steps to a final status, with step events; then (from
    index 4, see `_stopped`) its RETRYING steps, whose pending retry is dropped (their attempt failed already)."""
    dropped = f"{reason}; its pending retry was dropped"
    return [
        events.steps_events_stmt(run_id, StepStatus.RUNNING, step_to, reason, now, where_status=StepStatus.RUNNING),
        Stmt(
            "UPDATE attempts SET status = ?, error = COALESCE(error, ?), finished_at = ?"
            " WHERE run_id = ? AND status = ?",
            (attempt_to, reason, now, run_id, AttemptStatus.RUNNING),
        ),
        Stmt(
            "UPDATE steps SET status = ?, updated_at = ? WHERE run_id = ? AND status = ?",
            (step_to, now, run_id, StepStatus.RUNNING),
        ),
        events.steps_events_stmt(run_id, StepStatus.RETRYING, step_to, dropped, now, where_status=StepStatus.RETRYING),
        Stmt(
            "UPDATE steps SET status = ?, retry_at = NULL, updated_at = ? WHERE run_id = ? AND status = ?",
            (step_to, now, run_id, StepStatus.RETRYING),
        ),
    ]


def _stopped(first: int, step_to: StepStatus, reason: str) -> list[Stopped]:
    """What `_stop_running_steps` (placed at statement `first`) publishes."""
    return [
        Stopped(first, StepStatus.RUNNING, step_to, reason),
        Stopped(first + 3, StepStatus.RETRYING, step_to, f"{reason}; its pending retry was dropped"),
    ]


async def fail_running_run(
    run_id: int, reason: str, *, owner: str | None = None, actor: str | None = None, heartbeat_at: Any = ...
) -> bool:
    """RUNNING → FAILED with its running steps and attempts (interruption, orphan, shutdown); a step with a
    pending retry fails too (the policy never retries what the sweep failed).

    Applies only to a RUNNING run, owned by `owner` when given and, when `heartbeat_at` is given
    (the sweep), still with the heartbeat that was judged stale; returns False otherwise.
    """
    now = records.utcnow()
    guard_sql, guard_params = _running_guard(run_id, owner, heartbeat_at)
    stmts = [
        Stmt(
            "UPDATE runs SET status = ?, error = ?, owner = NULL, heartbeat_at = NULL, finished_at = ?,"
            f" updated_at = ? {guard_sql}",
            (RunStatus.FAILED, reason, now, now, *guard_params),
            guard=True,
        ),
        *_stop_running_steps(run_id, StepStatus.FAILED, AttemptStatus.FAILED, reason, now),
        notify.outbox_stmt(run_id, notify.RUN_FAILED, now),
    ]
    evs = [
        EventSpec(RUN, run_id, from_status=RunStatus.RUNNING, to_status=RunStatus.FAILED, actor=actor, message=reason)
    ]
    return await _commit(stmts, evs, _stopped(1, StepStatus.FAILED, reason), now)


async def requeue_interrupted(
    run_id: int, reason: str, *, owner: str | None = None, heartbeat_at: Any = ..., count: bool = True
) -> bool:
    """RUNNING → QUEUED after an interruption (policy `resume`): the running attempts are failed
    with `reason` and kept in history, their steps go back to PENDING (two events each: running →
    failed → pending), so the next claim runs them as new attempts. `count` adds one to the run's
    recoveries (a crash; a graceful shutdown does not count). Steps with a pending retry keep it (and
    its due time).

    Same guards as `fail_running_run`; returns False otherwise.
    """
    now = records.utcnow()
    guard_sql, guard_params = _running_guard(run_id, owner, heartbeat_at)
    running = StepStatus.RUNNING
    stmts = [
        Stmt(
            "UPDATE runs SET status = ?, error = NULL, owner = NULL, heartbeat_at = NULL,"
            f" recoveries = recoveries + ?, updated_at = ? {guard_sql}",
            (RunStatus.QUEUED, 1 if count else 0, now, *guard_params),
            guard=True,
        ),
        events.steps_events_stmt(run_id, running, StepStatus.FAILED, reason, now, where_status=running),
        events.steps_events_stmt(run_id, StepStatus.FAILED, StepStatus.PENDING, "re-queued", now, where_status=running),
        Stmt(
            "UPDATE attempts SET status = ?, error = COALESCE(error, ?), finished_at = ?"
            " WHERE run_id = ? AND status = ?",
            (AttemptStatus.FAILED, reason, now, run_id, AttemptStatus.RUNNING),
        ),
        Stmt(
            "UPDATE steps SET status = ?, updated_at = ? WHERE run_id = ? AND status = ?",
            (StepStatus.PENDING, now, run_id, running),
        ),
    ]
    evs = [EventSpec(RUN, run_id, from_status=RunStatus.RUNNING, to_status=RunStatus.QUEUED, message=reason)]
    stopped = [
        Stopped(1, running, StepStatus.FAILED, reason),
        Stopped(2, StepStatus.FAILED, StepStatus.PENDING, "re-queued"),
    ]
    return await _commit(stmts, evs, stopped, now)


async def cancel_run(run_id: int, from_status: RunStatus, actor: str) -> bool:
    """QUEUED/RUNNING/WAITING → CANCELLED with running steps and attempts, and pending retries dropped;
    guard on `from_status`."""
    if RunStatus.CANCELLED not in RUN_TRANSITIONS[from_status]:
        return False
    now = records.utcnow()
    reason = f"cancelled by {actor}"
    stmts = [
        Stmt(
            "UPDATE runs SET status = ?, error = ?, owner = NULL, heartbeat_at = NULL, finished_at = ?, updated_at = ?"
            " WHERE id = ? AND status = ?",
            (RunStatus.CANCELLED, reason, now, now, run_id, from_status),
            guard=True,
        ),
        *_stop_running_steps(run_id, StepStatus.CANCELLED, AttemptStatus.CANCELLED, reason, now),
        notify.outbox_stmt(run_id, notify.RUN_CANCELLED, now),
    ]
    evs = [
        EventSpec(ACTION, run_id, actor=actor, message="cancelled the run"),
        EventSpec(RUN, run_id, from_status=from_status, to_status=RunStatus.CANCELLED, actor=actor),
    ]
    return await _commit(stmts, evs, _stopped(1, StepStatus.CANCELLED, reason), now)


@dataclass(frozen=True, slots=True)
class StepReset:
    step_id: int
    key: str
    from_status: StepStatus


async def rerun_steps(
    run_id: int, run_from: RunStatus, root_key: str, resets: Sequence[StepReset], actor: str, action: str
) -> bool:
    """Run (not running) → QUEUED, and each named step → PENDING with its stale flag cleared and its
    count of automatic retries reset (a person took over).

    Guards: the run is still in `run_from` and every step still has the status it was read with.
    Steps already PENDING are guarded but get no event (nothing changes for them).
    """
    if RunStatus.QUEUED not in RUN_TRANSITIONS[run_from] or any(
        r.from_status != StepStatus.PENDING and StepStatus.PENDING not in STEP_TRANSITIONS[r.from_status]
        for r in resets
    ):
        return False
    now = records.utcnow()
    stmts = [
        Stmt(
            "UPDATE runs SET status = ?, error = NULL, finished_at = NULL, owner = NULL, heartbeat_at = NULL,"
            " recoveries = 0, updated_at = ? WHERE id = ? AND status = ?",  # a person took over: a fresh count
            (RunStatus.QUEUED, now, run_id, run_from),
            guard=True,
        ),
        Stmt(
            "UPDATE steps SET status = ?, stale = FALSE, stale_reason = NULL, retries_used = 0, retry_at = NULL,"
            " updated_at = ? WHERE id = ? AND status = ?",
            many=[(StepStatus.PENDING, now, r.step_id, r.from_status) for r in resets],
            guard=True,
        ),
    ]
    evs = [
        EventSpec(ACTION, run_id, step_key=root_key, actor=actor, message=action),
        *(
            EventSpec(ChangeKind.STEP, run_id, step_key=r.key, from_status=r.from_status, to_status=StepStatus.PENDING)
            for r in resets
            if r.from_status != StepStatus.PENDING
        ),
        EventSpec(RUN, run_id, from_status=run_from, to_status=RunStatus.QUEUED, actor=actor),
    ]
    return await _commit(stmts, evs, now=now)


async def release_run(run_id: int, owner: str, why: str) -> bool:
    """RUNNING → QUEUED for a run claimed but never driven (its engine is stopping); applies only
    to a RUNNING run owned by `owner` with no step started since the claim."""
    now = records.utcnow()
    update = Stmt(
        "UPDATE runs SET status = ?, owner = NULL, heartbeat_at = NULL, updated_at = ?"
        " WHERE id = ? AND status = ? AND owner = ?"
        " AND NOT EXISTS (SELECT 1 FROM steps s WHERE s.run_id = ? AND s.status = ?)",
        (RunStatus.QUEUED, now, run_id, RunStatus.RUNNING, owner, run_id, StepStatus.RUNNING),
        guard=True,
    )
    event = EventSpec(RUN, run_id, from_status=RunStatus.RUNNING, to_status=RunStatus.QUEUED, message=why)
    return await _commit([update], [event], now=now)


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
    now = records.utcnow()
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
    was = f" (was {sel.previous_index + 1})" if sel.previous_index is not None else ""
    message = f"selected alternative {sel.index + 1}{was}"
    evs = [EventSpec(ACTION, sel.run_id, step_key=sel.key, attempt=sel.number, actor=actor, message=message)]
    if sel.step_from != step_to:
        evs.append(events.step_event(sel.run_id, sel.key, sel.number, sel.step_from, step_to))
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
        evs.extend(EventSpec(STALE, sel.run_id, step_key=key, message=reason) for key in sel.stale_keys)
    if sel.run_from == RunStatus.WAITING:
        stmts.append(
            Stmt(
                "UPDATE runs SET status = ?, updated_at = ? WHERE id = ? AND status = ?",
                (RunStatus.QUEUED, now, sel.run_id, RunStatus.WAITING),
                guard=True,
            )
        )
        evs.append(EventSpec(RUN, sel.run_id, from_status=RunStatus.WAITING, to_status=RunStatus.QUEUED, actor=actor))
    return await _commit(stmts, evs, now=now)
