"""LLM steps on the run page: tokens appear in the step card as the model streams them, a truncated
output gets its own colour, badge and header warning, and every page says when the provider is the
simulated one. The app is main.py on a fresh SQLite file with no model endpoint configured."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from nicegui.testing import User

from tests.ui.conftest import eventually, table_rows
from tests.ui.test_run_page import (
    expand,
    show,
    start_run,
    text_of,
    texts_in,
    the,
    wait_row,
    wait_run,
    wait_shown,
    wait_step,
)
from tests.workflow_yaml import TOO_SHORT_STEP
from ui.theme import STATUS_COLORS

WORKFLOWS = {
    "slow-llm": """
        name: slow-llm
        steps:
          - key: write
            label: Write
            kind: llm
            prompt: Write a long story about tide pools.
            max_tokens: 150
    """,
    "cut-llm": "name: cut-llm\nsteps:\n"
    + TOO_SHORT_STEP
    + """\
  - key: after
    label: After
    kind: llm
    prompt: "Summarise: {{ steps.short.output }}"
""",
}


@pytest.fixture(autouse=True)
def llm_env(workflows_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, text in WORKFLOWS.items():
        (workflows_dir / f"{name}.yaml").write_text(textwrap.dedent(text))
    # Tests that do not watch the text stream do not wait for it (an output is up to 400 words).
    monkeypatch.setenv("STEPDECK_LLM_SIM_TOKENS_PER_S", "2000")


@pytest.fixture
def watchable_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """A simulated model slow enough to watch it stream (named before `user`, which starts the app)."""
    monkeypatch.setenv("STEPDECK_LLM_SIM_TOKENS_PER_S", "40")


async def test_tokens_appear_in_the_step_card_while_the_model_streams(watchable_model: None, user: User) -> None:
    await user.open("/")
    run_id = await start_run(user, "slow-llm")
    await wait_step(user, run_id, "write", "running")
    await user.open(f"/runs/{run_id}")
    await show(user, "write")  # its card open and on screen

    def streamed() -> str:
        return str(getattr(the(user, "stream-write"), "text", ""))

    first = await eventually(lambda: streamed() if len(streamed()) > 10 else None, "streamed text in the card")
    assert first.startswith("Simulated output.")
    later = await eventually(lambda: streamed() if len(streamed()) > len(first) + 20 else None, "more streamed text")
    assert later.startswith(first), "the card shows the text growing, in order"
    assert the(user, "stream-write").visible

    run = await wait_run(user, run_id, "completed")
    output = run["steps"][0]["output"]
    assert output.startswith(later.rstrip())
    await wait_shown(user, "output-write", output.split()[-1])
    await eventually(lambda: text_of(user, "llm-write").startswith("simulated · "), "the usage line")
    assert "simulated · simulated" not in text_of(user, "llm-write"), "a provider named like its model is said once"
    await user.should_not_see(marker="stream-write")  # the live text gives way to the output


async def test_a_truncated_output_has_its_own_colour_badge_and_header_warning(user: User) -> None:
    await user.open("/")
    await user.should_see(marker="llm-simulated")  # the frame says the provider is simulated, on every page
    run_id = await start_run(user, "cut-llm")
    run = await wait_run(user, run_id, "completed")
    short = next(s for s in run["steps"] if s["key"] == "short")
    assert (short["truncated"], short["finish_reason"], short["max_tokens"]) == (True, "length", 5)
    assert short["provider"] == "simulated"
    assert run["truncated_steps"] == ["short"]

    await user.open(f"/runs/{run_id}")
    await wait_row(run_id, "short", status="completed", color=STATUS_COLORS["truncated"], flag="cut off")
    await wait_row(run_id, "after", status="completed", color=STATUS_COLORS["completed"], flag="")
    await wait_shown(user, "truncation-warning", "Cut off at the token limit: Too short")
    await show(user, "short")
    await wait_shown(user, "truncation-short", "max_tokens=5")
    assert "5 / 5 tokens · finish: length" in text_of(user, "llm-short")
    await user.should_see(marker="llm-simulated")
    # What the model was asked: the prompt as rendered for this attempt, upstream output filled in.
    await show(user, "after")
    expand(user, "prompt-after")
    await wait_shown(user, "prompt-after", "Summarise: ")
    assert "{{" not in " ".join(texts_in(user, "prompt-after"))


async def test_every_page_names_the_simulated_provider(user: User) -> None:
    for page in ("/", "/workflows", "/monitoring"):
        await user.open(page)
        chip = the(user, "llm-simulated")
        shown = [str(getattr(e, "text", "")) for e in chip.descendants()]
        assert "LLM: simulated" in shown, shown  # the short form "sim" stands in for it on a phone
        assert "simulated provider" in str(chip.props["title"])
    response = await user.http_client.get("/api/llm")
    assert response.json()["provider"] == "simulated"
    assert response.json()["simulated"] is True


async def test_the_workflows_page_shows_each_llm_step_model_limit_and_prompt(user: User) -> None:
    await user.open("/workflows")
    rows = {r["key"]: r for r in table_rows(user, "steps-cut-llm")}
    assert rows["short"]["runs"] == "default model · max_tokens 5 · on truncation: warn"
    assert rows["after"]["runs"] == "default model · default max_tokens · on truncation: warn"
    expand(user, "prompts-cut-llm")
    await wait_shown(user, "prompts-cut-llm", "Summarise: {{ steps.short.output }}")
