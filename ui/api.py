"""The JSON API under /api (OpenAPI at /docs). Reads through `engine.queries`, acts through
`engine.operations`; every error is JSON with a message, never a 500 for bad input."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.security import HTTPBearer
from fastapi.types import DecoratedCallable
from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema

from engine import auth, operations, queries
from engine.db import current
from engine.errors import Forbidden, InvalidInput, NotFound
from engine.llm import providers
from engine.registry import Registry
from models.status import RunStatus
from ui import security
from ui.api_models import (
    AttemptOut,
    DefinitionErrorOut,
    ErrorBody,
    LlmOut,
    PlanOut,
    ReloadOut,
    RunOut,
    RunSummaryOut,
    StepOut,
    WorkflowOut,
    list_of,
    workflow_json,
)
from ui.api_notifications import router as notifications_router
from ui.sse import event_stream

# Declared so that the document (and the Authorize button of /docs) says how to authenticate; the gate
# in ui/security.py checks the token, or the browser's session, before any route runs.
bearer = HTTPBearer(auto_error=False, description="a token from `main.py tokens add USER` (when sign-in is on)")
router = APIRouter(prefix="/api", tags=["api"])
protected = APIRouter(dependencies=[Depends(bearer)])  # every route but health

SIGN_IN: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "Not signed in and no valid bearer token (when sign-in is on)"},
}
ERRORS: dict[int | str, dict[str, Any]] = {
    **SIGN_IN,
    400: {"model": ErrorBody, "description": "Malformed request (a body that is not JSON)"},
    404: {"model": ErrorBody, "description": "No such run, step or workflow"},
    409: {"model": ErrorBody, "description": "Not possible in the run's current state"},
    422: {"model": ErrorBody, "description": "Invalid request"},
}


class StartRunIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    workflow: str = Field(min_length=1, max_length=200, description="name of a workflow definition")
    inputs: dict[str, Any] = Field(default_factory=dict, description="input values by name")


class SelectIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    index: int = Field(strict=True, description="0-based index of the alternative to select")


class OrjsonResponse(JSONResponse):
    """Starlette's JSON answer encoded by orjson: the same bytes for a run (enum keys as their text), in a
    third of the CPU, which a 2,000-step run's page of JSON and every started run pay. What orjson refuses
    (an integer past 64 bits in a step's output, text with a lone surrogate) takes Starlette's encoder,
    and its error."""

    def render(self, content: Any) -> bytes:
        try:
            return orjson.dumps(content, option=orjson.OPT_NON_STR_KEYS)
        except orjson.JSONEncodeError:
            return super().render(content)


EVENT_ID = r"^[0-9]{1,18}$"


def parse_run_id(run_id: str) -> int:
    """Run ids are integers; anything else names no run (a 404, not a validation error)."""
    if not (run_id.isascii() and run_id.isdigit()) or len(run_id) > 18:
        raise NotFound(f"run {run_id!r} does not exist")
    return int(run_id)


ACTIONS: dict[int | str, dict[str, Any]] = {
    **ERRORS,
    403: {"model": ErrorBody, "description": "A viewer may not act, or a cross-origin request"},
}


def actor_of(request: Request) -> str:
    """Who acts, as recorded in the run's events: the user (and token), or api@address when sign-in is off."""
    who = security.principal(request)
    if who.via == "local":
        host = request.client.host if request.client else "unknown"
        return f"api@{host}"
    return who.actor


async def operator(request: Request) -> str:
    """The actor of a request that acts on runs; viewers get a 403. (Async: FastAPI would run a sync
    dependency in a thread, a round trip that cost more than the rest of a request.)"""
    who = security.principal(request)
    if not who.can_act:
        raise Forbidden(f"{who.name} is a viewer: only operators can start, cancel, retry, resume or select")
    return actor_of(request)


Operator = Annotated[str, Depends(operator)]


async def registry(request: Request) -> Registry:
    """The definitions of the app serving the request (`app.state.workflows`, set by `ui.app.mount`)."""
    workflows: Registry = request.app.state.workflows
    return workflows


Workflows = Annotated[Registry, Depends(registry)]


def run_action(path: str, summary: str) -> Callable[[DecoratedCallable], DecoratedCallable]:
    """The route of an action on a run: a POST that only an operator may make, answered with the run as it
    is afterwards (`run_response`)."""
    return protected.post(path, response_model=RunOut, responses=ACTIONS, summary=summary)


def read(
    path: str, model: Any, summary: str, responses: dict[int | str, dict[str, Any]] = ERRORS
) -> Callable[[DecoratedCallable], DecoratedCallable]:
    """The route of a read: a GET answered with `model`, its errors documented by `responses`."""
    return protected.get(path, response_model=model, responses=responses, summary=summary)


async def run_response(run_id: int, workflows: Workflows) -> JSONResponse:
    """The run as read now: the answer of its reads and of every action on it, sent as `RunDetail.to_json`
    builds it (`RunOut` documents it)."""
    return OrjsonResponse((await queries.run_detail(run_id, workflows)).to_json())


@router.get(
    "/health",
    summary="Liveness probe (open: it says nothing but that the server answers and has its database)",
    responses={503: {"description": "The database file was removed or replaced while serving"}},
)
async def health() -> JSONResponse:
    lost = current().check_file()
    return JSONResponse(
        {"status": "ok"} if lost is None else {"status": "database lost", "reason": lost}, 503 if lost else 200
    )


@read("/llm", LlmOut, "The model provider LLM steps use (simulated when none is set)", responses=SIGN_IN)
async def llm_provider(request: Request) -> providers.ProviderJson:
    return providers.describe(request.app.state.settings)


@read("/workflows", list[WorkflowOut], "Workflow definitions", responses=SIGN_IN)
async def list_workflows(workflows: Workflows) -> list[dict[str, Any]]:
    return [workflow_json(d) for d in sorted(workflows.definitions.values(), key=lambda d: d.name)]


@read("/workflows/errors", list[DefinitionErrorOut], "Definition files that failed to load", responses=SIGN_IN)
async def workflow_errors(workflows: Workflows) -> list[dict[str, Any]]:
    return [
        {"source": e.source, "step": e.step, "field": e.field, "line": e.line, "message": str(e)}
        for e in workflows.errors
    ]


@read("/workflows/{name}", WorkflowOut, "One workflow definition")
async def get_workflow(workflows: Workflows, name: str) -> dict[str, Any]:
    return workflow_json(workflows.get(name))


@protected.post("/runs", status_code=201, response_model=RunOut, responses=ACTIONS, summary="Start a run of a workflow")
async def start_run(workflows: Workflows, body: StartRunIn, actor: Operator) -> JSONResponse:
    run = await operations.start_run_json(workflows.get(body.workflow), body.inputs, actor)
    return OrjsonResponse(run, status_code=201)


@read(
    "/runs",
    list_of(RunSummaryOut),
    "Runs, newest first, as summaries (a run's outputs and logs come from GET /api/runs/{id})",
)
async def list_runs(
    workflows: Workflows,
    status: Annotated[RunStatus | None, Query(description="only runs in this status")] = None,
    workflow: Annotated[str | None, Query(max_length=200, description="only runs of this workflow")] = None,
    limit: Annotated[int, Query(ge=1, le=queries.MAX_PAGE)] = 50,
    offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
    include_steps: Annotated[bool, Query(description="include each run's steps (their states, not outputs)")] = False,
) -> list[queries.RunSummaryJson]:
    return await queries.list_runs(
        status=status.value if status else None,
        workflow=workflow,
        limit=limit,
        offset=offset,
        include_steps=include_steps,
        workflows=workflows,
    )


@read("/runs/{run_id}", RunOut, "A run with its steps")
async def get_run(workflows: Workflows, run_id: str) -> JSONResponse:
    return await run_response(parse_run_id(run_id), workflows)


@run_action("/runs/{run_id}/cancel", "Cancel a run")
async def cancel_run(workflows: Workflows, run_id: str, actor: Operator) -> JSONResponse:
    rid = parse_run_id(run_id)
    await operations.cancel_run(rid, actor)
    return await run_response(rid, workflows)


@run_action("/runs/{run_id}/resume", "Resume from the first unfinished step")
async def resume_run(workflows: Workflows, run_id: str, actor: Operator) -> JSONResponse:
    rid = parse_run_id(run_id)
    await operations.resume_run(rid, actor)
    return await run_response(rid, workflows)


@read("/runs/{run_id}/steps/{key}/rerun-plan", PlanOut, "What a rerun from this step would re-run and keep")
async def rerun_plan(run_id: str, key: str) -> dict[str, Any]:
    plan = await operations.rerun_plan(parse_run_id(run_id), key)
    return PlanOut.from_plan(plan).model_dump()


@run_action("/runs/{run_id}/steps/{key}/rerun", "Re-run this step and its dependents (retry / resume from here)")
async def rerun_step(workflows: Workflows, run_id: str, key: str, actor: Operator) -> JSONResponse:
    rid = parse_run_id(run_id)
    await operations.rerun_from(rid, key, actor)
    return await run_response(rid, workflows)


@run_action(
    "/runs/{run_id}/refresh-stale", "Re-run the run's stale steps (and what depends on them); 409 when none is stale"
)
async def refresh_stale(workflows: Workflows, run_id: str, actor: Operator) -> JSONResponse:
    rid = parse_run_id(run_id)
    await operations.refresh_stale(rid, actor)
    return await run_response(rid, workflows)


@run_action("/runs/{run_id}/steps/{key}/select", "Select an alternative of the step's current attempt")
async def select(workflows: Workflows, run_id: str, key: str, body: SelectIn, actor: Operator) -> JSONResponse:
    rid = parse_run_id(run_id)
    await operations.select(rid, key, body.index, actor)
    return await run_response(rid, workflows)


@read("/runs/{run_id}/steps/{key}", StepOut, "One step of a run")
async def get_step(workflows: Workflows, run_id: str, key: str) -> JSONResponse:
    run = await queries.run_detail(parse_run_id(run_id), workflows)
    for step in run.steps:
        if step.key == key:
            return OrjsonResponse(step.to_json())
    raise NotFound(f"run {run_id} has no step {key!r}")


@read("/runs/{run_id}/attempts", list_of(AttemptOut), "Every attempt of the run's steps, history included")
async def list_attempts(run_id: str) -> list[queries.AttemptJson]:
    return await queries.list_attempts(parse_run_id(run_id))


@protected.get(
    "/runs/{run_id}/events",
    responses={
        **ERRORS,
        200: {"content": {"text/event-stream": {}}, "description": "Server-Sent Events (or JSON with follow=false)"},
    },
    summary="The run's events as Server-Sent Events, resumable with Last-Event-ID",
    response_model=None,
)
async def run_events(
    run_id: str,
    request: Request,
    last_event_id: Annotated[
        str | None,
        Header(alias="Last-Event-ID", pattern=EVENT_ID, description="resume after this event id"),
        # A header is absent or a string, never JSON null (the document would otherwise invite "null").
        WithJsonSchema({"type": "string", "pattern": EVENT_ID}),
    ] = None,
    after: Annotated[int, Query(ge=0, le=2**62, description="replay events after this id")] = 0,
    follow: Annotated[bool, Query(description="keep streaming live changes (false: replay and close)")] = True,
) -> StreamingResponse | JSONResponse:
    rid = parse_run_id(run_id)
    if not await queries.run_exists(rid):
        raise NotFound(f"run {rid} does not exist")
    if last_event_id is not None:
        value = last_event_id.strip()
        if not (value.isascii() and value.isdigit()) or len(value) > 18:
            raise InvalidInput("Last-Event-ID must be an event id (an integer)", {"Last-Event-ID": "not an event id"})
        # Where ids are not in commit order (PostgreSQL) a larger id is not a later event: the client's wins.
        after = max(after, int(value)) if queries.ids_in_commit_order() else int(value)
    if not follow and "text/event-stream" not in request.headers.get("accept", ""):
        return OrjsonResponse(await queries.events_after(rid, after, limit=100_000))
    stream: AsyncIterator[str] = event_stream(request, current().hub, rid, after, follow=follow)
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(stream, media_type="text/event-stream", headers=headers)


@protected.post(
    "/workflows/reload",
    response_model=ReloadOut,
    responses=ACTIONS,
    summary="Reload definitions from the workflows directory",
)
async def reload_workflows(workflows: Workflows, actor: Operator) -> dict[str, Any]:
    catalog = await asyncio.to_thread(workflows.reload)  # reads files and imports step modules
    return {"workflows": sorted(catalog.definitions), "errors": [str(e) for e in catalog.errors]}


class MeOut(BaseModel):
    name: str
    role: str  # viewer | operator
    via: str  # session | token | local (sign-in is off)
    token: str | None


class AuditOut(BaseModel):
    id: int
    at: str
    actor: str
    action: str  # sign_in, sign_in_failed, sign_out, token_used, token_added, user_added, ...
    detail: str | None
    address: str | None


@read("/me", MeOut, "Who this request acts as")
async def me(request: Request) -> dict[str, Any]:
    who = security.principal(request)
    return {"name": who.name, "role": who.role, "via": who.via, "token": who.token}


@read("/audit", list[AuditOut], "Sign-ins, token use, account changes", responses=ACTIONS)
async def audit_trail(request: Request, limit: Annotated[int, Query(ge=1, le=1000)] = 200) -> list[dict[str, Any]]:
    if not security.principal(request).can_act:
        raise Forbidden("the audit trail is for operators")
    return [
        {
            "id": e.id,
            "at": e.at.isoformat(),
            "actor": e.actor,
            "action": e.action,
            "detail": e.detail,
            "address": e.address,
        }
        for e in await auth.audit_entries(limit)
    ]


protected.include_router(notifications_router)
router.include_router(protected)
