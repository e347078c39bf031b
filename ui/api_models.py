"""Response shapes of the JSON API, for the OpenAPI document and response validation: the run, step and
attempt shapes documented from the engine's own (`documented`), the rest declared here."""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Collection
from enum import Enum
from functools import reduce
from types import UnionType
from typing import Any, NotRequired, Union, get_args, get_origin, get_type_hints

from pydantic import BaseModel, ConfigDict, create_model

from engine.definitions import WorkflowDef
from engine.llm.record import LlmJson, UsageJson
from engine.operations import RerunPlan
from engine.queries import AttemptJson, ConsumedJson, RunSummaryJson, StepSummaryJson
from engine.readmodel import CostJson, ProgressJson, RunDetailJson, StepJson


class ErrorBody(BaseModel):
    error: str  # not_found | conflict | invalid
    message: str
    problems: dict[str, str] = {}


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    estimated: bool = False  # some counts were estimated from the text: the server reported none


class Progress(BaseModel):
    completed: int
    total: int


class Cost(BaseModel):
    """LLM cost in USD from the price file (STEPDECK_LLM_PRICES); usd is null when the model has no price."""

    usd: float | None
    estimated: bool  # from estimated token counts


# What an engine JSON shape is typed as in the document, where not as itself (`as_documented`): shapes with a
# response model of their own (`documented` adds them), and records shown as free-form objects.
DOCUMENTED_AS: dict[Any, Any] = {
    UsageJson: Usage,
    CostJson: Cost,
    ProgressJson: Progress,
    LlmJson: dict[str, Any],  # the full record: per-alternative usage and cost, every call made
    ConsumedJson: Any,
}


def as_documented(hint: Any) -> Any:
    """The type the document gives a field the engine types `hint`: statuses are strings, engine shapes their
    response models (`DOCUMENTED_AS`), the same through lists, dicts and `| None`."""
    if hint in DOCUMENTED_AS:
        return DOCUMENTED_AS[hint]
    if isinstance(hint, type) and issubclass(hint, Enum):
        return str
    origin, args = get_origin(hint), get_args(hint)
    if origin is NotRequired:
        return as_documented(args[0])
    if origin in (Union, UnionType):
        return reduce(operator.or_, map(as_documented, args))
    if origin in (list, dict):
        return origin[tuple(map(as_documented, args))]
    return hint


def field_of(hint: Any, *, optional: bool) -> tuple[Any, Any]:
    """A response model's field (type, default) for a key the engine types `hint`: an optional or NotRequired
    key may be null, and is not required."""
    if optional or get_origin(hint) is NotRequired:
        documented_type = as_documented(hint)
        return (documented_type if documented_type is Any else documented_type | None), None
    return as_documented(hint), ...


def documented(
    shape: Any,
    name: str,
    *,
    doc: str | None = None,
    open_ended: bool = False,
    optional: Collection[str] = (),
    undocumented: Collection[str] = (),
) -> type[BaseModel]:
    """The response model of an engine JSON shape (a TypedDict): its fields in its order, typed by
    `as_documented`, so that the document follows the shape the engine returns. `optional` fields (and the
    shape's NotRequired ones) default to None; `undocumented` ones stay out of the document; `open_ended`
    passes on what the model does not declare."""
    hints = get_type_hints(shape, include_extras=True)
    fields: dict[str, Any] = {
        key: field_of(hint, optional=key in optional) for key, hint in hints.items() if key not in undocumented
    }
    config = ConfigDict(extra="allow") if open_ended else None
    model: type[BaseModel] = create_model(name, __config__=config, __doc__=doc, **fields)
    DOCUMENTED_AS[shape] = model
    return model


def list_of(model: type[BaseModel]) -> Any:
    """`list[model]`, as a route's response model, for a model made by `documented` (mypy reads `list[X]`
    in an expression as a type, which a model made at run time is not)."""
    return list[model]  # type: ignore[valid-type]


StepOut = documented(
    StepJson,
    "StepOut",
    open_ended=True,
    optional=("output", "cost"),
    undocumented=("retries", "retries_used", "retry_at"),
)
StepSummaryOut = documented(
    StepSummaryJson,
    "StepSummaryOut",
    doc="A step in the runs list: its state, not what it produced (outputs and logs come per run).",
)
AttemptOut = documented(AttemptJson, "AttemptOut", open_ended=True)
RunOut = documented(RunDetailJson, "RunOut", open_ended=True, optional=("cost", "steps"))
RunSummaryOut = documented(
    RunSummaryJson,
    "RunSummaryOut",
    doc="A run in the runs list: bounded in size whatever its steps produced or logged.",
    open_ended=True,
)


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
