"""A step card during a pending retry: the `retrying` state in its row, "attempt 1 of 2 failed" with the
error, and a countdown to its next attempt; a step with a policy shows its place in the series."""

from __future__ import annotations

import re
import textwrap
from datetime import datetime
from pathlib import Path

import pytest
from nicegui.testing import User

from tests import pgdb, stepfns
from tests.conftest import wait_for
from tests.ui.test_run_page import api_step, row, show, start_run, text_of, wait_row, wait_run
from ui.components.retry_view import countdown_text

LATER = """
    name: later
    steps:
      - key: a
        label: Fetch
        call: tests.stepfns:boom
        retries: 1
        retry_delay_s: 600
    """


@pytest.fixture(autouse=True)
def retry_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    workflows_dir = tmp_path / "retry-workflows"
    workflows_dir.mkdir()
    (workflows_dir / "later.yaml").write_text(textwrap.dedent(LATER))
    if not pgdb.ENABLED:  # on PostgreSQL: the fresh, migrated database of tests/ui/conftest.py
        monkeypatch.setenv("STEPDECK_DB", f"sqlite://{tmp_path / 'retry.db'}")
    monkeypatch.setenv("STEPDECK_WORKFLOWS", str(workflows_dir))
    monkeypatch.setenv("STEPDECK_SHUTDOWN_GRACE_S", "0")
    stepfns.reset()


async def test_a_pending_retry_shows_its_state_the_error_and_a_countdown(user: User) -> None:
    run_id = await start_run(user, "later")

    async def retrying() -> bool:
        return bool((await api_step(user, run_id, "a"))["status"] == "retrying")

    await wait_for(retrying, 10, "the pending retry")
    await user.open(f"/runs/{run_id}")
    await wait_row(run_id, "a", status="retrying", color="deep-orange-5")
    assert row(run_id, "a")["attempt"] == 1
    await show(user, "a")
    await user.should_see(marker="countdown-a")
    first = text_of(user, "countdown-a")
    seconds = re.fullmatch(r"retrying in (\d+) s", first)
    assert seconds is not None and 0 < int(seconds[1]) <= 600, first

    async def ticked() -> bool:
        return text_of(user, "countdown-a") != first  # it counts down live, without a reload

    await wait_for(ticked, 10, "the countdown to move")
    await user.should_see("attempt 1 of 2 failed")
    await user.should_see("(attempt 2 of 2 next)")
    assert text_of(user, "error-a") == "ValueError: the step exploded"
    response = await user.http_client.post(f"/api/runs/{run_id}/cancel")
    assert response.status_code == 200, response.text
    await wait_run(user, run_id, "cancelled")


def test_the_countdown_text() -> None:
    assert countdown_text("2026-01-01T00:00:08+00:00", now=_at("2026-01-01T00:00:00+00:00")) == "retrying in 8 s"
    assert countdown_text("2026-01-01T00:00:00+00:00", now=_at("2026-01-01T00:00:05+00:00")) == "retrying now"


def _at(value: str) -> datetime:
    return datetime.fromisoformat(value)
