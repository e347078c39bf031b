"""The run page (`/runs/{id}`) with NiceGUI's simulated user: live step rows, card bodies, alternatives,
retry, resume, stale flags and cancel. The app is `main.py` on a fresh SQLite file; runs are started
through the JSON API, acted on through the page, and checked on the page and through the API.

The step navigator and the cards' headers are drawn in the browser by one component (run_steps.js)
from a row per step; without a browser these tests read the rows the page hands that component (its
live state and the patches it sends), and do what the browser does when cards are open on screen
(`RunSteps.show`) to get their bodies, which are NiceGUI elements. What only a browser does (clicks
on pills, keys, scrolling) is tested in tests/e2e/test_run_page_browser.py."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import pytest
from nicegui import ElementFilter, app, ui
from nicegui.testing import User

from engine import operations, queries
from engine.errors import Conflict
from engine.readmodel import StepRow
from tests import stepfns
from tests.conftest import wait_for
from tests.ui.conftest import RETRIES, add_workflows, eventually, table_rows
from ui.components.run_steps import RunSteps
from ui.live import BUSY_PUSH_DELAY_S, BUSY_ROWS, LiveRuns, RunState

WORKFLOWS = {
    "logs": """
        name: logs
        steps:
          - key: chatty
            call: tests.stepfns:progress_and_logs
    """,
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
    "retrying": """
        name: retrying
        steps:
          - key: boom
            call: tests.stepfns:boom
            retries: 2
            retry_delay_s: 600
    """,
    # A gated first step, then more steps than a busy push redraws (`ui.live.BUSY_ROWS`).
    "paced": "name: paced\nsteps:\n  - key: pace\n    call: tests.stepfns:gated\n"
    + "".join(f"  - key: p{i}\n    call: tests.stepfns:noop\n" for i in range(BUSY_ROWS + 10)),
}

TIMEOUT_S = 10.0


@pytest.fixture(autouse=True)
def run_page_workflows(workflows_dir: Path) -> None:
    """This module's workflows for the app the `user` fixture starts (autouse: set up before `user`)."""
    add_workflows(workflows_dir, WORKFLOWS)


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
    """Poll until the element marked `marker` shows `text` (bodies re-render when the engine's changes arrive)."""

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


# --- the step rows (what the page's component draws pills, cells and card headers from) ---------------

# The fields of a row as run_steps.js reads them (ui.live.RunState.row_json).
ROW_FIELDS = ("key", "label", "status", "color", "flag", "attempt", "started", "finished")


def steps_of(user: User) -> RunSteps:
    """The page's step component (navigator and cards)."""
    element = the(user, "run-steps")
    assert isinstance(element, RunSteps), f"run-steps is a {type(element).__name__}"
    return element


def state_of(run_id: int) -> RunState:
    live = app.state.live  # the app's own live views (ui/app.py `mount`)
    assert isinstance(live, LiveRuns)
    state = live.states.get(run_id)
    assert state is not None, f"no live view of run {run_id}: is its page open?"
    return state


def row(run_id: int, key: str) -> dict[str, Any]:
    """The row of a step as the page hands it to its component: status, colour, flag, attempt."""
    state = state_of(run_id)
    return dict(zip(ROW_FIELDS, state.row_json(state.rows[key]), strict=True))


async def wait_row(run_id: int, key: str, **expected: Any) -> dict[str, Any]:
    """Poll a step's row until the named fields have these values (the page is never reloaded)."""

    async def check() -> dict[str, Any] | None:
        now = row(run_id, key)
        return now if all(now[name] == value for name, value in expected.items()) else None

    try:
        found: dict[str, Any] = await wait_for(check, TIMEOUT_S, f"row {key!r} to have {expected}")
    except AssertionError:
        raise AssertionError(f"row {key!r} is {row(run_id, key)}, expected {expected}") from None
    return found


def sent_patches(user: User, steps: RunSteps) -> list[tuple[float, list[dict[str, Any]]]]:
    """Every patch the server sent to this component since the page opened, in order: when the client's
    outbox emitted it (epoch seconds) and its rows."""
    assert user.client is not None
    call = re.compile(rf'return runMethod\({steps.id}, "patch", (.*)\)$', re.DOTALL)
    sent: list[tuple[float, list[dict[str, Any]]]] = []
    for _, at, (_, kind, data) in user.client.outbox.message_history:
        match = call.match(data.get("code", "")) if kind == "run_javascript" else None
        if match:
            (rows,) = json.loads(match.group(1))
            sent.append((at, [dict(zip(ROW_FIELDS, r, strict=True)) for r in rows]))
    return sent


