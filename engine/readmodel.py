"""The typed read model: what a run and its steps show, read once and used by the dashboard, the
JSON API and the command line alike (`engine/queries.py` builds it; `to_json` is the API's shape).

What a step shows comes from its status and its current attempt only: a step reset to PENDING by a
rerun shows no output, alternatives or error, even though its earlier attempts keep theirs.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypedDict

from engine.llm.record import LlmFieldsJson, LlmJson
from models.status import RunStatus, StepStatus

if TYPE_CHECKING:
    from engine.definitions import WorkflowDef

PRODUCED = (StepStatus.WAITING, StepStatus.COMPLETED)
ENDED = (StepStatus.WAITING, StepStatus.COMPLETED, StepStatus.FAILED, StepStatus.CANCELLED)


def cut_off(llm: LlmJson | None, selected_index: int | None) -> bool:
    """Whether what a step offers was cut off at the token limit: the chosen alternative once one is
    chosen among several (an unselected one cut short does not flag the step), else any of them."""
    if not llm or not llm.get("truncated"):
        return False
    alternatives = llm.get("alternatives") or []
    if selected_index is None or len(alternatives) < 2:
        return True
    return any(a.get("index") == selected_index and a.get("truncated") for a in alternatives)


def iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def from_epoch_ms(ms: int) -> datetime:
    return EPOCH + timedelta(milliseconds=ms)


def line_times(stored: Any, count: int) -> tuple[datetime | None, ...]:
    """The times of `count` log lines from the stored epoch milliseconds, index for index; None for a
    line without one (attempts made before times were kept store none)."""
    times = stored if isinstance(stored, list) else []
    return tuple(from_epoch_ms(t) if i < len(times) and isinstance(t := times[i], int) else None for i in range(count))


def log_time_iso(at: datetime | int | None) -> str | None:
    """A log line's time as ISO 8601 with milliseconds (from a datetime or epoch milliseconds)."""
    if at is None:
        return None
    return (from_epoch_ms(at) if isinstance(at, int) else at).isoformat(timespec="milliseconds")


def duration_s(start: datetime | None, end: datetime | None) -> float | None:
    return round((end - start).total_seconds(), 3) if start is not None and end is not None else None


class CostJson(TypedDict):
    """What LLM calls cost in USD (None when no model they used has a price); estimated when some token
    counts were."""

    usd: float | None
    estimated: bool


class StepHeadJson(TypedDict):
    """What every view of a step starts with: which step it is and where it stands."""

    key: str
    label: str
    kind: str
    needs: list[str]
    status: StepStatus
    attempt: int


class StepShownJson(StepHeadJson):
    """What a step shows of its current attempt besides the LLM record (`StepJson`, which adds that record
    after it: the order the API lists a step's fields in)."""

    output: Any
    alternatives: list[Any]
    selected_index: int | None
    partial_output: str | None
    error: str | None
    error_detail: str | None
    stale: bool
    stale_reason: str | None
    started_at: str | None
    completed_at: str | None
    duration_s: float | None
    progress: float | None
    progress_message: str | None
    logs: list[str]
    log_times: list[str | None]  # when each line of `logs` was written (ISO 8601, UTC); None: not known


class StepJson(StepShownJson, LlmFieldsJson):
    """A step as the API shows it (`StepDetail.to_json`), with what its current attempt's LLM record shows."""

    cost: CostJson | None  # over all attempts of the step (None without LLM usage)
    retries: int
    retries_used: int
    retry_at: str | None


class RunJson(TypedDict):
    """A run's own fields, without its steps (`run_json`)."""

    id: int
    workflow: str
    status: RunStatus
    error: str | None
    inputs: dict[str, Any]
    actor: str
    owner: str | None
    heartbeat_at: str | None
    recoveries: int
    created_at: str
    started_at: str | None
    finished_at: str | None
    updated_at: str
    duration_s: float | None


class ProgressJson(TypedDict):
    completed: int
    total: int


class StepStateJson(TypedDict):
    """What `summary` reads of a step as JSON: its full JSON or its summary in the runs list."""

    key: str
    status: StepStatus
    stale: bool
    truncated: bool


class SummaryJson(TypedDict):
    """Progress, per-status counts and the steps that need a look (`summary`)."""

    progress: ProgressJson
    step_counts: dict[StepStatus, int]
    needs_choice: list[str]
    stale_steps: list[str]
    truncated_steps: list[str]


