"""Read queries behind the runs list and the monitoring counts: one page of runs at a time.

`engine.queries.list_runs` reads every step row of the runs it returns and has no count or text
search; the runs table needs a total (for pagination), per-run step counts and a search, and must
stay fast with 10,000 runs. So: one COUNT, one LIMIT/OFFSET page, one GROUP BY over that page's
steps. Reads only, portable SQL (SQLite and PostgreSQL) through `engine.store.fetch`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from engine.db import current
from engine.db import now as db_now
from engine.registry import Registry, inputs_in_order
from engine.store import fetch
from models.status import RunStatus, StepStatus

MAX_ROWS_PER_PAGE = 100


@dataclass(frozen=True, slots=True)
class RunFilter:
    """What the runs table shows; empty values mean "any"."""

    status: str | None = None
    workflow: str | None = None
    search: str = ""

    @property
    def active(self) -> bool:
        return bool(self.status or self.workflow or self.search.strip())


@dataclass(frozen=True, slots=True)
class RunRow:
    """One run as the table shows it."""

    id: int
    workflow: str
    status: str
    created_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    completed: int
    total: int
    waiting: int
    actor: str = ""
    inputs: dict[str, Any] | None = None
    stale: int = 0  # steps whose output is older than what it was made from
    cut_off: int = 0  # steps whose output (the chosen one) was cut off at the token limit

    def duration_s(self, now: datetime | None = None) -> float | None:
        """Seconds from start to finish, or to `now` while the run has not finished."""
        if self.started_at is None:
            return None
        end = self.finished_at or (now or db_now())
        return max(0.0, (end - self.started_at).total_seconds())


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _where(f: RunFilter) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    params: list[Any] = []
    if f.status:
        clauses.append("r.status = ?")
        params.append(RunStatus(f.status).value)
    if f.workflow:
        clauses.append("r.workflow = ?")
        params.append(f.workflow)
    text = f.search.strip()
    if text:
        # "#12" names a run; "12" may be a run id or text in the inputs, so it matches either.
        digits = text.removeprefix("#")
        run_id = int(digits) if digits.isdigit() and len(digits) <= 18 else None
        if text.startswith("#") and run_id is not None:
            clauses.append("r.id = ?")
            params.append(run_id)
        else:
            # SQLite's LIKE ignores case (of ASCII letters) on its own and its JSON is text: plain LIKE
            # scans 100k runs three times faster than with LOWER and CAST, which PostgreSQL needs
            # (its LIKE is case-sensitive and inputs are jsonb).
            needle = f"%{_escape_like(text.lower())}%"
            if current().dialect.like_ignores_case:
                match = "r.workflow LIKE ? ESCAPE '\\' OR r.inputs LIKE ? ESCAPE '\\'"
            else:
                match = "LOWER(r.workflow) LIKE ? ESCAPE '\\' OR LOWER(CAST(r.inputs AS TEXT)) LIKE ? ESCAPE '\\'"
            params += [needle, needle]
            if run_id is not None:
                match = f"r.id = ? OR {match}"
                params.insert(len(params) - 2, run_id)
            clauses.append(f"({match})")
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), params


SEARCH_COUNT_CAP = 500  # a text search counts its matches up to this many (it cannot use an index)


async def count_runs(f: RunFilter) -> int:
    """Runs matching the filter; with a text search, at most SEARCH_COUNT_CAP + 1 (read as "more than
    the cap"), so a search never scans 100k rows on every refresh."""
    where, params = _where(f)
    if f.search.strip():
        rows = await fetch(
            f"SELECT COUNT(*) AS n FROM (SELECT 1 FROM runs r{where} LIMIT ?) AS matched",
            [*params, SEARCH_COUNT_CAP + 1],
        )
    else:
        rows = await fetch(f"SELECT COUNT(*) AS n FROM runs r{where}", params)
    return int(rows[0]["n"])


def _dt(value: Any) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value))


async def page_runs(f: RunFilter, *, page: int, rows_per_page: int, workflows: Registry | None = None) -> list[RunRow]:
    """Runs on page `page` (1-based), newest first, with their step counts."""
    per_page = max(1, min(rows_per_page, MAX_ROWS_PER_PAGE))
    where, params = _where(f)
    runs = await fetch(
        "SELECT r.id, r.workflow, r.status, r.created_at, r.started_at, r.finished_at, r.actor, r.inputs"
        f" FROM runs r{where}"
        " ORDER BY r.id DESC LIMIT ? OFFSET ?",
        [*params, per_page, (max(1, page) - 1) * per_page],
    )
    if not runs:
        return []
    marks = ", ".join("?" for _ in runs)
    counts = await fetch(
        "SELECT run_id, COUNT(*) AS total,"
        " SUM(CASE WHEN status = ? THEN 1 ELSE 0 END) AS completed,"
        " SUM(CASE WHEN status = ? THEN 1 ELSE 0 END) AS waiting,"
        " SUM(CASE WHEN stale THEN 1 ELSE 0 END) AS stale"
        f" FROM steps WHERE run_id IN ({marks}) GROUP BY run_id",
        [StepStatus.COMPLETED.value, StepStatus.WAITING.value, *(r["id"] for r in runs)],
    )
    by_run = {c["run_id"]: c for c in counts}
    # Cut off: the current attempt's offered output (the chosen alternative once chosen) hit the limit.
    cut = await fetch(
        "SELECT u.run_id, COUNT(DISTINCT u.step_key) AS n FROM llm_usage u"
        " JOIN attempts a ON a.id = u.attempt_id JOIN steps s ON s.id = a.step_id AND s.attempt = a.number"
        f" WHERE u.run_id IN ({marks}) AND u.truncated AND s.status IN (?, ?)"
        " AND (a.selected_index IS NULL OR a.selected_index = u.alternative)"
        " GROUP BY u.run_id",
        [*(r["id"] for r in runs), StepStatus.COMPLETED.value, StepStatus.WAITING.value],
    )
    cut_by_run = {c["run_id"]: int(c["n"]) for c in cut}
    rows = []
    for r in runs:
        c = by_run.get(r["id"], {})
        rows.append(
            RunRow(
                id=r["id"],
                workflow=r["workflow"],
                status=str(r["status"]),
                created_at=_dt(r["created_at"]),
                started_at=_dt(r["started_at"]),
                finished_at=_dt(r["finished_at"]),
                completed=int(c.get(StepStatus.COMPLETED) or 0),
                total=int(c.get("total") or 0),
                waiting=int(c.get(StepStatus.WAITING) or 0),
                actor=str(r["actor"] or ""),
                inputs=inputs_in_order(workflows, r["workflow"], _inputs(r["inputs"])),
                stale=int(c.get("stale") or 0),
                cut_off=cut_by_run.get(r["id"], 0),
            )
        )
    return rows


def _inputs(value: Any) -> dict[str, Any]:
    if isinstance(value, dict):
        return value
    try:
        parsed = json.loads(value) if isinstance(value, str | bytes) else None
    except ValueError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


async def workflow_names() -> list[str]:
    """Names of workflows that have runs (a definition may have been removed since)."""
    rows = await fetch("SELECT DISTINCT workflow FROM runs ORDER BY workflow")
    return [str(r["workflow"]) for r in rows]


async def status_counts() -> dict[str, int]:
    """Number of runs in each status, every status present (0 when none)."""
    rows = await fetch("SELECT status, COUNT(*) AS n FROM runs GROUP BY status")
    found = {str(r["status"]): int(r["n"]) for r in rows}
    return {s.value: found.get(s.value, 0) for s in RunStatus}
