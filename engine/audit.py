"""`main.py check`: find states that the transitions should make impossible.

Each check is one query returning the offending rows; an empty result everywhere means the
database tells a consistent story. The checks are read-only.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.db import current
from engine.store import fetch
from models.status import AttemptStatus, RunStatus, StepStatus

R, S, A = RunStatus, StepStatus, AttemptStatus

# (what is wrong, query returning run_id, step key (or NULL) and a detail column)
CHECKS: list[tuple[str, str]] = [
    (
        "completed step without a completed current attempt with a selection",
        f"SELECT s.run_id, s.key, COALESCE(a.status, 'no attempt') AS detail FROM steps s"
        f" LEFT JOIN attempts a ON a.step_id = s.id AND a.number = s.attempt"
        f" WHERE s.status = '{S.COMPLETED}' AND (a.id IS NULL OR a.status != '{A.COMPLETED}'"
        f" OR a.selected_index IS NULL)",
    ),
    (
        "waiting step without a completed current attempt awaiting a choice",
        f"SELECT s.run_id, s.key, COALESCE(a.status, 'no attempt') AS detail FROM steps s"
        f" LEFT JOIN attempts a ON a.step_id = s.id AND a.number = s.attempt"
        f" WHERE s.status = '{S.WAITING}' AND (a.id IS NULL OR a.status != '{A.COMPLETED}'"
        f" OR a.selected_index IS NOT NULL)",
    ),
    (
        "running step in a run that is not running",
        f"SELECT s.run_id, s.key, r.status AS detail FROM steps s JOIN runs r ON r.id = s.run_id"
        f" WHERE s.status = '{S.RUNNING}' AND r.status != '{R.RUNNING}'",
    ),
    (
        "running step whose current attempt is not running",
        f"SELECT s.run_id, s.key, COALESCE(a.status, 'no attempt') AS detail FROM steps s"
        f" LEFT JOIN attempts a ON a.step_id = s.id AND a.number = s.attempt"
        f" WHERE s.status = '{S.RUNNING}' AND (a.id IS NULL OR a.status != '{A.RUNNING}')",
    ),
    (
        "running attempt that is not its step's running current attempt",
        f"SELECT a.run_id, s.key, 'attempt ' || a.number || ' of step at attempt ' || s.attempt || ', step '"
        f" || s.status AS detail FROM attempts a JOIN steps s ON s.id = a.step_id"
        f" WHERE a.status = '{A.RUNNING}' AND (s.status != '{S.RUNNING}' OR s.attempt != a.number)",
    ),
    (
        "completed run with unfinished steps",
        f"SELECT s.run_id, s.key, s.status AS detail FROM steps s JOIN runs r ON r.id = s.run_id"
        f" WHERE r.status = '{R.COMPLETED}' AND s.status != '{S.COMPLETED}'",
    ),
    (
        "waiting run without a step waiting for a choice",
        f"SELECT r.id AS run_id, NULL AS key, r.status AS detail FROM runs r WHERE r.status = '{R.WAITING}'"
        f" AND NOT EXISTS (SELECT 1 FROM steps s WHERE s.run_id = r.id AND s.status = '{S.WAITING}')",
    ),
    (
        "running run without an owner",
        f"SELECT r.id AS run_id, NULL AS key, r.status AS detail FROM runs r"
        f" WHERE r.status = '{R.RUNNING}' AND r.owner IS NULL",
    ),
    (
        "selection index out of range",
        "SELECT a.run_id, s.key, 'index ' || a.selected_index AS detail FROM attempts a"
        " JOIN steps s ON s.id = a.step_id WHERE a.selected_index IS NOT NULL AND a.outputs IS NOT NULL"
        " AND (a.selected_index < 0 OR a.selected_index >= {json_array_length}(a.outputs))",
    ),
    (
        "step pointing at an attempt that does not exist",
        "SELECT s.run_id, s.key, 'attempt ' || s.attempt AS detail FROM steps s WHERE s.attempt > 0"
        " AND NOT EXISTS (SELECT 1 FROM attempts a WHERE a.step_id = s.id AND a.number = s.attempt)",
    ),
    (
        "stale flag on a step that is neither completed nor waiting",
        f"SELECT s.run_id, s.key, s.status AS detail FROM steps s WHERE s.stale"
        f" AND s.status NOT IN ('{S.COMPLETED}', '{S.WAITING}')",
    ),
    (
        "retrying step without a due time, or with one while not retrying",
        f"SELECT s.run_id, s.key, s.status AS detail FROM steps s"
        f" WHERE (s.status = '{S.RETRYING}') != (s.retry_at IS NOT NULL)",
    ),
    (
        "retrying step in a run that is neither running nor queued",
        f"SELECT s.run_id, s.key, r.status AS detail FROM steps s JOIN runs r ON r.id = s.run_id"
        f" WHERE s.status = '{S.RETRYING}' AND r.status NOT IN ('{R.RUNNING}', '{R.QUEUED}')",
    ),
    (
        "retrying step whose current attempt did not fail",
        f"SELECT s.run_id, s.key, COALESCE(a.status, 'no attempt') AS detail FROM steps s"
        f" LEFT JOIN attempts a ON a.step_id = s.id AND a.number = s.attempt"
        f" WHERE s.status = '{S.RETRYING}' AND (a.id IS NULL OR a.status != '{A.FAILED}')",
    ),
    (
        "unfinished run with a finish time",
        f"SELECT r.id AS run_id, NULL AS key, r.status AS detail FROM runs r"
        f" WHERE r.status IN ('{R.QUEUED}', '{R.RUNNING}') AND r.finished_at IS NOT NULL",
    ),
]


@dataclass(frozen=True, slots=True)
class Finding:
    problem: str
    run_id: int
    step: str | None
    detail: str

    def __str__(self) -> str:
        where = f"run {self.run_id}" + (f" step {self.step!r}" if self.step else "")
        return f"{where}: {self.problem} ({self.detail})"


async def audit() -> tuple[list[Finding], dict[str, int]]:
    """Every impossible state found, and how many runs/steps/attempts were looked at."""
    findings = []
    json_array_length = current().dialect.json_array_length
    for problem, sql in CHECKS:
        for row in await fetch(sql.replace("{json_array_length}", json_array_length)):
            findings.append(Finding(problem, row["run_id"], row["key"], str(row["detail"])))
    counts = {}
    for table in ("runs", "steps", "attempts", "events"):
        counts[table] = (await fetch(f"SELECT count(*) AS n FROM {table}"))[0]["n"]
    return findings, counts
