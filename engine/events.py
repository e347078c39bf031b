"""Event rows: written in the same transaction as the change they record, published once committed.

The `now` of a batch is its clock (`Batch.clock`): on PostgreSQL the database writes its own time in its
place, and the published events carry the time their rows hold.

Every persisted change of a run (a status, a person's action, a stale flag, a late result) is one
row of `events`; its id orders the run's timeline and resumes event streams. `batch` builds a
transition's batch with its event rows and the callback that publishes them on the hub, which the
database runs in commit order (so listeners see the event ids in order).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from engine.db import current
from engine.db.base import Batch, BatchResult, Ref, Stmt
from engine.hub import Change, ChangeKind, Hub
from models.status import StepStatus

COLUMNS = "run_id, step_key, attempt, kind, from_status, to_status, actor, message, created_at"
EVENT_SQL = f"INSERT INTO events ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id, created_at"


@dataclass(frozen=True, slots=True)
class EventSpec:
    """An event row to write with a transition, and to publish once committed."""

    kind: ChangeKind
    run_id: int | Ref
    step_key: str | None = None
    attempt: int | None = None
    from_status: str | None = None
    to_status: str | None = None
    actor: str | None = None
    message: str | None = None
    truncated: bool | None = None  # published only: a completing step's output was cut off

    def stmt(self, now: datetime) -> Stmt:
        params = (self.run_id, self.step_key, self.attempt, self.kind.value, self.from_status, self.to_status)
        return Stmt(EVENT_SQL, (*params, self.actor, self.message, now))


def step_event(
    run_id: int,
    key: str,
    attempt: int,
    from_status: StepStatus,
    to_status: StepStatus,
    message: str | None = None,
    truncated: bool | None = None,
) -> EventSpec:
    return EventSpec(
        ChangeKind.STEP, run_id, key, attempt, from_status, to_status, message=message, truncated=truncated
    )


def steps_events_stmt(
    run_id: int,
    from_status: StepStatus,
    to_status: StepStatus,
    message: str,
    now: datetime,
    *,
    where_status: StepStatus,
) -> Stmt:
    """Step events for every step of the run now in `where_status`, in declared order, written in bulk
    (their ids, keys and attempts are returned, for `Stopped`)."""
    return Stmt(
        f"INSERT INTO events ({COLUMNS}) SELECT run_id, key, attempt, 'step', ?, ?, NULL, ?, ? FROM steps"
        " WHERE run_id = ? AND status = ? ORDER BY position RETURNING id, step_key, attempt, created_at",
        (from_status, to_status, message, now, run_id, where_status),
    )


@dataclass(frozen=True, slots=True)
class Stopped:
    """Step events written in bulk by statement `index` (`steps_events_stmt`), published before the rest."""

    index: int
    from_status: StepStatus
    to_status: StepStatus
    message: str


def _run_id(run_id: int | Ref, result: BatchResult) -> int:
    return run_id if isinstance(run_id, int) else int(result.rows[run_id.index][0][0])


def written_at(value: Any, now: datetime) -> str:
    """When an event row says it was written: the database's clock where it keeps its own (a datetime
    returned by PostgreSQL), else the batch's `now` (the value SQLite stored)."""
    return (value if isinstance(value, datetime) else now).isoformat()


def publish(hub: Hub, result: BatchResult, events: Sequence[EventSpec], first_event: int, now: datetime) -> None:
    for offset, event in enumerate(events):
        rows = result.rows[first_event + offset]
        at = written_at(rows[0][1] if rows else None, now)
        hub.publish(
            Change(
                run_id=_run_id(event.run_id, result),
                kind=event.kind,
                step_key=event.step_key,
                event_id=rows[0][0] if rows else None,
                attempt=event.attempt,
                from_status=event.from_status,
                to_status=event.to_status,
                actor=event.actor,
                message=event.message,
                at=at,
                truncated=event.truncated,
            )
        )


def _publish_stopped(hub: Hub, rows: list[tuple[Any, ...]], run_id: int, stopped: Stopped, now: datetime) -> None:
    for event_id, key, attempt, created_at in rows:
        at = written_at(created_at, now)
        hub.publish(
            Change(
                run_id,
                ChangeKind.STEP,
                step_key=key,
                event_id=event_id,
                attempt=attempt,
                from_status=stopped.from_status,
                to_status=stopped.to_status,
                message=stopped.message,
                at=at,
            )
        )


def batch(stmts: Sequence[Stmt], events: Sequence[EventSpec], now: datetime, stopped: Sequence[Stopped] = ()) -> Batch:
    """A transition's statements followed by its event rows, published on the hub once committed."""
    first = len(stmts)

    def on_commit(result: BatchResult) -> None:
        hub = current().hub  # the database that committed it
        if stopped:
            run_id = _run_id(events[0].run_id, result)
            for s in stopped:
                _publish_stopped(hub, result.rows[s.index], run_id, s, now)
        publish(hub, result, events, first, now)

    # Every run named by an event (a new run, still a `Ref`, cannot be held by anyone else).
    if len(events) == 1:  # most transitions: without a set and a generator
        only = events[0]
        runs = [only.run_id] if isinstance(only.run_id, int) else []
        return Batch([*stmts, only.stmt(now)], on_commit, runs, clock=now)
    runs = sorted({e.run_id for e in events if isinstance(e.run_id, int)})
    stmts = [*stmts, *(e.stmt(now) for e in events)]
    return Batch(stmts, on_commit if events or stopped else None, runs, clock=now)