def sent_rows(user: User, steps: RunSteps) -> list[dict[str, Any]]:
    """Every row the server sent to this component since the page opened (its `patch` calls, in order)."""
    return [row for _, rows in sent_patches(user, steps) for row in rows]


async def show(user: User, *keys: str) -> None:
    """What the browser reports when exactly these cards are open and on screen: their bodies are built
    (and the bodies of other cards dropped)."""
    await steps_of(user).show(list(keys))


def bodies(user: User) -> set[str]:
    """The steps whose card bodies the page has built."""
    with user.client or nullcontext():
        return {
            m[len("body-") :] for e in ElementFilter(local_scope=False) for m in e._markers if m.startswith("body-")
        }


# --- tests -------------------------------------------------------------------------------------------


async def test_rows_change_colour_as_steps_complete_without_reload(user: User) -> None:
    run_id = await start_run(user, "gated-pair")
    await wait_step(user, run_id, "first", "running")
    client = await user.open(f"/runs/{run_id}")
    steps, root = steps_of(user), the(user, "run-root")
    await wait_row(run_id, "first", status="running", color="blue-6")
    assert row(run_id, "second") | {"started": None} == {
        "key": "second",
        "label": "Second step",
        "status": "pending",
        "color": "grey-5",
        "flag": "",
        "attempt": 0,
        "started": None,
        "finished": None,
    }
    assert root.props["data-run-status"] == "running"

    stepfns.gate("first").set()
    await wait_row(run_id, "first", status="completed", color="green-6", attempt=1)
    await wait_row(run_id, "second", status="running", color="blue-6")

    stepfns.gate("second").set()
    await wait_row(run_id, "second", status="completed", color="green-6")
    await wait_text(user, "run-status", "completed")
    await wait_text(user, "run-counts", "2 completed")
    assert (root.props["data-run-status"], root.props["data-completed"]) == ("completed", "2")

    async def duration() -> str:
        shown = text_of(user, "run-duration")
        return shown if shown.startswith("took ") else ""

    took = await wait_for(duration, TIMEOUT_S, "the run's duration")
    assert re.fullmatch(r"took \d+\.\d s", took), took  # the run's total duration once it finished
    link = the(user, "workflow-link")
    assert isinstance(link, ui.link) and link.props["href"] == "/workflows#workflow-gated-pair"

    # The component was told: the last rows it got are the completed ones (patches, not a new page).
    async def told() -> bool:
        last = {r["key"]: (r["status"], r["color"]) for r in sent_rows(user, steps)}
        return last == {"first": ("completed", "green-6"), "second": ("completed", "green-6")}

    await wait_for(told, TIMEOUT_S, "the component to get the completed rows")
    # The same page and the same elements: the change came through patches, not a reload.
    assert user.client is client
    assert steps_of(user) is steps
    assert the(user, "run-root") is root


async def test_after_a_patch_that_redrew_many_steps_the_next_one_waits_longer(user: User) -> None:
    """A run changing faster than anyone reads is redrawn a few times a second, not ten: after a patch of
    BUSY_ROWS steps or more, the next comes BUSY_PUSH_DELAY_S later at the soonest (a lower bound: a
    loaded machine only makes the gap longer)."""
    run_id = await start_run(user, "paced")
    stepfns.gate("pace").set()
    await wait_run(user, run_id, "completed")
    await user.open(f"/runs/{run_id}")
    steps = steps_of(user)
    stepfns.gate("pace").clear()
    # One commit puts every step back to pending: one patch redraws them all, then the gated step runs.
    response = await user.http_client.post(f"/api/runs/{run_id}/steps/pace/rerun")
    assert response.status_code == 200, response.text

    async def busy_patch() -> float | None:
        return next((at for at, rows in sent_patches(user, steps) if len(rows) >= BUSY_ROWS), None)

    busy_at: float = await wait_for(busy_patch, TIMEOUT_S, f"a patch of {BUSY_ROWS} steps or more")
    stepfns.gate("pace").set()  # the rest of the run: more changes right away
    last = f"p{BUSY_ROWS + 9}"

    async def finished() -> bool:
        return any(r["key"] == last and r["status"] == "completed" for r in sent_rows(user, steps))

    await wait_for(finished, TIMEOUT_S, "the patch of the run's last step")
    later = [at for at, _ in sent_patches(user, steps) if at > busy_at]
    assert later[0] - busy_at >= BUSY_PUSH_DELAY_S - 0.05, f"the next patch came {later[0] - busy_at:.3f} s after"


