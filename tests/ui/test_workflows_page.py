"""The workflows page (definitions, broken files, reload, start) and the monitoring page."""

from __future__ import annotations

from pathlib import Path

import pytest
from nicegui import ui
from nicegui.testing import User

from engine import operations
from engine.maintenance import SWEEP_JOB_ID
from tests.ui.conftest import RETRIES, eventually, loaded, new_run_id, open_run_dialog, table_rows
from ui.components.dag import INLINE_MAX_STEPS


async def test_shows_definitions_steps_and_dag(user: User) -> None:
    await user.open("/workflows")
    await user.should_see(marker="workflow-ui-demo")
    await user.should_see("A workflow for the dashboard tests.")
    await user.should_see("ui-demo.yaml")  # the source file
    steps = table_rows(user, "steps-ui-demo")
    assert [(s["key"], s["label"], s["kind"], s["needs"]) for s in steps] == [
        ("echo", "Echo inputs", "python", "—"),
        ("finish", 'Finish "it" <now>', "python", "echo"),
    ]
    inputs = {i["name"]: i for i in table_rows(user, "inputs-ui-demo")}
    assert inputs["topic"]["required"] == "yes"
    assert inputs["count"] == {
        "name": "count",
        "type": "integer",
        "required": "no",
        "default": "3",
        "description": "",
    }
    assert inputs["tone"]["type"] == "choice (friendly, formal)"
    (diagram,) = user.find("dag-ui-demo").elements
    assert isinstance(diagram, ui.mermaid)
    assert "s0 --> s1" in diagram.content
    assert '"' not in diagram.content.split('s1["', 1)[1].split('"]', 1)[0]  # the label's quotes are escaped


async def test_a_large_workflows_graph_is_drawn_when_opened_not_with_the_page(user: User, workflows_dir: Path) -> None:
    """Mermaid lays out in the browser's main thread (tens of seconds for a few hundred steps): a large
    workflow's graph waits behind a closed section, so the page never freezes."""
    steps = "".join(
        f"  - key: s{i}\n    call: tests.stepfns:noop\n" + (f"    needs: [s{i - 1}]\n" if i else "")
        for i in range(INLINE_MAX_STEPS + 1)
    )
    await user.open("/workflows")
    (workflows_dir / "big.yaml").write_text(f"name: big\nsteps:\n{steps}", encoding="utf-8")
    user.find("reload-definitions").click()
    await user.should_see(marker="workflow-big", retries=RETRIES)
    await user.should_see(f"Graph of {INLINE_MAX_STEPS + 1} steps")
    await user.should_not_see(marker="dag-big")  # not drawn with the page
    await user.should_see(marker="dag-ui-demo")  # a small workflow's graph is drawn at once
    (opener,) = user.find("dag-opener-big").elements
    assert isinstance(opener, ui.expansion)
    opener.value = True
    await user.should_see(marker="dag-big")
    (diagram,) = user.find("dag-big").elements
    assert isinstance(diagram, ui.mermaid) and f"s{INLINE_MAX_STEPS - 1} --> s{INLINE_MAX_STEPS}" in diagram.content


async def test_broken_file_is_shown_not_fatal(user: User) -> None:
    await user.open("/workflows")
    await user.should_see(marker="definition-error")
    await user.should_see("broken.yaml:7: step 'second': needs: unknown step 'nope' (known: first)")
    await user.should_see("Line: 7")
    await user.should_see(marker="workflow-gated")  # the other files still load


async def test_reload_picks_up_new_and_fixed_files(user: User, workflows_dir: Path) -> None:
    await user.open("/workflows")
    await user.should_not_see(marker="workflow-extra")
    text = (workflows_dir / "broken.yaml").read_text(encoding="utf-8").replace("needs: [nope]", "needs: [first]")
    (workflows_dir / "broken.yaml").write_text(text, encoding="utf-8")
    (workflows_dir / "extra.yaml").write_text("steps:\n  - key: only\n    call: tests.stepfns:noop\n", encoding="utf-8")
    user.find("reload-definitions").click()
    await user.should_see(marker="workflow-extra", retries=RETRIES)
    await user.should_see(marker="workflow-broken")
    await user.should_not_see(marker="definition-error", retries=RETRIES)
    await user.should_see("4 definition(s) loaded")


async def test_start_run_button_opens_the_form(user: User, monkeypatch: pytest.MonkeyPatch) -> None:
    went_to = await open_run_dialog(user, monkeypatch, "/workflows", "start-ui-demo")
    await user.should_see(marker="run-dialog")
    user.find("input-topic").type("from the workflows page")
    user.find("start-run").click()
    await new_run_id(went_to)  # the run's page, /runs/<id>


async def test_monitoring_shows_the_sweep_and_counts(user: User) -> None:
    await user.open("/monitoring")
    await user.should_see(marker=f"job-{SWEEP_JOB_ID}")
    await user.should_see("fail orphaned runs")
    # The sweep runs once at startup; the bound labels follow without a reload.
    (runs,) = user.find(f"job-{SWEEP_JOB_ID}-runs").elements
    await eventually(lambda: runs.text != "0", "the startup sweep to be counted")  # type: ignore[attr-defined]
    await user.should_see("0 orphaned run(s) failed")
    await user.should_see("Token usage charts appear once LLM steps run.")
    await user.should_see("queued: 0")

    await operations.start_run(loaded("gated"), {}, "test")
    await user.should_see("running: 1", retries=RETRIES)  # the counts follow the new run
