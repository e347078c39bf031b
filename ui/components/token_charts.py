"""Chart options and table rows of the token usage panel (pure: one report in, plain dicts out)."""

from __future__ import annotations

import math
from typing import Any

from nicegui import ui

from engine.monitoring import MAX_ROWS, StepUsage, TokenReport

MAX_WORKFLOW_LINES = 8  # truncation-rate lines per workflow; beyond, only the overall line


def step_id(step: StepUsage) -> str:
    return f"{step.workflow}/{step.step_key}"


def step_row(step: StepUsage) -> dict[str, Any]:
    return {
        "id": step_id(step),
        "workflow": step.workflow,
        "step": step.step_key,
        "rows": step.rows,
        "limit": step.limit,
        "p95": step.p95_tokens,
        "p95_fraction": round(step.p95_fraction, 4),
        "truncated": step.truncated,
        "truncation_rate": round(step.truncation_rate, 4),
        "suggested": step.suggested_limit,
        "close": step.close_to_limit,
    }


LEGEND = {"top": 26, "type": "scroll", "textStyle": {"color": "#888"}}
GRID_LINES = {"splitLine": {"lineStyle": {"color": "rgba(128, 128, 128, 0.25)"}}}


def _chart(title: str, **options: Any) -> dict[str, Any]:
    # Mid-grey text and faint grid lines read on the light and the dark theme alike (dark mode is per tab).
    for axis in ("xAxis", "yAxis"):
        options[axis] = {**GRID_LINES, **options.get(axis, {})}
    return {
        "title": {"text": title, "textStyle": {"fontSize": 13, "color": "#888"}},
        "tooltip": {"trigger": "axis"},
        "grid": {"left": 56, "right": 24, "top": 64, "bottom": 40},
        **options,
    }


def distribution_options(step: StepUsage | None) -> dict[str, Any]:
    """A histogram of tokens per call, with the step's limit (and its p95) drawn as vertical lines."""
    if step is None:
        return _chart("Tokens per call", series=[])
    upper = max(step.limit, step.max_tokens_seen)
    data = [{"value": [(b.start + b.end) / 2, b.count], "name": f"{b.start} to {b.end}"} for b in step.histogram]
    marks = [
        {"name": "limit", "xAxis": step.limit, "label": {"formatter": f"limit {step.limit}"},
         "lineStyle": {"color": "#c62828", "width": 2}},
    ]  # fmt: skip
    if step.p95_tokens != step.limit:  # at the limit, the p95 line would hide under it
        marks.append({"name": "p95", "xAxis": step.p95_tokens, "label": {"formatter": f"p95 {step.p95_tokens}"},
                      "lineStyle": {"color": "#546e7a", "type": "dashed"}})  # fmt: skip
    return _chart(
        f"{step.workflow} · {step.step_key}: completion tokens of the longest call, per output",
        tooltip={"trigger": "item"},
        xAxis={"type": "value", "name": "tokens", "min": 0, "max": math.ceil(upper * 1.1)},
        yAxis={"type": "value", "name": "outputs", "minInterval": 1},
        series=[
            {"type": "bar", "name": "outputs", "data": data, "barWidth": "90%",
             "markLine": {"symbol": "none", "silent": True, "data": marks}}
        ],
    )  # fmt: skip


def truncation_options(report: TokenReport) -> dict[str, Any]:
    """Share of outputs truncated per UTC day, overall and (for a few workflows) per workflow."""
    lines = {"all workflows": report.usage_by_day}
    if 1 < len(report.usage_by_workflow) <= MAX_WORKFLOW_LINES:
        lines.update(report.usage_by_workflow)
    series = [
        {"type": "line", "name": name, "data": [None if d.rate is None else round(d.rate * 100, 1) for d in days]}
        for name, days in lines.items()
    ]
    return _chart(
        "Outputs truncated per day (%)",
        legend=LEGEND,
        xAxis={"type": "category", "data": [d.day.isoformat() for d in report.usage_by_day]},
        yAxis={"type": "value", "min": 0, "max": 100},
        series=series,
    )


def tokens_day_options(report: TokenReport) -> dict[str, Any]:
    days = report.usage_by_day
    return _chart(
        "Tokens per day (UTC)",
        legend=LEGEND,
        xAxis={"type": "category", "data": [d.day.isoformat() for d in days]},
        yAxis={"type": "value"},
        series=[
            {"type": "bar", "name": "prompt", "stack": "tokens", "data": [d.prompt_tokens for d in days]},
            {"type": "bar", "name": "completion", "stack": "tokens", "data": [d.completion_tokens for d in days]},
        ],
    )


def tokens_run_options(report: TokenReport) -> dict[str, Any]:
    runs = report.tokens_by_run
    return _chart(
        f"Tokens per run (the newest {len(runs)}; click a bar to open the run)",
        legend=LEGEND,
        xAxis={"type": "category", "data": [f"#{r.run_id} {r.workflow}" for r in runs],
               "axisLabel": {"rotate": 30, "width": 90, "overflow": "truncate"}},
        yAxis={"type": "value"},
        grid={"left": 56, "right": 24, "top": 64, "bottom": 72},
        series=[
            {"type": "bar", "name": "prompt", "stack": "tokens", "data": [r.prompt_tokens for r in runs]},
            {"type": "bar", "name": "completion", "stack": "tokens", "data": [r.completion_tokens for r in runs]},
        ],
    )  # fmt: skip


def summary(report: TokenReport) -> str:
    text = (
        f"{report.rows:,} outputs in the last {report.days} days: {report.prompt_tokens:,} prompt and "
        f"{report.completion_tokens:,} completion tokens. Provider: {', '.join(report.providers)}."
    )
    if "simulated" in report.providers:
        text += " Simulated outputs come from the built-in test provider, not from a model."
    if report.estimated_rows:
        text += f" Includes estimated counts ({report.estimated_rows:,} outputs: the server reported no usage)."
    if report.capped:
        text += f" Only the newest {MAX_ROWS:,} outputs of the window are counted."
    return text


def set_options(chart: ui.echart, options: dict[str, Any]) -> None:
    chart.options.clear()
    chart.options.update(options)
    chart.update()