async def test_rows_kept_from_the_changes_match_the_steps_as_read(user: User) -> None:
    """A watched run's rows follow its changes without re-reading its steps (their times are the events'):
    once it ran, every row is what reading the steps afresh gives."""
    run_id = await start_run(user, "paced")
    await user.open(f"/runs/{run_id}")
    await wait_row(run_id, "pace", status="running")
    stepfns.gate("pace").set()
    await wait_row(run_id, f"p{BUSY_ROWS + 9}", status="completed")
    assert all(r.finished_at is not None for r in state_of(run_id).rows.values())  # every step ran
    await assert_rows_as_read(run_id)


def same_time(shown: float, stored: float) -> bool:
    """The event's time against its attempt's: PostgreSQL reads its clock as each statement of a commit
    starts, so the two differ by as long as the statements between them took (else not at all)."""
    return abs(shown - stored) < 0.5


async def assert_rows_as_read(run_id: int) -> None:
    """Every row the page keeps is what reading the steps afresh gives."""
    kept = state_of(run_id).rows
    for read in await queries.step_rows(run_id):
        row = kept[read.key]
        assert (row.status, row.attempt, row.stale, row.truncated) == (
            read.status,
            read.attempt,
            read.stale,
            read.truncated,
        ), read.key
        for name in ("started_at", "finished_at"):
            shown, stored = getattr(row, name), getattr(read, name)
            assert (shown is None) == (stored is None), (read.key, name, shown, stored)
            assert shown is None or stored is None or same_time(shown, stored), (read.key, name, shown, stored)


async def test_a_step_cancelled_while_a_retry_is_pending_shows_when_its_attempt_ended(user: User) -> None:
    """Leaving a pending retry ends no attempt: the row keeps the failed attempt's end, not the cancel's."""
    run_id = await start_run(user, "retrying")
    await user.open(f"/runs/{run_id}")
    await wait_row(run_id, "boom", status="retrying")
    await assert_rows_as_read(run_id)
    await asyncio.sleep(1.0)  # the cancel comes well after the attempt ended: the two times differ
    assert await operations.cancel_run(run_id, "tester")
    await wait_row(run_id, "boom", status="cancelled")

    async def settled() -> bool:
        return not state_of(run_id).dirty and not state_of(run_id).pending.rows

    await wait_for(settled, TIMEOUT_S, "the page to re-read the step")
    await assert_rows_as_read(run_id)


