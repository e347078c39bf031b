"""Status vocabulary of runs, steps and attempts, and the transitions each may take.

The tables below are the single statement of which status may follow which. The engine's
transition functions check against them; a test pins that stored values match the enums.
"""

from __future__ import annotations

from enum import StrEnum


class RunStatus(StrEnum):
    QUEUED = "queued"  # waiting for an engine to claim it; also after a rerun or a selection
    RUNNING = "running"  # claimed by an engine (owner, heartbeat_at set) that executes its steps
    WAITING = "waiting"  # nothing can progress until a person picks an alternative
    COMPLETED = "completed"  # every step completed
    FAILED = "failed"  # a step failed, or the run was interrupted; `error` says why
    CANCELLED = "cancelled"  # a person cancelled it; partial output is kept


class StepStatus(StrEnum):
    PENDING = "pending"  # not started, or reset by a rerun; runs when all its needs are completed
    RUNNING = "running"  # its current attempt is executing
    WAITING = "waiting"  # its current attempt produced alternatives and a person must pick one
    COMPLETED = "completed"  # its current attempt completed and an output is selected
    FAILED = "failed"  # its current attempt failed (error, timeout, interruption)
    CANCELLED = "cancelled"  # its current attempt was cancelled with the run
    RETRYING = "retrying"  # its current attempt failed and the retry policy starts a new one at `retry_at`


class AttemptStatus(StrEnum):
    RUNNING = "running"  # the step function is executing
    COMPLETED = "completed"  # the function returned; outputs are stored (selection may follow)
    FAILED = "failed"  # the function raised, timed out, or its process died
    CANCELLED = "cancelled"  # the run was cancelled while it executed


class DeliveryStatus(StrEnum):
    """Of one delivery of a notification to one target (the outbox, `engine/notify`)."""

    PENDING = "pending"  # to be sent at `next_at` (first try, or a retry after a failure)
    DELIVERED = "delivered"  # the target answered 2xx
    FAILED = "failed"  # given up: retried for a day, or the target is no longer configured


RUN_ACTIVE = frozenset({RunStatus.QUEUED, RunStatus.RUNNING})
RUN_TERMINAL = frozenset({RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED})
STEP_FINISHED = frozenset({StepStatus.COMPLETED, StepStatus.FAILED, StepStatus.CANCELLED})
# A step whose current attempt has ended (its time shows as the step's end): finished, or waiting for a choice.
STEP_ATTEMPT_ENDED = STEP_FINISHED | {StepStatus.WAITING}
# A step whose run may not finish yet: executing, or due to execute again (a pending retry).
STEP_UNSETTLED = frozenset({StepStatus.RUNNING, StepStatus.RETRYING})
ATTEMPT_TERMINAL = frozenset({AttemptStatus.COMPLETED, AttemptStatus.FAILED, AttemptStatus.CANCELLED})

# Which status may follow which. Terminal run states are left only by a person's rerun
# (back to QUEUED); a late result never moves a row out of a terminal state.
RUN_TRANSITIONS: dict[RunStatus, frozenset[RunStatus]] = {
    RunStatus.QUEUED: frozenset({RunStatus.RUNNING, RunStatus.CANCELLED, RunStatus.FAILED}),
    RunStatus.RUNNING: frozenset(
        {RunStatus.WAITING, RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED, RunStatus.QUEUED}
    ),
    RunStatus.WAITING: frozenset({RunStatus.QUEUED, RunStatus.CANCELLED}),
    **dict.fromkeys(RUN_TERMINAL, frozenset({RunStatus.QUEUED})),
}

STEP_TRANSITIONS: dict[StepStatus, frozenset[StepStatus]] = {
    StepStatus.PENDING: frozenset({StepStatus.RUNNING}),
    StepStatus.RUNNING: frozenset(
        {StepStatus.WAITING, StepStatus.COMPLETED, StepStatus.FAILED, StepStatus.CANCELLED, StepStatus.RETRYING}
    ),
    StepStatus.WAITING: frozenset({StepStatus.COMPLETED, StepStatus.PENDING}),
    **dict.fromkeys(STEP_FINISHED, frozenset({StepStatus.PENDING})),  # a person's rerun resets it
    # Fired at its due time (a new attempt), or ended with its run (cancelled, or failed by the sweep).
    StepStatus.RETRYING: frozenset({StepStatus.RUNNING, StepStatus.CANCELLED, StepStatus.FAILED}),
}

ATTEMPT_TRANSITIONS: dict[AttemptStatus, frozenset[AttemptStatus]] = {
    AttemptStatus.RUNNING: ATTEMPT_TERMINAL,
    **dict.fromkeys(ATTEMPT_TERMINAL, frozenset()),  # an attempt is never reused
}
