"""LLM cost as people read it: on a step card, on the run page and on Monitoring. An estimated cost
(token counts the server did not report) is marked with `~` and the word "estimated"."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from engine.llm.budget import Hold
from engine.llm.prices import usd
from engine.monitoring import Cost, TokenReport
from engine.readmodel import CostJson
from ui.components.columns import column

COST_COLUMNS: list[dict[str, Any]] = [
    column("kind", "Per", sortable=True),
    column("name", "Day or workflow", sortable=True),
    column("outputs", "Outputs", "right", sortable=True),
    column("cost", "Cost", "right"),
]


def cost_text(cost: CostJson | None) -> str | None:
    """`cost $0.0123`, `cost ~$0.0123 (estimated)`, `cost: no price for this model`; None without LLM usage."""
    if cost is None:
        return None
    amount = cost["usd"]
    if amount is None:
        return "cost: no price for this model"
    estimated = bool(cost["estimated"])
    return f"cost {usd(amount, estimated)}" + (" (estimated)" if estimated else "")


def _cell(c: Cost) -> str:
    return usd(c.usd, c.estimated) + (" (estimated)" if c.estimated and c.usd is not None else "")


def cost_rows(report: TokenReport) -> list[dict[str, Any]]:
    """One row per workflow, then one per day with outputs, for the Monitoring table."""
    workflows = [
        {"id": f"w:{c.key}", "kind": "workflow", "name": c.key, "outputs": c.rows, "cost": _cell(c)}
        for c in report.cost_by_workflow
    ]
    days = [
        {"id": f"d:{c.key}", "kind": "day", "name": c.key, "outputs": c.rows, "cost": _cell(c)}
        for c in reversed(report.cost_by_day)
        if c.rows
    ]
    return workflows + days


def cost_summary(report: TokenReport) -> str:
    if report.cost is None or report.cost.usd is None:
        return "Cost: no model used in this window has a price (set STEPDECK_LLM_PRICES)."
    text = f"Cost over the last {report.days} days: {_cell(report.cost)}."
    if report.estimated_rows:
        text += f" {report.estimated_rows:,} outputs have estimated token counts (the server reported none)."
    return text


def llm_note(llm: Mapping[str, Any] | None) -> str | None:
    """What an LLM attempt's usage cost, and whether its token counts were estimated; for the step card."""
    if not llm:
        return None
    parts = []
    usage = llm.get("usage") or {}
    if usage.get("estimated"):
        parts.append("token counts estimated (the server reported none)")
    if llm.get("context_length"):
        parts.append(f"context window {llm['context_length']:,} tokens")
    if "cost" in llm:
        text = cost_text({"usd": llm["cost"], "estimated": bool(usage.get("estimated"))})
        parts.append(f"{text} for this attempt" if llm["cost"] is not None else str(text))
    return " · ".join(parts) or None


def alternative_note(alt: Mapping[str, Any]) -> str:
    """The cost of one alternative, `~` when estimated; empty without a price."""
    if alt.get("cost") is None:
        return ""
    return f" · {usd(alt['cost'], bool(alt.get('estimated')))}"


def budget_hold_text(llm: Mapping[str, Any] | None) -> str | None:
    """Why a waiting LLM step was held by the budget guard, and what a person can do; None if it was not."""
    hold = (llm or {}).get("budget_hold")
    if not isinstance(hold, Mapping):
        return None
    reason = Hold(str(hold.get("scope")), float(hold.get("spent") or 0), float(hold.get("limit") or 0)).reason
    return f"{reason}. The step has not run: Resume from here runs it past the budget."
