"""Every log line of an attempt carries the time it was written: stored with the attempt (epoch
milliseconds beside its lines), read back by the read model and the attempts list, and sent with the
live log notice. Attempts stored before times were kept show their lines without times.

On a real SQLite file (or PostgreSQL, `STEPDECK_TEST_DB=postgres`) with a running engine."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from engine import operations
from engine.db import current
from engine.db.base import Stmt
from engine.engine import Engine
from engine.hub import Change, ChangeKind
from engine.registry import Registry
from engine.settings import Settings
from engine.store import fetch, run_batch
from tests import stepfns
from tests.conftest import attempts_of, engine_running, run_to_end, step_of, wait_for, wait_run

Define = Callable[..., Any]
LINES = ["first", "second", "third"]
STEP_FNS = ["tests.stepfns:timed_logs", "tests.stepfns:timed_logs_async"]

pytestmark = pytest.mark.usefixtures("audit_clean")


@pytest.fixture
def log_notices() -> Iterator[list[Change]]:
    """The log notices published on the hub during the test."""
    seen: list[Change] = []
    remove = current().hub.add_listener(lambda c: seen.append(c) if c.kind == ChangeKind.LOG else None)
    yield seen
    remove()


def _stored(value: Any) -> Any:
    return json.loads(value) if isinstance(value, (str, bytes)) else value


def _as_dt(value: Any) -> datetime:
    dt = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def _ms(dt: datetime) -> int:
    """Epoch milliseconds of `dt`, rounded down like the times of log lines."""
    return int((dt - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1))


async def _attempt_row(run_id: int) -> dict[str, Any]:
    [row] = await fetch(
        "SELECT a.status, a.logs, a.log_times, a.started_at, a.finished_at FROM attempts a WHERE a.run_id = ?",
        (run_id,),
    )
    return row


def _assert_times_of_the_lines(row: dict[str, Any]) -> list[int]:
    """The stored times: one per line, in the order written, within the attempt, the gap the step made."""
    assert _stored(row["logs"]) == LINES
    times = _stored(row["log_times"])
    assert isinstance(times, list) and len(times) == len(LINES), times
    assert all(isinstance(t, int) for t in times), times
    assert times == sorted(times)
    assert times[1] - times[0] >= stepfns.LOG_GAP_S * 1000  # each line has its own time, not the write's
    assert _ms(_as_dt(row["started_at"])) <= times[0]
    assert times[-1] <= _ms(_as_dt(row["finished_at"]))
    return list(times)


@pytest.mark.parametrize("call", STEP_FNS)
async def test_each_log_line_is_stored_with_the_time_it_was_written(
    engine: Engine, define: Define, log_notices: list[Change], call: str, registry: Registry
) -> None:
    define("timed", [{"key": "t", "call": call}])
    run_id = await run_to_end(registry.get("timed"), "completed")
    row = await _attempt_row(run_id)
    assert row["status"] == "completed"
    times = _assert_times_of_the_lines(row)
    [run] = await fetch("SELECT started_at, finished_at FROM runs WHERE id = ?", (run_id,))
    assert _ms(_as_dt(run["started_at"])) <= times[0] and times[-1] <= _ms(_as_dt(run["finished_at"]))

    # The read model (the API's step) and the attempts list give them as ISO times, index for index.
    iso = [datetime.fromtimestamp(t / 1000, UTC).isoformat(timespec="milliseconds") for t in times]
    step = await step_of(run_id, "t")
    assert (step["logs"], step["log_times"]) == (LINES, iso)
    [attempt] = await attempts_of(run_id, "t")
    assert (attempt["logs"], attempt["log_times"]) == (LINES, iso)

    # Viewers got each line live with the same time.
    live = [(c.line, c.at) for c in log_notices if c.run_id == run_id]
    assert live == list(zip(LINES, iso, strict=True))


@pytest.mark.parametrize("call", STEP_FNS)
async def test_a_failed_attempt_keeps_the_times_of_its_lines(
    engine: Engine, define: Define, call: str, registry: Registry
) -> None:
    define("timed-fail", [{"key": "t", "call": call}], inputs={"fail": {"type": "boolean", "default": True}})
    run_id = await run_to_end(registry.get("timed-fail"), "failed")
    row = await _attempt_row(run_id)
    assert row["status"] == "failed"
    _assert_times_of_the_lines(row)


async def test_a_cancelled_attempt_keeps_the_times_of_its_lines(
    settings: Settings, define: Define, registry: Registry
) -> None:
    stepfns.reset()
    define("timed-cancel", [{"key": "slow", "call": "tests.stepfns:sleepy"}])
    async with engine_running(settings):
        run_id = await operations.start_run(registry.get("timed-cancel"), {}, "tester")
        await wait_for(lambda: _calls("sleepy"), 5, "sleepy to start")
        await operations.cancel_run(run_id, "tester")
        assert await wait_run(run_id, "cancelled") == "cancelled"

        async def kept() -> dict[str, Any] | None:
            row = await _attempt_row(run_id)
            return row if _stored(row["logs"]) == ["going to sleep"] else None

        row = await wait_for(kept, 10, "the cancelled attempt's log")
    times = _stored(row["log_times"])
    assert isinstance(times, list) and len(times) == 1 and isinstance(times[0], int), times
    assert _ms(_as_dt(row["started_at"])) <= times[0] <= _ms(_as_dt(row["finished_at"]))


async def _calls(name: str) -> bool:
    return stepfns.CALLS[name] >= 1


async def test_lines_of_an_attempt_stored_without_times_are_shown_without_times(
    engine: Engine, define: Define, registry: Registry
) -> None:
    define("timed-old", [{"key": "t", "call": "tests.stepfns:timed_logs"}])
    run_id = await run_to_end(registry.get("timed-old"), "completed")
    # What an attempt made before times were kept looks like (the column the migration added is null).
    await run_batch([Stmt("UPDATE attempts SET log_times = NULL WHERE run_id = ?", (run_id,))])
    step = await step_of(run_id, "t")
    assert (step["logs"], step["log_times"]) == (LINES, [None, None, None])
    [attempt] = await attempts_of(run_id, "t")
    assert (attempt["logs"], attempt["log_times"]) == (LINES, [None, None, None])
