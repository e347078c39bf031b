"""The monitoring page's token usage: the steps table, the steps near their limit, and the four charts,
drawn from LLM steps that ran on the simulated provider (one step always hits its limit of 50)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from nicegui import ui
from nicegui.testing import User

from engine import operations, queries
from tests.ui.conftest import RETRIES, eventually, loaded, table_rows
from ui.pages import monitoring as monitoring_page

WORKFLOW = "llm-tokens"
LLM_TOKENS = """\
name: llm-tokens
description: Two LLM steps; the simulated model writes 60 to 400 tokens, so the outline is always cut.
inputs:
  topic:
    type: string
steps:
  - key: outline
    label: Outline
    kind: llm
    prompt: "Outline an article about {{ inputs.topic }}"
    max_tokens: 50
    on_truncation: warn
  - key: body
    label: Body
    kind: llm
    prompt: "Write an article about {{ inputs.topic }}"
    max_tokens: 2000
"""


@pytest.fixture(autouse=True)
def llm_env(workflows_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An LLM workflow and a fast simulated provider for the app `user` starts (autouse: set up before it)."""
    (workflows_dir / f"{WORKFLOW}.yaml").write_text(LLM_TOKENS, encoding="utf-8")
    monkeypatch.setenv("STEPDECK_LLM_SIM_TOKENS_PER_S", "5000")


async def run_workflow(topic: str) -> int:
    run_id = await operations.start_run(loaded(WORKFLOW), {"topic": topic}, "test")

    async def completed() -> bool:
        run = (await queries.run_detail(run_id)).to_json()
        assert run["status"] not in ("failed", "cancelled"), run
        return bool(run["status"] == "completed")

    await eventually(completed, f"run {run_id} to complete")
    return run_id


def chart(user: User, marker: str) -> dict[str, Any]:
    (element,) = user.find(marker).elements
    assert isinstance(element, ui.echart)
    return element.options


def steps(user: User) -> dict[str, dict[str, Any]]:
    return {r["step"]: r for r in table_rows(user, "token-table")}


def limit_line(options: dict[str, Any]) -> Any:
    (series,) = options["series"]
    return next(m["xAxis"] for m in series["markLine"]["data"] if m["name"] == "limit")


async def test_token_usage_charts_show_limits_truncation_and_suggestions(
    user: User, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(monitoring_page, "TOKENS_REFRESH_INTERVAL_S", 0.2)  # the live re-read, without waiting 5 s
    first = await run_workflow("cats")
    await run_workflow("dogs")
    await user.open("/monitoring")
    await eventually(lambda: len(steps(user)) == 2, "both LLM steps in the table")
    await user.should_not_see(marker="tokens-note")
    await user.should_see("Provider: simulated")

    rows = steps(user)
    assert {k: rows["outline"][k] for k in ("workflow", "rows", "limit", "truncation_rate", "close")} == {
        "workflow": WORKFLOW,
        "rows": 2,
        "limit": 50,
        "truncation_rate": 1.0,
        "close": True,
    }
    assert rows["outline"]["p95"] == 50
    assert rows["outline"]["suggested"] > 50
    assert {k: rows["body"][k] for k in ("limit", "truncation_rate", "close", "suggested")} == {
        "limit": 2000,
        "truncation_rate": 0.0,
        "close": False,
        "suggested": None,
    }
    assert 60 <= rows["body"]["p95"] <= 400
    (near,) = user.find(f"near-limit-{WORKFLOW}-outline").elements
    assert f"suggested max_tokens: {rows['outline']['suggested']}" in near.text  # type: ignore[attr-defined]
    await user.should_not_see(marker=f"near-limit-{WORKFLOW}-body")

    # The distribution starts on the step near its limit, with the limit drawn where max_tokens is.
    distribution = chart(user, "chart-distribution")
    assert limit_line(distribution) == 50
    assert sum(p["value"][1] for p in distribution["series"][0]["data"]) == 2  # one bar count per output
    (select,) = user.find("token-step").elements
    with user:
        select.value = f"{WORKFLOW}/body"  # type: ignore[attr-defined]
    await eventually(lambda: limit_line(chart(user, "chart-distribution")) == 2000, "the body step's chart")

    truncation = chart(user, "chart-truncation")
    overall = next(s for s in truncation["series"] if s["name"] == "all workflows")
    assert overall["data"][-1] == 50.0  # today: the outlines (2 of 4 outputs) were cut
    per_day = chart(user, "chart-tokens-day")
    completion = next(s for s in per_day["series"] if s["name"] == "completion")
    assert completion["data"][-1] >= 2 * 50 + 2 * 60  # two outlines cut at 50, two bodies of at least 60
    per_run = chart(user, "chart-tokens-run")
    assert per_run["xAxis"]["data"] == [f"#{first} {WORKFLOW}", f"#{first + 1} {WORKFLOW}"]
    assert all(v > 0 for s in per_run["series"] for v in s["data"])

    # A new run shows without reopening the page.
    third = await run_workflow("birds")
    await eventually(lambda: steps(user)["outline"]["rows"] == 3, "the third run's outputs to be counted")
    await eventually(lambda: len(chart(user, "chart-tokens-run")["xAxis"]["data"]) == 3, "the third run's bar")
    assert chart(user, "chart-tokens-run")["xAxis"]["data"][-1] == f"#{third} {WORKFLOW}"


async def test_window_and_refresh_reread_the_report(user: User) -> None:
    await user.open("/monitoring")
    await user.should_see(marker="tokens-note")
    await run_workflow("cats")  # the live re-read waits up to 5 s here: the button does it at once
    user.find("token-refresh").click()
    await eventually(lambda: len(steps(user)) == 2, "the steps after Refresh")
    (window,) = user.find("token-window").elements
    with user:
        window.value = 7  # type: ignore[attr-defined]
    await user.should_see("in the last 7 days", retries=RETRIES)
    assert len(steps(user)) == 2


async def test_no_usage_yet_says_so(user: User) -> None:
    await user.open("/monitoring")
    await user.should_see(marker="tokens-note")
    await user.should_see("Token usage charts appear once LLM steps run.")
    await user.should_see("No LLM step recorded token usage in the last 30 days")
    await user.should_not_see(marker="token-table")
    await user.should_not_see(marker="chart-distribution")
