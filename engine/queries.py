"""Read side: runs and steps as the typed read model (`engine/readmodel.py`), and summaries,
attempts and events as JSON-ready TypedDicts, for the dashboard, the API and the command line. Reads run
on the database's reader connections: never behind the engine's writes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import datetime
from typing import Any, NotRequired, TypedDict

from engine.db import current
from engine.errors import NotFound
from engine.hub import ChangeKind
from engine.json_limits import load_stored
from engine.llm.record import LlmFieldsJson, LlmJson, llm_json
from engine.readmodel import (
    ENDED,
    PRODUCED,
    CostJson,
    RunDetail,
    RunJson,
    StepDetail,
    StepHeadJson,
    StepRow,
    SummaryJson,
    cut_off,
    line_times,
    log_time_iso,
    run_json,
    summary,
)
from engine.registry import Registry, inputs_in_order
from engine.store import fetch
from models.status import STEP_ATTEMPT_ENDED, AttemptStatus, RunStatus, StepStatus

MAX_PAGE = 500


def _json(value: Any) -> Any:
    # Bounded: a value stored before inputs and outputs were checked must not break every read.
    return load_stored(value) if isinstance(value, (str, bytes)) else value


def _inputs(workflows: Registry | None, workflow: str, value: Any) -> Any:
    return inputs_in_order(workflows, workflow, value) if isinstance(value, dict) else value


def _dt(value: Any) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value))


def _iso(value: Any) -> str | None:
    dt = _dt(value)
    return dt.isoformat() if dt else None


def _duration_s(start: Any, end: Any) -> float | None:
    a, b = _dt(start), _dt(end)
    return round((b - a).total_seconds(), 3) if a and b else None


_RUN_COLUMNS = (
    "r.id, r.workflow, r.status, r.error, r.inputs, r.actor, r.owner, r.heartbeat_at, r.recoveries,"
    " r.created_at, r.started_at, r.finished_at, r.updated_at"
)


def _run(row: dict[str, Any], workflows: Registry | None, steps: tuple[StepDetail, ...] = ()) -> RunDetail:
    created, updated = _dt(row["created_at"]), _dt(row["updated_at"])
    assert created is not None and updated is not None
    return RunDetail(
        id=row["id"],
        workflow=row["workflow"],
        status=RunStatus(row["status"]),
        error=row["error"],
        inputs=_inputs(workflows, row["workflow"], _json(row["inputs"])),
        actor=row["actor"],
        owner=row["owner"],
        heartbeat_at=_dt(row["heartbeat_at"]),
        recoveries=row["recoveries"],
        created_at=created,
        started_at=_dt(row["started_at"]),
        finished_at=_dt(row["finished_at"]),
        updated_at=updated,
        steps=steps,
    )


def _run_json(row: dict[str, Any], workflows: Registry | None) -> RunJson:
    return run_json(_run(row, workflows))


def step_detail(row: dict[str, Any]) -> StepDetail:
    """A step with what its current attempt shows, by the step's status."""
    status = StepStatus(row["status"])
    has_attempt = row["attempt_status"] is not None and status != StepStatus.PENDING
    outputs = _json(row["outputs"]) if has_attempt and row["outputs"] is not None else None
    produced = status in PRODUCED and outputs is not None
    failed = has_attempt and status in (StepStatus.FAILED, StepStatus.CANCELLED, StepStatus.RETRYING)
    logs = tuple(_json(row["logs"])) if has_attempt and row["logs"] is not None else ()
    return StepDetail(
        key=row["key"],
        label=row["label"],
        kind=row["kind"],
        needs=tuple(_json(row["needs"])),
        status=status,
        attempt=row["attempt"],
        alternatives=tuple(outputs) if produced and outputs is not None else (),
        selected_index=row["selected_index"] if produced else None,
        partial_output=row["partial_output"] if has_attempt and not produced else None,
        error=row["error"] if failed else None,
        error_detail=row["error_detail"]
        if has_attempt and status in (StepStatus.FAILED, StepStatus.RETRYING)
        else None,
        stale=bool(row["stale"]),
        stale_reason=row["stale_reason"],
        started_at=_dt(row["started_at"]) if has_attempt else None,
        completed_at=_dt(row["finished_at"]) if has_attempt and status in ENDED else None,
        progress=row["progress"] if has_attempt else None,
        progress_message=row["progress_message"] if has_attempt else None,
        logs=logs,
        log_times=line_times(_json(row["log_times"]) if row["log_times"] is not None else None, len(logs)),
        llm=llm_json(_json(row["llm"])) if has_attempt and row["llm"] is not None else None,
        retries=row["retries"],
        retries_used=row["retries_used"],
        retry_at=_dt(row["retry_at"]) if status == StepStatus.RETRYING else None,
    )


