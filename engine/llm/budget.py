"""The budget guard: an LLM step that would start past the run's `max_cost` or the day's budget
(`STEPDECK_LLM_DAILY_BUDGET`, per UTC day) waits for a person, with the reason, and never runs silently.

Spending is what the usage rows of finished attempts cost (steps still running are not counted yet).
A person lets the step run past the budget by resuming it ("Resume from here"): the next attempt of
that step starts if nothing was spent since it was held; each further step is held again.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypedDict

from engine.context import WaitForPerson
from engine.db import now as db_now
from engine.store import fetch

RUN, DAY = "run", "day"
_EPSILON_USD = 1e-9


def dollars(amount: float) -> str:
    return f"${amount:,.2f}" if amount >= 1 else f"${amount:,.4f}"


class HoldJson(TypedDict):
    """A `Hold` as kept in the attempt's LLM record (`budget_hold`)."""

    scope: str
    spent: float
    limit: float


@dataclass(frozen=True, slots=True)
class Hold:
    """Why a step was held: which budget, what was spent and the limit (USD)."""

    scope: str  # RUN (the workflow's max_cost) or DAY (STEPDECK_LLM_DAILY_BUDGET)
    spent: float
    limit: float

    @property
    def reason(self) -> str:
        if self.scope == RUN:
            return f"budget reached: {dollars(self.spent)} of {dollars(self.limit)} (max_cost of this run)"
        return f"daily budget reached: {dollars(self.spent)} of {dollars(self.limit)} (STEPDECK_LLM_DAILY_BUDGET)"

    def to_json(self) -> HoldJson:
        return {"scope": self.scope, "spent": self.spent, "limit": self.limit}


class BudgetReached(WaitForPerson):
    def __init__(self, hold: Hold) -> None:
        super().__init__(f"{hold.reason}: the step waits for a person (Resume from here runs it past the budget)")
        self.hold = hold


def hold_for(run_spent: float, day_spent: float, max_cost: float | None, daily_budget: float) -> Hold | None:
    """The budget a step would start past, the run's first; None when both leave room. Pure."""
    if max_cost and run_spent >= max_cost:
        return Hold(RUN, run_spent, max_cost)
    if daily_budget and day_spent >= daily_budget:
        return Hold(DAY, day_spent, daily_budget)
    return None


def approved(hold: Hold, previous: dict[str, Any] | None) -> bool:
    """A person resumed a step held for this budget, and nothing was spent since: it may run. Pure."""
    return (
        previous is not None
        and previous.get("scope") == hold.scope
        and isinstance(previous.get("spent"), int | float)
        and hold.spent <= previous["spent"] + _EPSILON_USD
    )


async def spending(run_id: int, now: datetime | None = None) -> tuple[float, float]:
    """USD spent by the run, and by every run today (UTC), from the usage rows."""
    now = now or db_now()
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    [row] = await fetch(
        "SELECT COALESCE(SUM(CASE WHEN run_id = ? THEN cost END), 0) AS run_usd,"
        " COALESCE(SUM(CASE WHEN created_at >= ? THEN cost END), 0) AS day_usd"
        " FROM llm_usage WHERE run_id = ? OR created_at >= ?",
        (run_id, midnight, run_id, midnight),
    )
    return float(row["run_usd"]), float(row["day_usd"])


async def _previous_hold(run_id: int, step_key: str, attempt: int) -> dict[str, Any] | None:
    rows = await fetch(
        "SELECT a.llm FROM attempts a JOIN steps s ON s.id = a.step_id"
        " WHERE s.run_id = ? AND s.key = ? AND a.number = ?",
        (run_id, step_key, attempt - 1),
    )
    raw = rows[0]["llm"] if rows else None
    llm = json.loads(raw) if isinstance(raw, str | bytes) else raw
    hold = llm.get("budget_hold") if isinstance(llm, dict) else None
    return hold if isinstance(hold, dict) else None


async def check_budget(
    run_id: int, step_key: str, attempt: int, max_cost: float | None, daily_budget: float
) -> tuple[Hold | None, Hold | None]:
    """(the hold for a step about to start, or None; the hold a person approved by resuming, or None)."""
    if not max_cost and not daily_budget:
        return None, None
    run_spent, day_spent = await spending(run_id)
    hold = hold_for(run_spent, day_spent, max_cost, daily_budget)
    if hold is None:
        return None, None
    if approved(hold, await _previous_hold(run_id, step_key, attempt)):
        return None, hold
    return hold, None
