"""Transitions of steps and their attempts: start, complete (starting successors in the same
commit), fail."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

from engine import events, leases, records
from engine.db.base import Batch, BatchResult, Outcome, Stmt
from engine.notify import kinds as notify
from engine.records import AttemptRef, llm_stmts, record_late_result
from engine.retry import ACTOR as RETRY_ACTOR
from engine.retry import FailureKind, PendingRetry
from engine.store import run_batches, run_batches_blocking
from engine.transitions.runs import finish_batch
from models.status import AttemptStatus, RunStatus, StepStatus


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
    from_status: StepStatus = StepStatus.PENDING  # RETRYING: the retry policy starts its next attempt
    message: str | None = None


@functools.cache
def _start_sql(needs: int, lease: str) -> str:
    """The guarded UPDATE that starts a step with `needs` needs (`lease`: `leases.live_lease_sql`)."""
    sql = (
        "UPDATE steps SET status = ?, attempt = ?, retry_at = NULL, updated_at = ? WHERE id = ? AND status = ?"
        f" AND EXISTS (SELECT 1 FROM runs WHERE runs.id = ? AND runs.status = ? AND runs.owner = ?{lease})"
    )
    if needs:
        marks = ", ".join("?" for _ in range(needs))
        sql += f" AND NOT EXISTS (SELECT 1 FROM steps n WHERE n.run_id = ? AND n.key IN ({marks}) AND n.status != ?)"
    return sql


def _start_batch(start: StepStart, now: datetime) -> Batch:
    # Readiness is checked by the database too: every need must be COMPLETED when the step starts, and
    # the run RUNNING in the hands of the engine that starts it (while its lease holds, where there are leases).
    assert start.from_status in (StepStatus.PENDING, StepStatus.RETRYING)
    params: list[Any] = [StepStatus.RUNNING, start.number, now, start.step_id, start.from_status]
    params += [start.run_id, RunStatus.RUNNING, start.owner]
    if start.needs:
        params += [start.run_id, *start.needs, StepStatus.COMPLETED]
    stmts = [
        Stmt(_start_sql(len(start.needs), leases.live_lease_sql("runs.owner")), params, guard=True),
        Stmt(
            "INSERT INTO attempts (run_id, step_id, number, status, consumed, logs, log_times, owner, started_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
            (
                start.run_id,
                start.step_id,
                start.number,
                AttemptStatus.RUNNING,
                start.consumed,
                [],
                [],
                start.owner,
                now,
            ),
        ),
    ]
    event = events.step_event(start.run_id, start.key, start.number, start.from_status, StepStatus.RUNNING)
    if start.from_status == StepStatus.RETRYING:
        event = dataclasses.replace(event, actor=RETRY_ACTOR, message=start.message)
    return events.batch(stmts, [event], now)


def _started_attempt(result: Outcome) -> int | None:
    if isinstance(result, BatchResult) and result.ok:
        return int(result.rows[1][0][0])
    return None


async def start_step(start: StepStart) -> int | None:
    """PENDING (or RETRYING, `start.from_status`) → RUNNING with a new attempt; returns its id.

    Applies only to a step in `start.from_status` whose needs are all COMPLETED, of a RUNNING run owned by
    `start.owner`; returns None otherwise.
    """
    return _started_attempt((await run_batches([_start_batch(start, records.utcnow())]))[0])


def _owned(ref: AttemptRef) -> str:
    """The guard that an attempt is still its engine's (an attempt ended by another process, or re-owned,
    is not written by the engine that started it)."""
    return " AND owner = ?" if ref.owner is not None else ""


def _owner(ref: AttemptRef) -> tuple[str, ...]:
    return (ref.owner,) if ref.owner is not None else ()


def _step_from_running(ref: AttemptRef, to: StepStatus, now: datetime) -> Stmt:
    return Stmt(
        "UPDATE steps SET status = ?, updated_at = ? WHERE id = ? AND status = ? AND attempt = ?",
        (to, now, ref.step_id, StepStatus.RUNNING, ref.number),
        guard=True,
    )


@dataclass(frozen=True, slots=True)
class Completion:
    """What a step's attempt produced, to be written as its completion."""

    ref: AttemptRef
    outputs: list[Any]
    selected_index: int | None  # None: a person must pick one (the step waits)
    logs: list[str]
    progress: float | None
    progress_message: str | None
    llm: dict[str, Any] | None = None
    log_times: list[int] | None = None  # when each line of `logs` was written (epoch ms); None: not known
    # The driver expects the step's completion to complete its run: the run is finished COMPLETED in the
    # same commit, where the run's guard holds (every step COMPLETED then, the run RUNNING and still ours).
    finishes_run: bool = False


class Completed(NamedTuple):
    """What `complete_step_and_start` wrote."""

    done: bool  # the completion itself (False: it came too late, and changed nothing)
    started: list[int | None]  # attempt ids of the starts, None for one whose guard did not hold
    finished: bool = False  # the run was finished COMPLETED in the same commit (`Completion.finishes_run`)