def llm_fields(llm: LlmJson | None) -> LlmFieldsJson:
    """What an attempt's LLM record shows on its step: usage against the limit and truncation."""
    if llm is None:
        return {
            "usage": None,
            "max_tokens": None,
            "finish_reason": None,
            "truncated": False,
            "provider": None,
            "model": None,
            "llm": None,
        }
    return {
        "usage": llm["usage"],
        "max_tokens": llm["max_tokens"],
        "finish_reason": llm["finish_reason"],
        "truncated": llm["truncated"],
        "provider": llm["provider"],
        "model": llm["model"],
        "llm": llm,
    }


_STEP_SQL = (
    "SELECT s.run_id, s.key, s.label, s.kind, s.needs, s.status, s.attempt, s.stale, s.stale_reason,"
    " s.retries, s.retries_used, s.retry_at, a.status AS attempt_status, a.outputs, a.selected_index,"
    " a.partial_output, a.error, a.error_detail,"
    " a.started_at, a.finished_at, a.progress, a.progress_message, a.logs, a.log_times, a.llm"
    " FROM steps s LEFT JOIN attempts a ON a.step_id = s.id AND a.number = s.attempt"
)


_summary = summary


async def run_detail(run_id: int, workflows: Registry | None = None) -> RunDetail:
    """The run with its steps in declared order (and its inputs, as `workflows` declares them; in stored
    order without it); NotFound if there is no such run."""
    rows = await fetch(f"SELECT {_RUN_COLUMNS} FROM runs r WHERE r.id = ?", (run_id,))
    if not rows:
        raise NotFound(f"run {run_id} does not exist")
    steps = await fetch(_STEP_SQL + " WHERE s.run_id = ? ORDER BY s.position", (run_id,))
    costs = await step_costs(run_id)
    details = tuple(dataclasses.replace(d, cost=costs.get(d.key)) for d in map(step_detail, steps))
    return _run(rows[0], workflows, details)


async def step_costs(run_id: int) -> dict[str, CostJson]:
    """LLM cost per step of a run, over all attempts (retries cost too), from the usage rows."""
    rows = await fetch(
        "SELECT step_key, SUM(cost) AS usd, MAX(CASE WHEN estimated THEN 1 ELSE 0 END) AS estimated"
        " FROM llm_usage WHERE run_id = ?"
        " GROUP BY step_key",
        (run_id,),
    )
    return {r["step_key"]: {"usd": r["usd"], "estimated": bool(r["estimated"])} for r in rows}


ERROR_SUMMARY_CHARS = 500
_SUMMARY_SQL = (
    "SELECT s.run_id, s.key, s.label, s.kind, s.needs, s.status, s.attempt, s.stale, a.status AS attempt_status,"
    " a.started_at, a.finished_at, substr(a.error, 1, ?) AS error, a.llm, a.selected_index"
    " FROM steps s LEFT JOIN attempts a ON a.step_id = s.id AND a.number = s.attempt"
)


class StepSummaryJson(StepHeadJson):
    """A step in the runs list (`step_summary_json`)."""

    stale: bool
    truncated: bool
    error: str | None  # the first ERROR_SUMMARY_CHARS characters
    started_at: str | None
    completed_at: str | None
    duration_s: float | None


class RunSummaryJson(RunJson, SummaryJson):
    """A run in the runs list (`list_runs`)."""

    steps: NotRequired[list[StepSummaryJson]]  # with `include_steps`


