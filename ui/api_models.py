"""Response shapes of the JSON API, for the OpenAPI document and response validation."""

from __future__ import annotations

import dataclasses
from typing import Any

from pydantic import BaseModel, ConfigDict

from engine.definitions import WorkflowDef
from engine.operations import RerunPlan


class ErrorBody(BaseModel):
    error: str  # not_found | conflict | invalid
    message: str
    problems: dict[str, str] = {}


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    estimated: bool = False  # some counts were estimated from the text: the server reported none


class Cost(BaseModel):
    """LLM cost in USD from the price file (STEPDECK_LLM_PRICES); usd is null when the model has no price."""

    usd: float | None
    estimated: bool  # from estimated token counts


class StepOut(BaseModel):
    model_config = ConfigDict(extra="allow")
    key: str
    label: str
    kind: str
    needs: list[str]
    status: str
    attempt: int
    output: Any = None
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
    log_times: list[str | None]  # when each line of `logs` was written (ISO 8601, UTC); null: not known
    # LLM steps (None/False for other kinds): tokens used against the limit sent, and truncation.
    usage: Usage | None
    max_tokens: int | None
    finish_reason: str | None
    truncated: bool
    provider: str | None  # "simulated" when no model endpoint is configured
    model: str | None
    llm: dict[str, Any] | None  # the full record: per-alternative usage and cost, every call made
    cost: Cost | None = None  # over all attempts of the step (None without LLM usage)


class StepSummaryOut(BaseModel):
    """A step in the runs list: its state, not what it produced (outputs and logs come per run)."""

    key: str
    label: str
    kind: str
    needs: list[str]
    status: str
    attempt: int
    stale: bool
    truncated: bool
    error: str | None  # the first ERROR_SUMMARY_CHARS characters of a failed or cancelled step's error
    started_at: str | None
    completed_at: str | None
    duration_s: float | None


class AttemptOut(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: int
    step: str
    number: int
    current: bool  # the step's current attempt (the others are history)
    status: str
    outputs: list[Any] | None
    selected_index: int | None
    partial_output: str | None
    error: str | None
    error_detail: str | None
    consumed: dict[str, Any]  # upstream step -> {attempt, index} it read
    logs: list[str]
    log_times: list[str | None]  # index for index with `logs`, as on a step
    progress: float | None
    progress_message: str | None
    owner: str | None
    started_at: str | None
    finished_at: str | None
    duration_s: float | None
    usage: Usage | None
    max_tokens: int | None
    finish_reason: str | None
    truncated: bool
    provider: str | None
    model: str | None
    llm: dict[str, Any] | None


class Progress(BaseModel):
    completed: int
    total: int


class RunOut(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: int
    workflow: str
    status: str
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
    progress: Progress
    step_counts: dict[str, int]
    needs_choice: list[str]
    stale_steps: list[str]
    truncated_steps: list[str]  # steps whose current output was cut off at the token limit
    cost: Cost | None = None  # LLM cost of the run (None without LLM usage)
    steps: list[StepOut] | None = None


class RunSummaryOut(BaseModel):
    """A run in the runs list: bounded in size whatever its steps produced or logged."""

    model_config = ConfigDict(extra="allow")
    id: int
    workflow: str
    status: str
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
    progress: Progress
    step_counts: dict[str, int]
    needs_choice: list[str]
    stale_steps: list[str]
    truncated_steps: list[str]
    steps: list[StepSummaryOut] | None = None  # with ?include_steps=true


class PlanOut(BaseModel):
    run_id: int
    step: str
    rerun: list[str]
    keep: list[str]
    allowed: bool
    reason: str | None

    @classmethod
    def from_plan(cls, plan: RerunPlan) -> PlanOut:
        return cls(**dataclasses.asdict(plan))


class InputOut(BaseModel):
    name: str
    type: str
    required: bool
    default: Any = None
    description: str
    options: list[str]


class StepDefOut(BaseModel):
    key: str
    label: str
    kind: str
    needs: list[str]
    alternatives: int
    select: str
    timeout_s: float
    description: str
    config: dict[str, Any]  # kind-specific fields: `call`, or an LLM step's prompt, model, limits


class LlmOut(BaseModel):
    provider: str  # "simulated" or "openai-compatible"
    simulated: bool
    base_url: str | None  # without credentials
    model: str | None  # the default model
    max_tokens: int  # the default limit


class DefinitionErrorOut(BaseModel):
    source: str  # the definition file
    step: str | None  # the step's key, or "#N" for a step without one
    field: str | None
    line: int | None
    message: str


class ReloadOut(BaseModel):
    workflows: list[str]  # names of the definitions now loaded
    errors: list[str]  # files that failed to load, with why


class WorkflowOut(BaseModel):
    name: str
    description: str
    source: str
    inputs: list[InputOut]
    steps: list[StepDefOut]


def workflow_json(defn: WorkflowDef) -> dict[str, Any]:
    return {
        "name": defn.name,
        "description": defn.description,
        "source": defn.source,
        "inputs": [{**dataclasses.asdict(i), "options": list(i.options)} for i in defn.inputs],
        "steps": [
            {
                "key": s.key,
                "label": s.label,
                "kind": s.kind,
                "needs": list(s.needs),
                "alternatives": s.alternatives,
                "select": s.select,
                "timeout_s": s.timeout_s,
                "description": s.description,
                "config": {"call": s.call, **s.config} if s.call else dict(s.config),
            }
            for s in defn.steps
        ],
    }
