"""models/status.py: the stored values of the status enums, and the allowed-transition tables."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path

import pytest

from engine import transitions
from engine.store import fetch
from models import status as st
from models.status import (
    ATTEMPT_TERMINAL,
    ATTEMPT_TRANSITIONS,
    RUN_ACTIVE,
    RUN_TERMINAL,
    RUN_TRANSITIONS,
    STEP_FINISHED,
    STEP_TRANSITIONS,
    AttemptStatus,
    RunStatus,
    StepStatus,
)
from models.tables import Attempt, Run, Step
from tests.conftest import holding_lease

# The values are what the database holds: renaming one would orphan every stored row.
STORED = {
    RunStatus: ["queued", "running", "waiting", "completed", "failed", "cancelled"],
    StepStatus: ["pending", "running", "waiting", "completed", "failed", "cancelled", "retrying"],
    AttemptStatus: ["running", "completed", "failed", "cancelled"],
}
TABLES: list[tuple[type[StrEnum], dict[StrEnum, frozenset[StrEnum]]]] = [
    (RunStatus, RUN_TRANSITIONS),  # type: ignore[list-item]
    (StepStatus, STEP_TRANSITIONS),  # type: ignore[list-item]
    (AttemptStatus, ATTEMPT_TRANSITIONS),  # type: ignore[list-item]
]
INITIAL = {RunStatus: RunStatus.QUEUED, StepStatus: StepStatus.PENDING, AttemptStatus: AttemptStatus.RUNNING}


@pytest.mark.parametrize("enum", list(STORED), ids=lambda e: e.__name__)
def test_enum_values_are_the_stored_values(enum: type[StrEnum]) -> None:
    assert [m.value for m in enum] == STORED[enum]
    assert all(m.name.lower() == m.value for m in enum)
    assert max(len(m.value) for m in enum) <= 16  # the columns are CHAR(16)


def test_the_migrations_declare_the_same_members() -> None:
    """The latest migration that states an enum's members (0006 added RETRYING to the steps) states them all."""
    texts = sorted((Path(st.__file__).parent / "migrations").glob("0*.py"))
    for enum in STORED:
        declared = [t.read_text() for t in texts if f"enum_type={enum.__name__}" in t.read_text()]
        description = "\\n".join(f"{m.name}: {m.value}" for m in enum)
        assert f"description='{description}', enum_type={enum.__name__}" in declared[-1]


async def test_each_status_is_stored_and_read_back_as_its_value(db: str) -> None:
    now = datetime.now(UTC)
    for rs in RunStatus:
        run = await Run.create(
            workflow="w", definition={}, inputs={}, status=rs, actor="t", created_at=now, updated_at=now
        )
        raw = await fetch("SELECT status FROM runs WHERE id = ?", (run.id,))
        assert raw[0]["status"] == rs.value
        assert (await Run.get(id=run.id)).status is rs
    run = await Run.create(workflow="w", definition={}, inputs={}, actor="t", created_at=now, updated_at=now)
    assert (await fetch("SELECT status FROM runs WHERE id = ?", (run.id,)))[0]["status"] == "queued"
    for i, ss in enumerate(StepStatus):
        step = await Step.create(
            run=run, key=f"s{i}", label="S", position=i, kind="python", needs=[], status=ss, updated_at=now
        )
        assert (await fetch("SELECT status FROM steps WHERE id = ?", (step.id,)))[0]["status"] == ss.value
        assert (await Step.get(id=step.id)).status is ss
    step = await Step.get(key="s0", run_id=run.id)
    for n, ast in enumerate(AttemptStatus, start=1):
        attempt = await Attempt.create(run=run, step=step, number=n, status=ast, consumed={}, logs=[], started_at=now)
        assert (await fetch("SELECT status FROM attempts WHERE id = ?", (attempt.id,)))[0]["status"] == ast.value
        assert (await Attempt.get(id=attempt.id)).status is ast


async def test_statuses_written_as_raw_parameters_read_back_as_members(db: str) -> None:
    run_id = (
        await transitions.create_run(
            transitions.NewRun("w", {}, {}, [transitions.NewStep("a", "A", "python", [])], "t")
        )
    ).id
    assert await transitions.claim_run(run_id, await holding_lease("h:1:b"))
    run = await Run.get(id=run_id)
    assert run.status is RunStatus.RUNNING
    step = await Step.get(run_id=run_id, key="a")
    assert step.status is StepStatus.PENDING


@pytest.mark.parametrize(("enum", "table"), TABLES, ids=lambda x: getattr(x, "__name__", ""))
def test_each_table_covers_every_member_and_names_only_members(
    enum: type[StrEnum], table: dict[StrEnum, frozenset[StrEnum]]
) -> None:
    assert set(table) == set(enum)
    for frm, tos in table.items():
        assert tos <= set(enum), frm


@pytest.mark.parametrize(("enum", "table"), TABLES, ids=lambda x: getattr(x, "__name__", ""))
def test_every_status_is_reachable_from_the_initial_one(
    enum: type[StrEnum], table: dict[StrEnum, frozenset[StrEnum]]
) -> None:
    seen, todo = {INITIAL[enum]}, [INITIAL[enum]]
    while todo:
        for nxt in table[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    assert seen == set(enum)


def test_terminal_states_are_left_only_by_a_rerun() -> None:
    assert {RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED} == RUN_TERMINAL
    for rs in RUN_TERMINAL:
        assert RUN_TRANSITIONS[rs] == {RunStatus.QUEUED}
    for ss in STEP_FINISHED:
        assert STEP_TRANSITIONS[ss] == {StepStatus.PENDING}
    for a in ATTEMPT_TERMINAL:
        assert ATTEMPT_TRANSITIONS[a] == frozenset()  # an attempt is never reused
    assert set(AttemptStatus) - ATTEMPT_TERMINAL == {AttemptStatus.RUNNING}


def test_active_runs_and_who_may_be_cancelled() -> None:
    assert {RunStatus.QUEUED, RunStatus.RUNNING} == RUN_ACTIVE
    can_cancel = {s for s, tos in RUN_TRANSITIONS.items() if RunStatus.CANCELLED in tos}
    assert can_cancel == {RunStatus.QUEUED, RunStatus.RUNNING, RunStatus.WAITING}
    assert not RUN_ACTIVE & RUN_TERMINAL
    for start in set(RunStatus) - RUN_TERMINAL:  # every unfinished run can still end
        seen, todo = {start}, [start]
        while todo:
            for nxt in RUN_TRANSITIONS[todo.pop()] - seen:
                seen.add(nxt)
                todo.append(nxt)
        assert seen & RUN_TERMINAL, start


def test_a_running_step_ends_in_each_outcome_its_attempt_can_have() -> None:
    outcomes = {StepStatus(a.value) for a in ATTEMPT_TRANSITIONS[AttemptStatus.RUNNING]}
    assert outcomes <= STEP_TRANSITIONS[StepStatus.RUNNING]
    # a completed attempt without a selection leaves the step waiting
    assert StepStatus.WAITING in STEP_TRANSITIONS[StepStatus.RUNNING]
    assert StepStatus.COMPLETED in STEP_TRANSITIONS[StepStatus.WAITING]