def step_summary_json(row: dict[str, Any]) -> StepSummaryJson:
    """A step's state without what it produced: bounded in size whatever it output or logged."""
    status = StepStatus(row["status"])
    has_attempt = row["attempt_status"] is not None and status != StepStatus.PENDING
    ended = status in STEP_ATTEMPT_ENDED
    started_at = row["started_at"] if has_attempt else None
    completed_at = row["finished_at"] if has_attempt and ended else None
    produced = status in (StepStatus.WAITING, StepStatus.COMPLETED)
    llm = llm_json(_json(row["llm"])) if has_attempt and produced and row["llm"] is not None else None
    return {
        "key": row["key"],
        "label": row["label"],
        "kind": row["kind"],
        "needs": _json(row["needs"]),
        "status": status,
        "attempt": row["attempt"],
        "stale": bool(row["stale"]),
        "truncated": cut_off(llm, row["selected_index"]),
        "error": row["error"]
        if has_attempt and status in (StepStatus.FAILED, StepStatus.CANCELLED, StepStatus.RETRYING)
        else None,
        "started_at": _iso(started_at),
        "completed_at": _iso(completed_at),
        "duration_s": _duration_s(started_at, completed_at),
    }


async def list_runs(
    *,
    status: str | None = None,
    workflow: str | None = None,
    limit: int = 50,
    offset: int = 0,
    include_steps: bool = False,
    workflows: Registry | None = None,
) -> list[RunSummaryJson]:
    """Runs, newest first, filtered by status and workflow, as summaries: step states (with
    `include_steps`), never outputs or logs, so a page of runs stays small whatever they produced; inputs
    as in `run_detail`."""
    where, params = [], []
    if status:
        where.append("r.status = ?")
        params.append(RunStatus(status).value)
    if workflow:
        where.append("r.workflow = ?")
        params.append(workflow)
    clause = f" WHERE {' AND '.join(where)}" if where else ""
    limit = max(1, min(limit, MAX_PAGE))
    rows = await fetch(
        f"SELECT {_RUN_COLUMNS} FROM runs r{clause} ORDER BY r.id DESC LIMIT ? OFFSET ?",
        (*params, limit, max(0, offset)),
    )
    headers = [_run_json(r, workflows) for r in rows]
    if not headers:
        return []
    marks = ", ".join("?" for _ in headers)
    step_rows = await fetch(
        _SUMMARY_SQL + f" WHERE s.run_id IN ({marks}) ORDER BY s.run_id, s.position",
        [ERROR_SUMMARY_CHARS, *(r["id"] for r in headers)],
    )
    by_run: dict[int, list[StepSummaryJson]] = {}
    for row in step_rows:
        by_run.setdefault(row["run_id"], []).append(step_summary_json(row))
    runs: list[RunSummaryJson] = []
    for header in headers:
        steps = by_run.get(header["id"], [])
        # With the steps, then without: mypy refuses a literal that unpacks TypedDicts but omits an optional key.
        run: RunSummaryJson = {**header, **_summary(steps), "steps": steps}
        if not include_steps:
            del run["steps"]
        runs.append(run)
    return runs


class ConsumedJson(TypedDict):
    """What an attempt read of one of its needs: that step's attempt and chosen alternative."""

    attempt: int
    index: int | None


class AttemptShownJson(TypedDict):
    """What an attempt shows besides its LLM record (`AttemptJson`, which adds that record after it: the
    order the API lists an attempt's fields in)."""

    id: int
    step: str
    number: int
    current: bool  # the step's current attempt (the others are history)
    status: AttemptStatus
    outputs: list[Any] | None
    selected_index: int | None
    partial_output: str | None
    error: str | None
    error_detail: str | None
    consumed: dict[str, ConsumedJson]  # by upstream step
    logs: list[str]
    log_times: list[str | None]
    progress: float | None
    progress_message: str | None
    owner: str | None
    started_at: str | None
    finished_at: str | None
    duration_s: float | None


class AttemptJson(AttemptShownJson, LlmFieldsJson):
    """One attempt of a step (`list_attempts`), with what its LLM record shows."""


async def list_attempts(run_id: int) -> list[AttemptJson]:
    """Every attempt of the run's steps (history included), by step order then attempt number."""
    if not await fetch("SELECT id FROM runs WHERE id = ?", (run_id,)):
        raise NotFound(f"run {run_id} does not exist")
    rows = await fetch(
        "SELECT a.*, s.key, s.attempt AS current_number FROM attempts a JOIN steps s ON s.id = a.step_id"
        " WHERE a.run_id = ? ORDER BY s.position, a.number",
        (run_id,),
    )
    return [_attempt_json(r) for r in rows]


