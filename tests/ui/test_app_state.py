"""Each app keeps its live views of runs to itself: the next app in the same process (the next test's)
starts with nothing of them, without any reset by the tests.

The two tests run in this order on one worker (the module-scoped fixture keeps them together): the first
leaves run 1's page open when its app stops, as a browser tab left open would be; the second has a run 1
of its own, on a database of its own, which its pages must show.
"""

from __future__ import annotations

from typing import Any

import pytest
from nicegui import app
from nicegui.testing import User

from engine.db import current
from tests.ui.conftest import eventually
from ui.live import LiveRuns


@pytest.fixture(scope="module")
def earlier() -> dict[str, Any]:
    """What the first test's app left behind, for the second test to look at."""
    return {}


async def start(user: User, workflow: str, inputs: dict[str, Any]) -> int:
    response = await user.http_client.post("/api/runs", json={"workflow": workflow, "inputs": inputs})
    assert response.status_code == 201, response.text
    run_id: int = response.json()["id"]
    return run_id


def labels(live: LiveRuns, run_id: int) -> list[str]:
    """The step labels the run's page is fed."""
    state = live.states[run_id]
    return [state.rows[key].label for key in state.order]


async def test_an_app_stops_with_a_run_page_open(user: User, earlier: dict[str, Any]) -> None:
    run_id = await start(user, "gated", {})
    await user.open(f"/runs/{run_id}")
    await user.should_see(marker="run-root")
    live = app.state.live
    assert isinstance(live, LiveRuns)
    assert labels(live, run_id) == ["Wait for the test"]
    earlier.update(live=live, hub=current().hub, run_id=run_id)


async def test_the_next_app_shows_its_own_run_of_the_same_id(user: User, earlier: dict[str, Any]) -> None:
    assert earlier, "the test before this one did not run first on this worker"
    run_id = await start(user, "ui-demo", {"topic": "mine"})
    assert run_id == earlier["run_id"]  # a fresh database: the same id as the earlier app's run
    await user.open(f"/runs/{run_id}")
    await user.should_see(marker="run-root")
    live = app.state.live
    assert live is not earlier["live"]
    assert current().hub is not earlier["hub"]
    assert labels(live, run_id) == ["Echo inputs", 'Finish "it" <now>']  # this run's steps, not the earlier one's
    root = user.find(marker="run-root").elements.pop()
    await eventually(lambda: root.props.get("data-run-status") == "completed", "the page to show the run completed")
    # The earlier app's views stopped with it, and heard nothing of this app's run since.
    assert earlier["live"].states == {}
    assert earlier["live"].hub is earlier["hub"]
