"""The Notifications section of the Monitoring page: a delivery to a real loopback receiver shows with its
status and tries, its target by scheme and host only (never the token in its URL)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from nicegui.testing import User

from engine import operations
from tests.receiver import Receiver
from tests.ui.conftest import eventually, loaded, table_rows

TOKEN = "tok-ui-5e6f7a8b"
FAILS = """\
name: fails
steps:
  - key: a
    call: uifail:boom
"""


@pytest.fixture(autouse=True)
def receiver(workflows_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Receiver]:
    """A receiver answering 500 once, then 200, named in STEPDECK_WEBHOOK_URL before the app starts."""
    (workflows_dir / "fails.yaml").write_text(FAILS)
    (workflows_dir / "uifail.py").write_text("def boom(ctx):\n    raise RuntimeError('no luck')\n")
    r = Receiver().start()
    r.codes = [500]
    monkeypatch.setenv("STEPDECK_WEBHOOK_URL", r.url(f"/hook/{TOKEN}"))
    monkeypatch.setenv("STEPDECK_NOTIFY_RETRY_S", "0.2")
    yield r
    r.stop()


async def test_deliveries_show_with_status_tries_and_a_redacted_target(user: User, receiver: Receiver) -> None:
    await user.open("/monitoring")
    await user.should_see("Notifications")
    run_id = await operations.start_run(loaded("fails"), {}, "tester")

    async def delivered() -> bool:
        rows = table_rows(user, "deliveries")
        return bool(rows) and rows[0]["status"] == "delivered"

    await eventually(delivered, "the delivery to show as delivered", timeout_s=30)
    (row,) = table_rows(user, "deliveries")
    assert (row["event"], row["run_id"], row["attempts"], row["response_code"]) == ("run.failed", run_id, 2, 200)
    assert row["target"] == f"http://127.0.0.1:{receiver.port}/…"
    assert TOKEN not in str(row)
    await user.should_see(f"http://127.0.0.1:{receiver.port}/… (webhook)")  # the configured targets
    await user.should_not_see(TOKEN)