def _completion_batches(c: Completion, starts: Sequence[StepStart], now: datetime) -> list[Batch]:
    to = StepStatus.COMPLETED if c.selected_index is not None else StepStatus.WAITING
    stmts = [
        Stmt(
            "UPDATE attempts SET status = ?, outputs = ?, selected_index = ?, logs = ?, log_times = ?, progress = ?,"
            " progress_message = ?, finished_at = ? WHERE id = ? AND status = ?" + _owned(c.ref),
            (
                AttemptStatus.COMPLETED,
                c.outputs,
                c.selected_index,
                c.logs,
                c.log_times,
                c.progress,
                c.progress_message,
                now,
                c.ref.attempt_id,
                AttemptStatus.RUNNING,
                *_owner(c.ref),
            ),
            guard=True,
        ),
        _step_from_running(c.ref, to, now),
        *llm_stmts(c.ref, c.llm, AttemptStatus.COMPLETED, now),
    ]
    truncated = bool(c.llm and c.llm.get("truncated"))
    if truncated:
        stmts.append(notify.outbox_stmt(c.ref.run_id, notify.STEP_TRUNCATED, now, step_key=c.ref.key))
    event = events.step_event(c.ref.run_id, c.ref.key, c.ref.number, StepStatus.RUNNING, to, truncated=truncated)
    batches = [events.batch(stmts, [event], now), *(_start_batch(s, now) for s in starts)]
    if c.finishes_run and to == StepStatus.COMPLETED and c.ref.owner is not None:
        batches.append(finish_batch(c.ref.run_id, c.ref.owner, RunStatus.COMPLETED, None, now))
    return batches


def _completion_outcome(results: list[Outcome], starts: int) -> Completed:
    if isinstance(results[0], Exception):
        raise results[0]
    if not results[0].ok:
        return Completed(False, [None] * starts)
    finished = len(results) > starts + 1 and isinstance(results[-1], BatchResult) and results[-1].ok
    return Completed(True, [_started_attempt(r) for r in results[1 : starts + 1]], finished)


async def complete_step(
    ref: AttemptRef,
    outputs: list[Any],
    selected_index: int | None,
    logs: list[str],
    progress: float | None,
    progress_message: str | None,
    *,
    log_times: list[int] | None = None,
) -> bool:
    """Attempt RUNNING → COMPLETED; step RUNNING → COMPLETED (or WAITING when nothing is selected).

    Applies only while both are RUNNING and the attempt is still the step's current one; a result
    that arrives later is recorded as a late-result event instead and changes nothing.
    """
    completion = Completion(ref, outputs, selected_index, logs, progress, progress_message, log_times=log_times)
    return (await complete_step_and_start(completion, ())).done


async def complete_step_and_start(c: Completion, starts: Sequence[StepStart]) -> Completed:
    """`complete_step`, then `start_step` for each of `starts` (and `finish_run` where the completion
    `finishes_run`), sharing one commit.

    Each is its own guarded transition (a start whose guard fails changes nothing); the starts see
    the completion, so a successor starts only once this step is COMPLETED.
    """
    results = await run_batches(_completion_batches(c, starts, records.utcnow()))
    completed = _completion_outcome(results, len(starts))
    if not completed.done:
        await record_late_result(c.ref, AttemptStatus.COMPLETED, c.llm)
    return completed


def complete_step_and_start_blocking(c: Completion, starts: Sequence[StepStart]) -> Completed:
    """`complete_step_and_start` from the worker thread the step ran in (one commit, no trip through
    the event loop). A completion that came too late changes nothing; the caller records it."""
    return _completion_outcome(run_batches_blocking(_completion_batches(c, starts, records.utcnow())), len(starts))


async def fail_step(
    ref: AttemptRef,
    error: str,
    detail: str | None,
    logs: list[str],
    partial_output: str | None = None,
    llm: dict[str, Any] | None = None,
    retry: tuple[PendingRetry, FailureKind] | None = None,
    log_times: list[int] | None = None,
) -> bool:
    """Attempt and step RUNNING → FAILED with the error; same guards and late handling as completion.

    With `retry` (the policy retries this failure) the step goes RUNNING → RETRYING instead, its next
    attempt due at `retry.due_at` (kept in the database: a restart fires it), by actor `retry policy`.
    """
    now = records.utcnow()
    step_to = StepStatus.RETRYING if retry is not None else StepStatus.FAILED
    stmts = [
        Stmt(
            "UPDATE attempts SET status = ?, error = ?, error_detail = ?, logs = ?, log_times = ?, partial_output = ?,"
            " finished_at = ? WHERE id = ? AND status = ?" + _owned(ref),
            (
                AttemptStatus.FAILED,
                error,
                detail,
                logs,
                log_times,
                partial_output,
                now,
                ref.attempt_id,
                AttemptStatus.RUNNING,
                *_owner(ref),
            ),
            guard=True,
        ),
        _step_from_running(ref, StepStatus.FAILED, now)
        if retry is None
        else Stmt(
            "UPDATE steps SET status = ?, retry_at = ?, retries_used = ?, updated_at = ?"
            " WHERE id = ? AND status = ? AND attempt = ?",
            (step_to, retry[0].due_at, retry[0].retries_used, now, ref.step_id, StepStatus.RUNNING, ref.number),
            guard=True,
        ),
        *llm_stmts(ref, llm, AttemptStatus.FAILED, now),
    ]
    truncated = bool(llm and llm.get("truncated"))
    if truncated:
        stmts.append(notify.outbox_stmt(ref.run_id, notify.STEP_TRUNCATED, now, step_key=ref.key))
    event = events.step_event(ref.run_id, ref.key, ref.number, StepStatus.RUNNING, step_to, error, truncated)
    if retry is not None:
        message = f"{error}\n{retry[0].message(retry[1])}"
        event = dataclasses.replace(event, actor=RETRY_ACTOR, message=message)
    result = (await run_batches([events.batch(stmts, [event], now)]))[0]
    if isinstance(result, Exception):
        raise result
    if result.ok:
        return True
    await record_late_result(ref, AttemptStatus.FAILED, llm, error)
    return False
