"""The only code that writes statuses (of runs, steps and attempts).

Every function here is one short transaction: guarded compare-and-set updates (`… WHERE id = ?
AND status = ?`, the affected rows checked) together with their event rows, committed together or
not at all, then published on the hub (in commit order). A function whose guard does not hold
changes nothing and returns False/None: the caller re-reads and decides. Nothing here awaits step
work. `runs.py` holds the transitions of runs (and the person's actions on them), `steps.py` those of
steps and their attempts.
"""

from engine.transitions.runs import (
    STEP_ROWS_SQL,
    ClaimedRun,
    CreatedRun,
    NewRun,
    NewRunClaim,
    NewStep,
    Selection,
    StepReset,
    cancel_run,
    claim_queued_runs,
    claim_run,
    claim_runs,
    create_run,
    create_scheduled_run,
    fail_running_run,
    finish_run,
    release_run,
    requeue_interrupted,
    rerun_steps,
    select_alternative,
)
from engine.transitions.steps import (
    Completed,
    Completion,
    StepStart,
    complete_step,
    complete_step_and_start,
    complete_step_and_start_blocking,
    fail_step,
    start_step,
)

__all__ = [
    "STEP_ROWS_SQL",
    "ClaimedRun",
    "Completed",
    "Completion",
    "CreatedRun",
    "NewRun",
    "NewRunClaim",
    "NewStep",
    "Selection",
    "StepReset",
    "StepStart",
    "cancel_run",
    "claim_queued_runs",
    "claim_run",
    "claim_runs",
    "complete_step",
    "complete_step_and_start",
    "complete_step_and_start_blocking",
    "create_run",
    "create_scheduled_run",
    "fail_running_run",
    "fail_step",
    "finish_run",
    "release_run",
    "requeue_interrupted",
    "rerun_steps",
    "select_alternative",
    "start_step",
]
