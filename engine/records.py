"""Writes that change no status: what an attempt produced so far, model usage, late results,
heartbeats, and the fire times of schedules. (Statuses are written by `engine/transitions/` only.)"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from engine import db, events
from engine.db.base import Ref, Stmt
from engine.hub import ChangeKind
from engine.store import run_batch, run_batches
from models.status import AttemptStatus, RunStatus


def utcnow() -> datetime:
    """The database's clock (`engine.db.now`), for the times the engine writes: a retry's due time, a
    notification's next try, a prune's cutoff. A batch passes the value it got as its clock (`Batch.clock`):
    on PostgreSQL each statement writes the server's own clock in its place, exactly."""
    return db.now()


@dataclass(frozen=True, slots=True)
class AttemptRef:
    """The attempt a step execution writes to (and the step and run it belongs to)."""

    run_id: int
    step_id: int
    key: str
    attempt_id: int
    number: int
    owner: str | None = None  # the engine that started the attempt: its writes are guarded on it


def _owner(ref: AttemptRef) -> tuple[str, ...]:
    return (ref.owner,) if ref.owner is not None else ()


# --- model usage ----------------------------------------------------------------------------------

_USAGE_SQL = (
    "INSERT INTO llm_usage (run_id, attempt_id, workflow, step_key, alternative, provider, model, max_tokens,"
    " prompt_tokens, completion_tokens, peak_call_tokens, finish_reason, truncated, continuations, outcome, created_at,"
    " estimated, cost)"
    " SELECT id, ?, workflow, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ? FROM runs WHERE id = ?"
    " ON CONFLICT (attempt_id, alternative) DO NOTHING"
)


def llm_stmts(ref: AttemptRef, llm: dict[str, Any] | None, outcome: AttemptStatus, now: datetime) -> list[Stmt]:
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
            bool(alt.get("estimated")),
            alt.get("cost"),
            ref.run_id,
        )
        for alt in llm["alternatives"]
        if alt["calls"]
    ]
    stmts = [Stmt("UPDATE attempts SET llm = ? WHERE id = ?", (llm, ref.attempt_id))]
    if rows:
        stmts.append(Stmt(_USAGE_SQL, many=rows))
    return stmts


# --- what attempts produced -----------------------------------------------------------------------


async def keep_partial_output(
    ref: AttemptRef,
    partial_output: str | None,
    logs: list[str],
    llm: dict[str, Any] | None = None,
    *,
    log_times: list[int] | None = None,
) -> bool:
    """Store what an attempt produced before it was stopped; applies only to CANCELLED/FAILED attempts."""
    now = utcnow()
    result = await run_batch(
        [
            Stmt(
                "UPDATE attempts SET partial_output = COALESCE(?, partial_output), logs = ?, log_times = ?"
                " WHERE id = ? AND status IN (?, ?)" + (" AND owner = ?" if ref.owner is not None else ""),
                (
                    partial_output,
                    logs,
                    log_times,
                    ref.attempt_id,
                    AttemptStatus.CANCELLED,
                    AttemptStatus.FAILED,
                    *_owner(ref),
                ),
                guard=True,
            ),
            *llm_stmts(ref, llm, AttemptStatus.CANCELLED, now),
        ],
        clock=now,
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
                " WHERE id = ? AND status = ?" + (" AND owner = ?" if ref.owner is not None else ""),
                (partial_output, llm, ref.attempt_id, AttemptStatus.RUNNING, *_owner(ref)),
            ),
            *(llm_stmts(ref, llm, AttemptStatus.FAILED, now) if final else []),
        ],
        clock=now,
    )


async def record_late_result(
    ref: AttemptRef, outcome: AttemptStatus, llm: dict[str, Any] | None = None, error: str | None = None
) -> None:
    """Record that an attempt's result (`outcome`, with its `error` when it failed) arrived after it had
    already ended; writes no status, but keeps what its model calls cost (the tokens were spent)."""
    now = utcnow()
    what = f"{outcome}: {error}" if error else str(outcome)
    message = f"late result discarded: attempt {ref.number} {what} after it had already ended"
    event = events.EventSpec(ChangeKind.LATE_RESULT, ref.run_id, step_key=ref.key, attempt=ref.number, message=message)
    result = (await run_batches([events.batch(llm_stmts(ref, llm, AttemptStatus.FAILED, now), [event], now)]))[0]
    if isinstance(result, Exception):
        raise result


# --- liveness -------------------------------------------------------------------------------------


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
        ],
        clock=now,
    )
    return result.rowcounts[0]


# --- fire times of schedules ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ScheduledFire:
    workflow: str
    schedule: str
    fire_time: datetime  # UTC


_FIRE_SQL = (
    "INSERT INTO schedule_fires (workflow, schedule, fire_time, outcome, run_id, detail, created_at)"
    " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (workflow, schedule, fire_time) DO NOTHING"
)


def fire_stmt(fire: ScheduledFire, outcome: str, run_id: Ref | None, detail: str | None, now: datetime) -> Stmt:
    """Claim a fire time (guarded: nothing is written when it was recorded already)."""
    return Stmt(_FIRE_SQL, (fire.workflow, fire.schedule, fire.fire_time, outcome, run_id, detail, now), guard=True)


async def record_fires(fires: Sequence[ScheduledFire], outcome: str, detail: str | None = None) -> None:
    """`record_fire` for many fire times in one commit; those already recorded are left as they are."""
    if not fires:
        return
    now = utcnow()
    rows = [(f.workflow, f.schedule, f.fire_time, outcome, None, detail, now) for f in fires]
    await run_batch([Stmt(_FIRE_SQL, many=rows)], clock=now)


async def record_fire(fire: ScheduledFire, outcome: str, detail: str | None = None) -> bool:
    """Record a fire time that started no run (missed while down, or paused); False if already recorded."""
    now = utcnow()
    return (await run_batch([fire_stmt(fire, outcome, None, detail, now)], clock=now)).ok