class RunDetailJson(RunJson, SummaryJson):
    """A run with its steps as the API shows it (`RunDetail.to_json`): its fields, the summary, the cost."""

    cost: CostJson | None
    steps: list[StepJson]


@dataclass(frozen=True, slots=True)
class StepDetail:
    """A step with what its current attempt shows, by the step's status. What a step shows defaults to
    nothing: a step before its first attempt (as every step of a new run is) needs only its definition and
    status; a step read from its row sets every field (`queries.step_detail`)."""

    key: str
    label: str
    kind: str
    needs: tuple[str, ...]
    status: StepStatus
    attempt: int = 0  # number of the current attempt, 0 before the first
    alternatives: tuple[Any, ...] = ()  # the current attempt's outputs once produced (waiting or completed)
    selected_index: int | None = None
    partial_output: str | None = None  # what a stopped attempt had produced
    error: str | None = None
    error_detail: str | None = None
    stale: bool = False
    stale_reason: str | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None
    progress: float | None = None
    progress_message: str | None = None
    logs: tuple[str, ...] = ()
    llm: LlmJson | None = None  # the current attempt's LLM record (usage, calls, truncation)
    cost: CostJson | None = None  # LLM cost over all the step's attempts; None without usage
    retries: int = 0  # automatic retries its policy allows
    retries_used: int = 0  # automatic retries made since it started or a person reset it
    retry_at: datetime | None = None  # RETRYING: when its next attempt is due
    log_times: tuple[datetime | None, ...] = ()  # when each line of `logs` was written (None: not known)

    @property
    def output(self) -> Any:
        if self.selected_index is None or self.selected_index >= len(self.alternatives):
            return None
        return self.alternatives[self.selected_index]

    @property
    def truncated(self) -> bool:
        return cut_off(self.llm, self.selected_index)

    @property
    def timed_logs(self) -> list[tuple[datetime | None, str]]:
        """Each log line with the time it was written (None when not known)."""
        times = self.log_times
        return [(times[i] if i < len(times) else None, line) for i, line in enumerate(self.logs)]

    @property
    def duration_s(self) -> float | None:
        return duration_s(self.started_at, self.completed_at)

    def to_json(self) -> StepJson:
        llm = self.llm
        return {
            "key": self.key,
            "label": self.label,
            "kind": self.kind,
            "needs": list(self.needs),
            "status": self.status,
            "attempt": self.attempt,
            "output": self.output,
            "alternatives": list(self.alternatives),
            "selected_index": self.selected_index,
            "partial_output": self.partial_output,
            "error": self.error,
            "error_detail": self.error_detail,
            "stale": self.stale,
            "stale_reason": self.stale_reason,
            "started_at": iso(self.started_at),
            "completed_at": iso(self.completed_at),
            "duration_s": self.duration_s,
            "progress": self.progress,
            "progress_message": self.progress_message,
            "logs": list(self.logs),
            "log_times": [log_time_iso(at) for at, _ in self.timed_logs],
            "usage": llm["usage"] if llm else None,
            "max_tokens": llm["max_tokens"] if llm else None,
            "finish_reason": llm["finish_reason"] if llm else None,
            "truncated": self.truncated,
            "provider": llm["provider"] if llm else None,
            "model": llm["model"] if llm else None,
            "llm": llm,
            "cost": self.cost.copy() if self.cost is not None else None,
            "retries": self.retries,
            "retries_used": self.retries_used,
            "retry_at": iso(self.retry_at),
        }


@dataclass(frozen=True, slots=True)
class RunDetail:
    """A run with its steps in declared order."""

    id: int
    workflow: str
    status: RunStatus
    error: str | None
    inputs: dict[str, Any]
    actor: str
    owner: str | None
    heartbeat_at: datetime | None
    recoveries: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime
    steps: tuple[StepDetail, ...]

    def step(self, key: str) -> StepDetail:
        return next(s for s in self.steps if s.key == key)

    @property
    def cost(self) -> CostJson | None:
        """The run's LLM cost (None without LLM usage; usd None when no model used has a price)."""
        costs = [s.cost for s in self.steps if s.cost is not None]
        return total_cost(costs) if costs else None

    def to_json(self) -> RunDetailJson:
        steps = [s.to_json() for s in self.steps]
        shown = summary(steps)
        if self.status in (RunStatus.FAILED, RunStatus.CANCELLED):
            shown["needs_choice"] = []  # a stopped run asks for nothing until it is resumed
        return {**run_json(self), **shown, "cost": self.cost, "steps": steps}


