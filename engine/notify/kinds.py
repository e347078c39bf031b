"""The events people can be notified of, and the outbox statement a transition writes for one.

The outbox row is a statement of the transition's own batch: it commits with the status change that
caused it, or not at all, so a crash never loses a notification (nor invents one).
"""

from __future__ import annotations

from datetime import datetime

from engine.db.base import Ref, Stmt

RUN_FAILED = "run.failed"
RUN_WAITING = "run.waiting"  # a person must pick an alternative
RUN_COMPLETED = "run.completed"  # opt-in: only targets that list it get it
RUN_CANCELLED = "run.cancelled"
STEP_TRUNCATED = "step.truncated"  # an LLM output was cut off at max_tokens
BUDGET_REACHED = "budget.reached"  # a spending limit stopped work (see `budget_reached_stmt`)

EVENTS = (RUN_FAILED, RUN_WAITING, RUN_COMPLETED, RUN_CANCELLED, STEP_TRUNCATED, BUDGET_REACHED)
DEFAULT_EVENTS = tuple(e for e in EVENTS if e != RUN_COMPLETED)

# The run's (and step's) status and error as the transition leaves them: the statement comes after the
# transition's updates in the same batch, so it reads what they wrote.
_SQL = (
    "INSERT INTO notifications (run_id, event, step_key, detail, run_status, error, step_status, fanned_out,"
    " created_at) SELECT r.id, ?, ?, ?, r.status, r.error,"
    " (SELECT s.status FROM steps s WHERE s.run_id = r.id AND s.key = ?), FALSE, ? FROM runs r WHERE r.id = ?"
)


def outbox_stmt(
    run_id: int | Ref, event: str, now: datetime, *, step_key: str | None = None, detail: str | None = None
) -> Stmt:
    """The outbox row of `event`, to be put in the batch of the transition that causes it (after its updates)."""
    assert event in EVENTS, event
    return Stmt(_SQL, (event, step_key, detail, step_key, now, run_id))


def budget_reached_stmt(run_id: int, now: datetime, detail: str, step_key: str | None = None) -> Stmt:
    """For the budget guard: put this in the batch that stops work on a spent budget (`detail` says which
    budget and how much), and a `budget.reached` notification goes out once that batch commits."""
    return outbox_stmt(run_id, BUDGET_REACHED, now, step_key=step_key, detail=detail)
