"""The run page (`/runs/{id}`) with NiceGUI's simulated user: live pills, expand/collapse, alternatives,
retry, resume, stale flags and cancel. The app is `main.py` on a fresh SQLite file; runs are started
through the JSON API, acted on through the page, and checked on the page and through the API."""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import pytest
from nicegui import ElementFilter, ui
from nicegui.testing import User

from tests import stepfns
from tests.conftest import wait_for

WORKFLOWS = {
    "gated-pair": """
        name: gated-pair
        steps:
          - key: first
            label: First step
            call: tests.stepfns:gated
          - key: second
            label: Second step
            call: tests.stepfns:gated
    """,
    "trio": """
        name: trio
        steps:
          - key: up
            label: Upstream
            call: tests.stepfns:counted
          - key: mid
            label: Middle
            call: tests.stepfns:counted
          - key: down
            label: Downstream
            call: tests.stepfns:counted
    """,
    "pick": """
        name: pick
        steps:
          - key: draft
            label: Drafts
            call: tests.stepfns:alternatives
            alternatives: 3
            select: human
          - key: polish
            label: Polish
            call: tests.stepfns:use_upstream
    """,
    "flaky": """
        name: flaky
        steps:
          - key: prepare
            label: Prepare
            call: tests.stepfns:counted
          - key: flaky
            label: Flaky step
            call: tests.stepfns:fail_first
          - key: after
            label: After
            call: tests.stepfns:counted
    """,
}

TIMEOUT_S = 10.0
RETRIES = 100  # `should_see` waits 0.1 s between tries: up to 10 s