def created_run(
    run_id: int, defn: WorkflowDef, inputs: dict[str, Any], actor: str, created_at: datetime, owner: str | None = None
) -> RunDetail:
    """A run as it is created: queued (or, claimed as it was created, running for `owner`), every step
    pending (what reading it back would show)."""
    started = created_at if owner is not None else None
    return RunDetail(
        id=run_id,
        workflow=defn.name,
        status=RunStatus.QUEUED if owner is None else RunStatus.RUNNING,
        error=None,
        inputs=inputs,
        actor=actor,
        owner=owner,
        heartbeat_at=started,
        recoveries=0,
        created_at=created_at,
        started_at=started,
        finished_at=None,
        updated_at=created_at,
        steps=defn.derived(_pending_steps),
    )


def created_run_json(
    run_id: int, defn: WorkflowDef, inputs: dict[str, Any], actor: str, created_at: datetime, owner: str | None = None
) -> RunDetailJson:
    """`created_run(...).to_json()`, its steps and their summary made once per definition (what starting a
    run over the API answers: the same for every run of a definition but the run's own fields)."""
    steps, shown = defn.derived(_pending_json)
    run = created_run(run_id, defn, inputs, actor, created_at, owner)
    return {**run_json(run), **shown, "cost": None, "steps": steps}


def _pending_steps(defn: WorkflowDef) -> tuple[StepDetail, ...]:
    """The steps of a new run of `defn`, all pending (frozen: one tuple serves every run of it)."""
    return tuple(
        StepDetail(
            key=s.key, label=s.label, kind=s.kind, needs=tuple(s.needs), status=StepStatus.PENDING, retries=s.retries
        )
        for s in defn.steps
    )


def _pending_json(defn: WorkflowDef) -> tuple[list[StepJson], SummaryJson]:
    steps = [s.to_json() for s in defn.derived(_pending_steps)]
    return steps, summary(steps)


def total_cost(costs: Iterable[CostJson]) -> CostJson:
    """The sum of costs; estimated if any part was."""
    parts = list(costs)
    priced = [usd for c in parts if (usd := c.get("usd")) is not None]
    return {"usd": sum(priced) if priced else None, "estimated": any(c.get("estimated") for c in parts)}


def run_json(run: RunDetail) -> RunJson:
    """The run's own fields (without its steps)."""
    return {
        "id": run.id,
        "workflow": run.workflow,
        "status": run.status,
        "error": run.error,
        "inputs": run.inputs,
        "actor": run.actor,
        "owner": run.owner,
        "heartbeat_at": iso(run.heartbeat_at),
        "recoveries": run.recoveries,
        "created_at": run.created_at.isoformat(),
        "started_at": iso(run.started_at),
        "finished_at": iso(run.finished_at),
        "updated_at": run.updated_at.isoformat(),
        "duration_s": duration_s(run.started_at, run.finished_at),
    }


def summary(steps: Sequence[StepStateJson]) -> SummaryJson:
    """Progress, per-status counts and the steps that need a look, from steps as JSON."""
    counts: dict[StepStatus, int] = {}
    for s in steps:
        counts[s["status"]] = counts.get(s["status"], 0) + 1
    return {
        "progress": {"completed": counts.get(StepStatus.COMPLETED, 0), "total": len(steps)},
        "step_counts": counts,
        "needs_choice": [s["key"] for s in steps if s["status"] == StepStatus.WAITING],
        "stale_steps": [s["key"] for s in steps if s["stale"]],
        "truncated_steps": [s["key"] for s in steps if s["truncated"]],
    }


@dataclass(slots=True)
class StepRow:
    """What a run page shows of a step without opening it: one per step, kept current from the hub's
    changes and re-read (for the changed steps only) when a change implies more than a status."""

    key: str
    label: str
    kind: str
    status: StepStatus
    attempt: int
    stale: bool = False
    truncated: bool = False  # an output of the current attempt was cut off at the token limit
    started_at: float | None = None  # epoch seconds of the current attempt
    finished_at: float | None = None

    @property
    def needs_attention(self) -> bool:
        return self.status in (StepStatus.FAILED, StepStatus.WAITING) or self.stale or self.truncated