async def test_a_step_that_changes_while_it_is_read_again_keeps_its_newer_state(
    user: User, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A re-read that started before a change and ends after it is older than the change: it is not shown
    (the step is read again at the next push), and the row never goes back."""
    run_id = await start_run(user, "gated-pair")
    await wait_step(user, run_id, "first", "running")
    await user.open(f"/runs/{run_id}")
    state = state_of(run_id)
    real_read = queries.step_rows
    read, release = asyncio.Event(), asyncio.Event()

    async def late_read(rid: int, keys: Sequence[str] | None = None) -> list[StepRow]:
        rows = await real_read(rid, keys)  # the real read, handed over late: as a slow reader would
        read.set()
        await release.wait()
        return rows

    monkeypatch.setattr(queries, "step_rows", late_read)
    refreshing = asyncio.create_task(app.state.live.refresh(run_id, ["first"]))  # as after a tab's action
    await asyncio.wait_for(read.wait(), TIMEOUT_S)  # it read `first` running
    stepfns.gate("first").set()
    await wait_row(run_id, "first", status="completed")  # the hub's change, meanwhile
    release.set()
    await asyncio.wait_for(refreshing, TIMEOUT_S)
    assert state.rows["first"].status == "completed"
    monkeypatch.setattr(queries, "step_rows", real_read)
    stepfns.gate("second").set()
    await wait_row(run_id, "second", status="completed")

    async def settled() -> bool:
        return not state.dirty and not state.pending.rows

    await wait_for(settled, TIMEOUT_S, "the page to re-read the step")
    await assert_rows_as_read(run_id)


async def test_bodies_are_built_for_the_open_cards_on_screen_and_dropped_otherwise(user: User) -> None:
    run_id = await start_run(user, "trio")
    await wait_run(user, run_id, "completed")
    await user.open(f"/runs/{run_id}")
    assert bodies(user) == set(), "nothing is open on a completed run: no body is built"
    steps = steps_of(user)

    await show(user, "up", "mid", "down")  # as after "Expand all"
    assert bodies(user) == {"up", "mid", "down"}
    for key in ("up", "mid", "down"):
        await wait_shown(user, f"output-{key}", f"{key} call 1")
    body = the(user, "body-mid")
    assert body.parent_slot is not None and body.parent_slot.parent is steps, "a body is placed by the component"
    assert body.props["data-step"] == "mid"

    await show(user, "down")  # as after "Collapse all" and a click on the last pill
    assert bodies(user) == {"down"}
    await user.should_not_see(marker="output-up")
    assert the(user, "body-down") is not None

    await show(user, "down", "no-such-step")  # what the browser says is checked
    assert bodies(user) == {"down"}
    await show(user)
    assert bodies(user) == set()


async def test_select_an_alternative_on_a_waiting_step_and_the_run_continues(user: User) -> None:
    run_id = await start_run(user, "pick")
    await wait_run(user, run_id, "waiting")
    await user.open(f"/runs/{run_id}")
    await user.should_see(marker="choice-needed")
    await wait_shown(user, "choice-needed", "A choice is needed: Drafts")
    assert state_of(run_id).view.choice_key == "draft"
    assert row(run_id, "draft")["color"] == "amber-8"

    await show(user, "draft")  # open from the start: a choice is waiting
    for i in range(3):
        await wait_shown(user, f"alternative-draft-{i}", f"call1-alt{i}")
    user.find(marker="select-draft-1").click()

    run = await wait_run(user, run_id, "completed")
    assert run["steps"][0]["selected_index"] == 1
    assert run["steps"][1]["output"] == "used:call1-alt1"
    await wait_text(user, "run-status", "completed")
    await user.should_not_see(marker="choice-needed", retries=RETRIES)
    await user.should_see(marker="selected-draft-1", retries=RETRIES)
    await user.should_not_see(marker="selected-draft-0", retries=RETRIES)
    await wait_row(run_id, "polish", status="completed", color="green-6")
    await show(user, "polish")
    await wait_shown(user, "output-polish", "used:call1-alt1")


async def test_a_cancelled_run_asks_for_no_choice_and_refuses_one(user: User) -> None:
    run_id = await start_run(user, "pick")
    await wait_run(user, run_id, "waiting")
    await user.open(f"/runs/{run_id}")
    await show(user, "draft")
    await user.should_see(marker="choose-draft")

    await operations.cancel_run(run_id, "alice")  # from elsewhere: the open page follows
    await wait_text(user, "run-status", "cancelled")
    await wait_row(run_id, "draft", status="not chosen")
    await wait_row(run_id, "polish", status="not run")
    await user.should_not_see(marker="choice-needed", retries=RETRIES)  # bindings refresh on their own beat
    await wait_shown(user, "stopped-draft", "resume it to choose")
    await user.should_not_see(marker="choose-draft", retries=RETRIES)
    select = the(user, "select-draft-1")
    assert isinstance(select, ui.button) and not select.enabled, "a choice on a cancelled run is not offered"
    await user.should_see(marker="resume-run")

    with pytest.raises(Conflict, match="resume it to choose"):
        await operations.select(run_id, "draft", 1, "alice")
    run = (await queries.run_detail(run_id)).to_json()
    assert (run["status"], run["needs_choice"], run["steps"][0]["status"]) == ("cancelled", [], "waiting")


async def test_retry_a_failed_step_makes_a_new_attempt_and_keeps_the_old_one_in_history(user: User) -> None:
    run_id = await start_run(user, "flaky")
    await wait_run(user, run_id, "failed")
    await user.open(f"/runs/{run_id}")
    await wait_row(run_id, "flaky", status="failed", color="red-6")
    assert row(run_id, "after")["status"] == "not run"
    await show(user, "flaky")
    await user.should_see(marker="error-flaky")
    assert "transient failure" in text_of(user, "error-flaky")

    user.find(marker="retry-flaky").click()
    await confirm(user, "Will run again", "flaky, after", "Kept as they are", "prepare")

    run = await wait_run(user, run_id, "completed")
    steps = {s["key"]: s for s in run["steps"]}
    assert (steps["prepare"]["attempt"], steps["flaky"]["attempt"], steps["after"]["attempt"]) == (1, 2, 1)
    assert steps["flaky"]["output"] == "succeeded on call 2"
    await wait_row(run_id, "flaky", status="completed", color="green-6", attempt=2)
    await wait_row(run_id, "after", status="completed", attempt=1)
    await wait_shown(user, "body-flaky", "attempt 2")
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
    await show(user, "up", "mid", "down")
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
    assert [row(run_id, k)["attempt"] for k in ("up", "mid", "down")] == [1, 2, 2]
    with user.scope(marker="body-up"):
        await user.should_see("attempt 1")
        await user.should_not_see("attempt 2")


async def test_changing_a_selection_on_a_completed_run_flags_the_dependent_stale(user: User) -> None:
    run_id = await start_run(user, "pick")
    await wait_run(user, run_id, "waiting")
    response = await user.http_client.post(f"/api/runs/{run_id}/steps/draft/select", json={"index": 0})
    assert response.status_code == 200, response.text
    await wait_run(user, run_id, "completed")
    await user.open(f"/runs/{run_id}")
    assert row(run_id, "polish")["flag"] == ""

    await show(user, "draft")
    # A changed choice asks first, naming what will become stale; Back changes nothing.
    user.find(marker="select-draft-1").click()
    await user.should_see(marker="confirm-dialog", retries=RETRIES)
    with user.scope(marker="confirm-dialog"):
        await user.should_see("will be marked stale")
        await user.should_see("Polish")
    user.find(marker="confirm-back").click()
    await user.should_not_see(marker="confirm-dialog", retries=RETRIES)
    assert (await api_step(user, run_id, "draft"))["selected_index"] == 0
    user.find(marker="select-draft-2").click()
    await confirm(user, "will be marked stale")
    await user.should_see("1 step marked stale", retries=RETRIES)

    await wait_row(run_id, "polish", flag="stale", color="purple-5", status="completed")
    assert "1 stale" in text_of(user, "run-counts")
    await show(user, "polish")
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
    await wait_row(run_id, "polish", flag="", color="green-6", attempt=2)
    await user.should_not_see(marker="stale-reason-polish", retries=RETRIES)
    assert "stale" not in text_of(user, "run-counts")
    polish = await api_step(user, run_id, "polish")
    assert (polish["stale"], polish["attempt"], polish["output"]) == (False, 2, "used:call1-alt2")


async def test_refresh_stale_steps_reruns_only_the_stale_ones(user: User) -> None:
    run_id = await start_run(user, "pick")
    await wait_run(user, run_id, "waiting")
    await user.http_client.post(f"/api/runs/{run_id}/steps/draft/select", json={"index": 0})
    await wait_run(user, run_id, "completed")
    refused = await user.http_client.post(f"/api/runs/{run_id}/refresh-stale")
    assert refused.status_code == 409 and "no stale step" in refused.json()["message"]
    await user.http_client.post(f"/api/runs/{run_id}/steps/draft/select", json={"index": 1})
    await user.open(f"/runs/{run_id}")
    await wait_row(run_id, "polish", flag="stale")
    await user.should_see(marker="refresh-stale", retries=RETRIES)

    user.find(marker="refresh-stale").click()
    await confirm(user, "polish", "draft")  # re-run, and kept
    await wait_row(run_id, "polish", flag="", attempt=2, status="completed")
    draft = await api_step(user, run_id, "draft")
    assert (draft["attempt"], draft["selected_index"]) == (1, 1), "the chosen step itself is kept"
    assert (await api_step(user, run_id, "polish"))["output"] == "used:call1-alt1"
    await user.should_not_see(marker="refresh-stale", retries=RETRIES)


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
    await wait_row(run_id, "first", status="cancelled", color="brown-5")
    await wait_row(run_id, "second", status="not run")  # a pending step of a run that ended
    assert the(user, "run-root").props["data-run-status"] == "cancelled"
    await user.should_not_see(marker="cancel-run", retries=RETRIES)
    await user.should_see(marker="resume-run")


async def test_a_run_that_finishes_while_its_page_is_read_shows_finished(
    user: User, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The page reads the run, then its steps; the run finishes in between, before the page's live state
    # exists to take the change. The page must not go on showing it running.
    run_id = await start_run(user, "gated-pair")
    await wait_step(user, run_id, "first", "running")
    read_steps = queries.step_rows

    async def the_run_finishes_meanwhile(rid: int, keys: Any = None) -> Any:
        rows = await read_steps(rid, keys)
        if keys is None:  # the first read of the page's state
            stepfns.gate("first").set()
            stepfns.gate("second").set()
            await wait_run(user, run_id, "completed")
        return rows

    monkeypatch.setattr(queries, "step_rows", the_run_finishes_meanwhile)
    await user.open(f"/runs/{run_id}")
    await wait_text(user, "run-status", "completed")
    assert the(user, "run-root").props["data-run-status"] == "completed"
    await wait_row(run_id, "second", status="completed", color="green-6")


async def test_a_step_log_has_a_heading_a_search_and_a_download(user: User) -> None:
    run_id = await start_run(user, "logs")
    await wait_run(user, run_id, "completed")
    await user.open(f"/runs/{run_id}")
    await show(user, "chatty")
    await wait_shown(user, "log-chatty", "Log · 3 lines")
    lines = the(user, "log-chatty-lines")

    def shown() -> list[str]:  # each line after the time it was written (tests/ui/test_log_view.py)
        return [re.sub(r"^\d\d:\d\d:\d\d\.\d{3} ", "", c.text) for c in lines.default_slot.children]  # type: ignore[attr-defined]

    assert shown() == ["line 1", "line 2", "line 3"]

    (search,) = [e for e in the(user, "log-chatty").descendants() if isinstance(e, ui.input)]
    with user:
        search.value = "2"
    await wait_shown(user, "log-chatty", "Log · 1 of 3 lines")
    assert shown() == ["line 2"]


async def test_the_graph_and_gantt_panels_follow_the_run(user: User) -> None:
    run_id = await start_run(user, "gated-pair")
    await wait_step(user, run_id, "first", "running")
    await user.open(f"/runs/{run_id}")
    expand(user, "run-graph")
    expand(user, "run-gantt")
    graph = the(user, "run-graph-chart")
    assert isinstance(graph, ui.mermaid)
    assert "First step · running" in graph.content and "Second step · pending" in graph.content
    assert "s0 --> s1" in graph.content  # second needs first
    gantt = the(user, "run-gantt-chart")
    assert isinstance(gantt, ui.echart)
    assert gantt.options["yAxis"]["data"] == ["First step"]  # only started steps have a bar

    stepfns.gate("first").set()
    stepfns.gate("second").set()
    await wait_run(user, run_id, "completed")

    async def redrawn() -> bool:
        return "First step · completed" in graph.content and "Second step · completed" in graph.content

    await wait_for(redrawn, TIMEOUT_S, "the graph to show both steps completed")

    async def charted() -> bool:
        return bool(gantt.options.get("yAxis", {}).get("data") == ["First step", "Second step"])

    await wait_for(charted, TIMEOUT_S, "the Gantt chart to show both steps")


async def test_the_open_timeline_gains_the_events_of_the_run_as_they_happen(user: User) -> None:
    run_id = await start_run(user, "gated-pair")
    await wait_step(user, run_id, "first", "running")
    await user.open(f"/runs/{run_id}")
    expand(user, "timeline")

    def whats() -> list[str]:
        return [row["what"] for row in table_rows(user, "timeline-rows")]

    await eventually(whats, "the timeline to show the events so far", TIMEOUT_S)
    assert "step first: pending → running" in whats()
    assert "step second: pending → running" not in whats()

    stepfns.gate("first").set()
    stepfns.gate("second").set()
    await wait_run(user, run_id, "completed")
    expected = ["step first: running → completed", "step second: running → completed", "run: running → completed"]
    await eventually(lambda: all(w in whats() for w in expected), "the timeline to show the run's end", TIMEOUT_S)
    ids = [row["id"] for row in table_rows(user, "timeline-rows")]
    assert len(ids) == len(set(ids)), "an event shows once"
    assert ids == sorted(ids)
