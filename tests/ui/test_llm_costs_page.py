"""LLM cost and estimated token counts as people see them: on the step card of the run page and on
Monitoring (per workflow and per day). The app is main.py on a fresh SQLite file, its model endpoint the
loopback server (tests/llm_server.py) behaving like llama-cpp-python (no usage in streams), with a
price file for its model."""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from nicegui.testing import User

from tests.llm_server import LLMServer
from tests.ui.conftest import eventually, table_rows
from tests.ui.test_run_page import confirm, show, start_run, text_of, wait_run

WORKFLOW = """
    name: priced
    steps:
      - key: write
        label: Write
        kind: llm
        prompt: Write about tide pools.
        alternatives: 2
        select: auto
"""


CAPPED = """
    name: capped
    max_cost: 0.0001
    steps:
      - key: first
        kind: llm
        prompt: Write about tide pools.
      - key: second
        kind: llm
        prompt: "Shorten: {{ steps.first.output }}"
"""


@pytest.fixture(autouse=True)
def priced_endpoint(workflows_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[LLMServer]:
    (workflows_dir / "priced.yaml").write_text(textwrap.dedent(WORKFLOW))
    (workflows_dir / "capped.yaml").write_text(textwrap.dedent(CAPPED))
    prices = tmp_path / "prices.toml"
    prices.write_text('[models."stepdeck-test"]\nprompt = 2.0\ncompletion = 10.0\n')
    with LLMServer(reply_tokens=20) as server:
        server.stream_usage = "none"  # as llama-cpp-python: the counts must be estimated
        monkeypatch.setenv("STEPDECK_LLM_BASE_URL", server.base_url)
        monkeypatch.setenv("STEPDECK_LLM_API_KEY", "sk-test")
        monkeypatch.setenv("STEPDECK_LLM_MODEL", "stepdeck-test")
        monkeypatch.setenv("STEPDECK_LLM_PRICES", str(prices))
        yield server


async def test_the_step_card_shows_what_the_attempt_cost_marked_estimated(user: User) -> None:
    await user.open("/")
    run_id = await start_run(user, "priced")
    run = await wait_run(user, run_id, "completed")
    step = run["steps"][0]
    assert step["usage"]["estimated"] is True
    assert step["cost"]["estimated"] is True
    assert step["cost"]["usd"] == pytest.approx(step["llm"]["cost"]) and step["cost"]["usd"] > 0
    assert run["cost"] == step["cost"]
    await user.open(f"/runs/{run_id}")
    await show(user, "write")
    line = await eventually(lambda: text_of(user, "llm-cost-write") or None, "the cost line on the step card")
    assert "token counts estimated" in line
    assert f"cost ~${step['llm']['cost']:,.4f} (estimated) for this attempt" in line
    alt = step["llm"]["alternatives"][0]
    assert text_of(user, "alt-usage-write-0").endswith(f" · ~${alt['cost']:,.4f}")
    # The run's cost over every attempt, in its header.
    header = await eventually(lambda: text_of(user, "run-cost") or None, "the run's cost in its header")
    assert header == f"cost ~${run['cost']['usd']:,.4f} (estimated)", header


async def test_monitoring_shows_the_cost_per_workflow_and_per_day_marked_estimated(user: User) -> None:
    await user.open("/")
    run_id = await start_run(user, "priced")
    run = await wait_run(user, run_id, "completed")
    await user.open("/monitoring")

    def rows() -> dict[str, dict[str, str]] | None:
        found = {r["id"]: r for r in table_rows(user, "cost-table")}
        return found or None

    table = await eventually(rows, "the cost table")
    expected = f"~${run['cost']['usd']:,.4f} (estimated)"
    assert table["w:priced"]["cost"] == expected
    assert table[f"d:{datetime.now(UTC).date().isoformat()}"]["cost"] == expected
    assert "(estimated)" in text_of(user, "token-costs")
    assert "Includes estimated counts" in text_of(user, "token-summary")


async def test_a_step_held_by_the_budget_says_why_on_its_card_and_resuming_it_runs_it(
    user: User, priced_endpoint: LLMServer
) -> None:
    await user.open("/")
    run_id = await start_run(user, "capped")
    run = await wait_run(user, run_id, "waiting")
    assert [s["status"] for s in run["steps"]] == ["completed", "waiting"]
    await user.open(f"/runs/{run_id}")
    await show(user, "second")
    reason = await eventually(lambda: text_of(user, "budget-second") or None, "the budget notice on the card")
    assert reason.startswith("budget reached: $")
    assert reason.endswith(
        "of $0.0001 (max_cost of this run). The step has not run: Resume from here runs it past the budget."
    )
    await user.should_not_see(marker="choose-second")  # not a choice between alternatives
    assert len(priced_endpoint.completion_requests) == 1
    user.find(marker="rerun-second").click()
    await confirm(user, "second", "first")  # re-runs the held step, keeps the first
    run = await wait_run(user, run_id, "completed")
    assert len(priced_endpoint.completion_requests) == 2
    assert any("running past it, as a person resumed this step" in line for line in run["steps"][1]["logs"])