def _attempt_json(r: dict[str, Any]) -> AttemptJson:
    logs = _json(r["logs"]) or []
    times = _json(r["log_times"]) if r["log_times"] is not None else None
    return {
        "id": r["id"],
        "step": r["key"],
        "number": r["number"],
        "current": r["number"] == r["current_number"],
        "status": AttemptStatus(r["status"]),
        "outputs": _json(r["outputs"]) if r["outputs"] is not None else None,
        "selected_index": r["selected_index"],
        "partial_output": r["partial_output"],
        "error": r["error"],
        "error_detail": r["error_detail"],
        "consumed": _json(r["consumed"]),
        "logs": logs,
        "log_times": [log_time_iso(at) for at in line_times(times, len(logs))],
        "progress": r["progress"],
        "progress_message": r["progress_message"],
        "owner": r["owner"],
        "started_at": _iso(r["started_at"]),
        "finished_at": _iso(r["finished_at"]),
        "duration_s": _duration_s(r["started_at"], r["finished_at"]),
        **llm_fields(llm_json(_json(r["llm"])) if r["llm"] is not None else None),
    }


class EventJson(TypedDict):
    """A persisted event as the API serves it (`event_json`)."""

    id: int
    run_id: int
    step: str | None
    attempt: int | None
    kind: ChangeKind
    from_status: str | None  # a RunStatus or StepStatus value, by `kind`
    to_status: str | None
    actor: str | None
    message: str | None
    at: str | None


def event_json(row: dict[str, Any]) -> EventJson:
    return {
        "id": row["id"],
        "run_id": row["run_id"],
        "step": row["step_key"],
        "attempt": row["attempt"],
        "kind": ChangeKind(row["kind"]),
        "from_status": row["from_status"],
        "to_status": row["to_status"],
        "actor": row["actor"],
        "message": row["message"],
        "at": _iso(row["created_at"]),
    }


async def events_after(run_id: int, after_id: int = 0, limit: int = 1000) -> list[EventJson]:
    """The run's events with id greater than `after_id`, oldest first."""
    rows = await fetch(
        "SELECT id, run_id, step_key, attempt, kind, from_status, to_status, actor, message, created_at"
        " FROM events WHERE run_id = ? AND id > ? ORDER BY id LIMIT ?",
        (run_id, after_id, limit),
    )
    return [event_json(r) for r in rows]


# --- events in commit order (PostgreSQL) ---------------------------------------------------------------
# Serial ids are in commit order where one transaction writes at a time (SQLite), not on PostgreSQL: a
# transaction can take id 7, commit after the one that took id 8, and a stream that resumed after 8 would
# never send 7. There each row records its transaction (`events.tx`), and rows are sent in (tx, id) order,
# only below the oldest transaction still in flight: no row can appear before them any more.


@dataclasses.dataclass(frozen=True, slots=True)
class EventCursor:
    """Where a stream is in a run's events in commit order: after (tx, id), and past `min_id` (an event
    id the run does not have, as a client may send)."""

    tx: int = 0
    id: int = 0
    min_id: int = 0


def ids_in_commit_order() -> bool:
    """Whether event ids are in commit order (one writer at a time: SQLite)."""
    return current().kind == "sqlite"


async def event_cursor(run_id: int, after_id: int) -> EventCursor:
    """The commit-ordered position just after event `after_id` of the run (0: the start)."""
    if after_id <= 0:
        return EventCursor()
    rows = await fetch("SELECT tx FROM events WHERE id = ? AND run_id = ?", (after_id, run_id))
    if not rows:
        return EventCursor(min_id=after_id)
    return EventCursor(int(rows[0]["tx"]), after_id)


async def events_committed_after(
    run_id: int, cursor: EventCursor, limit: int = 10_000
) -> tuple[list[tuple[EventCursor, EventJson]], bool]:
    """The run's events after `cursor` in commit order that no transaction in flight can precede, each with
    its cursor; and whether later ones are committed but held back behind a transaction still in flight."""
    rows = await fetch(
        "SELECT id, run_id, step_key, attempt, kind, from_status, to_status, actor, message, created_at, tx,"
        " tx < pg_snapshot_xmin(pg_current_snapshot()) AS final FROM events"
        " WHERE run_id = ? AND (tx, id) > (?, ?) AND id > ? ORDER BY tx, id LIMIT ?",
        (run_id, cursor.tx, cursor.id, cursor.min_id, limit),
    )
    out: list[tuple[EventCursor, EventJson]] = []
    for row in rows:
        if not row["final"]:
            return out, True
        out.append((EventCursor(int(row["tx"]), row["id"]), event_json(row)))
    return out, False