@pytest.fixture(autouse=True)
def run_page_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A fresh database and a workflows directory for the app that the `user` fixture starts from
    main.py (autouse fixtures are set up before `user`, which reads these variables)."""
    workflows_dir = tmp_path / "run-page-workflows"
    workflows_dir.mkdir()
    for name, text in WORKFLOWS.items():
        (workflows_dir / f"{name}.yaml").write_text(textwrap.dedent(text))
    for name in ("STEPDECK_HOST", "STEPDECK_PORT", "STEPDECK_STALE_AFTER_S", "STEPDECK_HEARTBEAT_INTERVAL_S"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("STEPDECK_DB", f"sqlite://{tmp_path / 'run-page.db'}")
    monkeypatch.setenv("STEPDECK_WORKFLOWS", str(workflows_dir))
    monkeypatch.setenv("STEPDECK_SHUTDOWN_GRACE_S", "0")
    stepfns.reset()
    stepfns.GATES.clear()
    yield
    for gate in list(stepfns.GATES.values()):  # no blocked step thread outlives its test
        gate.set()


# --- helpers ---------------------------------------------------------------------------------------


async def start_run(user: User, workflow: str) -> int:
    response = await user.http_client.post("/api/runs", json={"workflow": workflow, "inputs": {}})
    assert response.status_code == 201, response.text
    run_id: int = response.json()["id"]
    return run_id


async def api_run(user: User, run_id: int) -> dict[str, Any]:
    response = await user.http_client.get(f"/api/runs/{run_id}")
    assert response.status_code == 200, response.text
    run: dict[str, Any] = response.json()
    return run


async def api_step(user: User, run_id: int, key: str) -> dict[str, Any]:
    return next(s for s in (await api_run(user, run_id))["steps"] if s["key"] == key)


async def wait_run(user: User, run_id: int, *statuses: str) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        run = await api_run(user, run_id)
        return run if run["status"] in statuses else None

    run: dict[str, Any] = await wait_for(check, TIMEOUT_S, f"run {run_id} to be {'/'.join(statuses)}")
    return run


async def wait_step(user: User, run_id: int, key: str, status: str) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        step = await api_step(user, run_id, key)
        return step if step["status"] == status else None

    step: dict[str, Any] = await wait_for(check, TIMEOUT_S, f"step {key!r} of run {run_id} to be {status}")
    return step


def the(user: User, marker: str) -> ui.element:
    """The one visible element with this marker."""
    elements = user.find(marker=marker).elements
    assert len(elements) == 1, f"{len(elements)} elements marked {marker!r}"
    return next(iter(elements))


def text_of(user: User, marker: str) -> str:
    element = the(user, marker)
    return str(getattr(element, "text", "") or element.props.get("label", ""))


async def wait_prop(user: User, marker: str, name: str, value: Any) -> None:
    """Poll an element's prop (e.g. a pill dot's colour) until it has `value`; the page is never reloaded."""

    async def check() -> bool:
        return bool(the(user, marker).props.get(name) == value)

    try:
        await wait_for(check, TIMEOUT_S, f"{marker}.{name} == {value!r}")
    except AssertionError:
        raise AssertionError(f"{marker}.{name} is {the(user, marker).props.get(name)!r}, expected {value!r}") from None


async def wait_text(user: User, marker: str, text: str) -> None:
    async def check() -> bool:
        return text_of(user, marker) == text

    try:
        await wait_for(check, TIMEOUT_S, f"{marker} to read {text!r}")
    except AssertionError:
        raise AssertionError(f"{marker} reads {text_of(user, marker)!r}, expected {text!r}") from None


def texts_in(user: User, marker: str) -> list[str]:
    """What the visible elements inside the one marked `marker` display (labels, markdown, code)."""
    with user.client or nullcontext():
        boxes = list(ElementFilter(marker=marker, local_scope=False))
        if len(boxes) != 1:
            return []
        inside = ElementFilter(kind=ui.element, local_scope=False).within(instance=boxes[0])
        return [str(c) for e in inside for c in e._displayed_contents(only_visible=True) if c]


async def wait_shown(user: User, marker: str, text: str) -> None:
    """Poll until the element marked `marker` shows `text` (cards re-render when the engine's changes arrive)."""

    async def check() -> bool:
        return any(text in t for t in texts_in(user, marker))

    try:
        await wait_for(check, TIMEOUT_S, f"{marker} to show {text!r}")
    except AssertionError:
        raise AssertionError(f"{marker} shows {texts_in(user, marker)!r}, expected {text!r} in it") from None


def expand(user: User, marker: str) -> None:
    """Open an expansion as a click on its header does in the browser (Quasar sends the new model value)."""
    user.find(marker=marker).trigger("update:modelValue", True)


async def confirm(user: User, *expected: str) -> None:
    """The confirmation dialog is open and mentions `expected`; press its OK button."""
    await user.should_see(marker="confirm-dialog", retries=RETRIES)
    with user.scope(marker="confirm-dialog"):
        for text in expected:
            await user.should_see(text)
    user.find(marker="confirm-ok").click()


# --- tests -------------------------------------------------------------------------------------------


async def test_pills_change_colour_as_steps_complete_without_reload(user: User) -> None:
    run_id = await start_run(user, "gated-pair")
    await wait_step(user, run_id, "first", "running")
    client = await user.open(f"/runs/{run_id}")
    first_dot, second_dot = the(user, "pill-dot-first"), the(user, "pill-dot-second")
    await wait_prop(user, "pill-dot-first", "color", "blue-6")  # running
    assert second_dot.props.get("color") == "grey-5"  # pending
    assert text_of(user, "status-first") == "running"

    stepfns.gate("first").set()
    await wait_prop(user, "pill-dot-first", "color", "green-6")
    await wait_prop(user, "pill-dot-second", "color", "blue-6")
    assert text_of(user, "status-first") == "completed"

    stepfns.gate("second").set()
    await wait_prop(user, "pill-dot-second", "color", "green-6")
    await wait_text(user, "run-status", "completed")
    await wait_text(user, "step-counts", "2 completed")
    # The same page and the same elements: the change came through bindings, not a reload.
    assert user.client is client
    assert the(user, "pill-dot-first") is first_dot
    assert the(user, "pill-dot-second") is second_dot


async def test_expand_all_and_collapse_all(user: User) -> None:
    run_id = await start_run(user, "trio")
    await wait_run(user, run_id, "completed")
    await user.open(f"/runs/{run_id}")
    keys = ("up", "mid", "down")
    cards = [the(user, f"card-{k}") for k in keys]
    assert [c.props.get("model-value") for c in cards] == [False] * 3

    user.find(marker="expand-all").click()
    assert [c.props.get("model-value") for c in cards] == [True] * 3
    for key in keys:  # opened cards show their bodies
        await wait_shown(user, f"output-{key}", f"{key} call 1")

    user.find(marker="collapse-all").click()
    assert [c.props.get("model-value") for c in cards] == [False] * 3

    user.find(marker="pill-down").click()  # a pill opens its card (and scrolls to it in a browser)
    assert [c.props.get("model-value") for c in cards] == [False, False, True]


async def test_select_an_alternative_on_a_waiting_step_and_the_run_continues(user: User) -> None:
    run_id = await start_run(user, "pick")
    await wait_run(user, run_id, "waiting")
    await user.open(f"/runs/{run_id}")
    await user.should_see(marker="choice-needed")
    await wait_shown(user, "choice-needed", "A choice is needed: Drafts")
    assert the(user, "pill-dot-draft").props.get("color") == "amber-8"

    user.find(marker="pill-draft").click()
    for i in range(3):
        await wait_shown(user, f"alternative-draft-{i}", f"call1-alt{i}")
    user.find(marker="select-draft-1").click()

    run = await wait_run(user, run_id, "completed")
    assert run["steps"][0]["selected_index"] == 1
    assert run["steps"][1]["output"] == "used:call1-alt1"
    await wait_text(user, "run-status", "completed")
    await user.should_not_see(marker="choice-needed")
    await user.should_see(marker="selected-draft-1", retries=RETRIES)
    await user.should_not_see(marker="selected-draft-0")
    await wait_prop(user, "pill-dot-polish", "color", "green-6")
    expand(user, "card-polish")
    await wait_shown(user, "output-polish", "used:call1-alt1")


async def test_retry_a_failed_step_makes_a_new_attempt_and_keeps_the_old_one_in_history(user: User) -> None:
    run_id = await start_run(user, "flaky")
    await wait_run(user, run_id, "failed")
    await user.open(f"/runs/{run_id}")
    await wait_prop(user, "pill-dot-flaky", "color", "red-6")
    user.find(marker="pill-flaky").click()
    await user.should_see(marker="error-flaky")
    assert "transient failure" in text_of(user, "error-flaky")

    user.find(marker="retry-flaky").click()
    await confirm(user, "Will run again", "flaky, after", "Kept as they are", "prepare")

    run = await wait_run(user, run_id, "completed")
    steps = {s["key"]: s for s in run["steps"]}
    assert (steps["prepare"]["attempt"], steps["flaky"]["attempt"], steps["after"]["attempt"]) == (1, 2, 1)
    assert steps["flaky"]["output"] == "succeeded on call 2"
    await wait_prop(user, "pill-dot-flaky", "color", "green-6")
    await wait_text(user, "status-flaky", "completed")
    await wait_shown(user, "card-flaky", "attempt 2")
    await wait_shown(user, "output-flaky", "succeeded on call 2")
    await user.should_not_see(marker="error-flaky")

    await user.should_see(marker="history-flaky", retries=RETRIES)
    expand(user, "history-flaky")
    await wait_shown(user, "attempt-flaky-1", "transient failure")
    assert the(user, "attempt-flaky-1").props.get("label") == "Attempt 1 — failed"
    assert the(user, "attempt-flaky-2").props.get("label") == "Attempt 2 (current) — completed"


async def test_resume_from_a_middle_step_keeps_upstream_outputs(user: User) -> None:
    run_id = await start_run(user, "trio")
    await wait_run(user, run_id, "completed")
    await user.open(f"/runs/{run_id}")
    user.find(marker="expand-all").click()
    await wait_shown(user, "output-up", "up call 1")

    user.find(marker="rerun-mid").click()
    await confirm(user, "mid, down", "up")

    async def rerun_done() -> dict[str, Any] | None:
        run = await api_run(user, run_id)
        return run if run["status"] == "completed" and run["steps"][2]["attempt"] == 2 else None

    run = await wait_for(rerun_done, TIMEOUT_S, "the run to complete again after the rerun")
    steps = {s["key"]: s for s in run["steps"]}
    assert {k: (s["attempt"], s["output"]) for k, s in steps.items()} == {
        "up": (1, "up call 1"),
        "mid": (2, "mid call 2"),
        "down": (2, "down call 2"),
    }
    assert stepfns.CALLS["counted:up"] == 1
    await wait_text(user, "run-status", "completed")
    await wait_shown(user, "output-mid", "mid call 2")
    await wait_shown(user, "output-down", "down call 2")
    await wait_shown(user, "output-up", "up call 1")
    with user.scope(marker="card-up"):
        await user.should_see("attempt 1")
        await user.should_not_see("attempt 2")


async def test_changing_a_selection_on_a_completed_run_flags_the_dependent_stale(user: User) -> None:
    run_id = await start_run(user, "pick")
    await wait_run(user, run_id, "waiting")
    response = await user.http_client.post(f"/api/runs/{run_id}/steps/draft/select", json={"index": 0})
    assert response.status_code == 200, response.text
    await wait_run(user, run_id, "completed")
    await user.open(f"/runs/{run_id}")
    await user.should_not_see(marker="flag-polish")

    user.find(marker="pill-draft").click()
    user.find(marker="select-draft-2").click()

    await user.should_see(marker="flag-polish", retries=RETRIES)
    assert text_of(user, "flag-polish") == "stale"
    await wait_prop(user, "pill-dot-polish", "color", "purple-5")
    assert "1 stale" in text_of(user, "step-counts")
    expand(user, "card-polish")
    await user.should_see(marker="stale-reason-polish", retries=RETRIES)
    reason = text_of(user, "stale-reason-polish")
    assert "'draft'" in reason
    assert "from alternative 1 to 3" in reason
    assert (await api_step(user, run_id, "polish"))["stale"] is True
    assert (await api_run(user, run_id))["status"] == "completed"

    # Until re-run: resuming from the stale step refreshes it with the new choice and clears the flag.
    user.find(marker="rerun-polish").click()
    await confirm(user, "polish", "draft")
    await wait_shown(user, "output-polish", "used:call1-alt2")
    await user.should_not_see(marker="flag-polish", retries=RETRIES)
    await wait_prop(user, "pill-dot-polish", "color", "green-6")
    polish = await api_step(user, run_id, "polish")
    assert (polish["stale"], polish["attempt"], polish["output"]) == (False, 2, "used:call1-alt2")


async def test_cancel_a_running_run(user: User) -> None:
    run_id = await start_run(user, "gated-pair")
    await wait_step(user, run_id, "first", "running")
    await user.open(f"/runs/{run_id}")
    await user.should_not_see(marker="resume-run")

    user.find(marker="cancel-run").click()
    await confirm(user, f"Cancel run {run_id}?")

    run = await wait_run(user, run_id, "cancelled")
    assert run["steps"][0]["status"] == "cancelled"
    await wait_text(user, "run-status", "cancelled")
    await wait_prop(user, "pill-dot-first", "color", "brown-5")
    await user.should_not_see(marker="cancel-run")
    await user.should_see(marker="resume-run")