async def run_exists(run_id: int) -> bool:
    return bool(await fetch("SELECT id FROM runs WHERE id = ?", (run_id,)))


_ROW_SQL = (
    "SELECT s.key, s.label, s.kind, s.status, s.attempt, s.stale, a.status AS attempt_status, a.started_at,"
    " a.finished_at, a.llm, a.selected_index"
    " FROM steps s LEFT JOIN attempts a ON a.step_id = s.id AND a.number = s.attempt"
)


async def step_rows(run_id: int, keys: Sequence[str] | None = None) -> list[StepRow]:
    """What a run page shows of each step without opening it (all steps in order, or just `keys`)."""
    if keys is None:
        rows = await fetch(_ROW_SQL + " WHERE s.run_id = ? ORDER BY s.position", (run_id,))
    else:
        marks = ", ".join("?" for _ in keys)
        rows = await fetch(_ROW_SQL + f" WHERE s.run_id = ? AND s.key IN ({marks})", (run_id, *keys))
    return [_step_row(r) for r in rows]


def _step_row(r: dict[str, Any]) -> StepRow:
    status = StepStatus(r["status"])
    has_attempt = r["attempt_status"] is not None and status != StepStatus.PENDING
    ended = status in STEP_ATTEMPT_ENDED
    truncated = False
    if has_attempt and r["llm"] is not None and status in (StepStatus.WAITING, StepStatus.COMPLETED):
        truncated = cut_off(llm_json(_json(r["llm"])), r["selected_index"])
    started = _dt(r["started_at"]) if has_attempt else None
    finished = _dt(r["finished_at"]) if has_attempt and ended else None
    return StepRow(
        key=r["key"],
        label=r["label"],
        kind=r["kind"],
        status=status,
        attempt=r["attempt"],
        stale=bool(r["stale"]),
        truncated=truncated,
        started_at=started.timestamp() if started else None,
        finished_at=finished.timestamp() if finished else None,
    )


async def step_details(run_id: int, keys: Sequence[str]) -> dict[str, StepDetail]:
    """The full detail (outputs, alternatives, error, logs, LLM record) of some steps of a run, by key."""
    if not keys:
        return {}
    marks = ", ".join("?" for _ in keys)
    rows = await fetch(_STEP_SQL + f" WHERE s.run_id = ? AND s.key IN ({marks})", (run_id, *keys))
    return {r["key"]: step_detail(r) for r in rows}


async def run_header(run_id: int, workflows: Registry | None = None) -> RunJson:
    """The run without its steps (inputs as in `run_detail`); NotFound if there is no such run."""
    rows = await fetch(f"SELECT {_RUN_COLUMNS} FROM runs r WHERE r.id = ?", (run_id,))
    if not rows:
        raise NotFound(f"run {run_id} does not exist")
    return _run_json(rows[0], workflows)


async def run_cost(run_id: int) -> CostJson | None:
    """What the run's LLM calls cost over every attempt; None without LLM usage (usd None when no model
    it used has a price)."""
    rows = await fetch(
        "SELECT COUNT(*) AS n, SUM(cost) AS usd, COUNT(cost) AS priced,"
        " SUM(CASE WHEN estimated THEN 1 ELSE 0 END) AS estimated FROM llm_usage WHERE run_id = ?",
        (run_id,),
    )
    row = rows[0] if rows else None
    if not row or not row["n"]:
        return None
    return {"usd": float(row["usd"]) if row["priced"] else None, "estimated": bool(row["estimated"])}


async def step_needs(run_id: int) -> dict[str, list[str]]:
    """Each step's `needs` (the run's graph as it was defined when it started)."""
    rows = await fetch("SELECT key, needs FROM steps WHERE run_id = ? ORDER BY position", (run_id,))
    return {r["key"]: list(_json(r["needs"]) or []) for r in rows}
