"""Two real servers (`main.py serve`) with their own schedulers on one SQLite database, over a minute boundary.

The servers' clocks (and the test's reading of them) are shifted to ten seconds before a minute, so the
boundary comes soon after they are up rather than 30 s later on average. The fast cross-process check of
the same guarantee is in test_schedules.py.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.integration.served import Server, Workspace, every_minute, shifted_clock

DOWN_FOR = timedelta(minutes=5)
LEAD_S = 20  # how long before a minute boundary the servers' clocks start: time enough for both to come up


def shift_to_before_a_minute() -> int:
    """Seconds to add to the host's clock to land `LEAD_S` seconds before a minute boundary."""
    return (60 - LEAD_S - datetime.now(UTC).second) % 60


def minute(when: datetime) -> datetime:
    return when.replace(second=0, microsecond=0)


def fire_times(ws: Workspace) -> list[tuple[datetime, str, int | None]]:
    rows = ws.sql("SELECT fire_time, outcome, run_id FROM schedule_fires WHERE workflow = 'tick' ORDER BY fire_time")
    return [(_when(r["fire_time"]), r["outcome"], r["run_id"]) for r in rows]


def _when(value: str | datetime) -> datetime:
    """A stored time as read back: text on SQLite, a timestamp on PostgreSQL."""
    return value if isinstance(value, datetime) else datetime.fromisoformat(value)


@pytest.mark.sqlite_only  # every server fires; on PostgreSQL the leader alone (tests/postgres/test_workers.py)
def test_two_servers_on_one_database_start_one_run_per_fire_time(tmp_path: Path) -> None:
    ws = Workspace(tmp_path, workflows={"tick": every_minute(catch_up="once")})
    migrated = ws.cli("migrate")
    assert migrated.returncode == 0, migrated.stderr
    shift = shift_to_before_a_minute()
    ws.env.update(shifted_clock(f"+{shift}"))

    def now() -> datetime:  # the time as the servers see it
        return datetime.now(UTC) + timedelta(seconds=shift)

    # The schedule has been known for a while and no server ran: both servers catch up on startup, at once.
    seen = minute(now() - DOWN_FOR) + timedelta(seconds=1)
    ws.sql(
        "INSERT INTO schedule_states (workflow, name, paused, first_seen_at, updated_at) VALUES (?, ?, FALSE, ?, ?)",
        ("tick", "minutely", seen.isoformat(" "), seen.isoformat(" ")),
    )
    servers = [Server(ws, log_name=f"server-{i}.log") for i in range(2)]
    try:
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(lambda s: s.start(), servers))
        up = now()
        boundary = minute(up) + timedelta(minutes=1)  # both schedulers are running before it

        deadline = time.monotonic() + (boundary - up).total_seconds() + 20
        while time.monotonic() < deadline and not any(f[0] == boundary for f in fire_times(ws)):
            time.sleep(0.2)
        time.sleep(1.0)  # a late second firing would land now

        runs = ws.sql("SELECT id, actor, schedule, scheduled_for FROM runs WHERE workflow = 'tick' ORDER BY id")
        logs = "\n".join(s.log_tail(40) for s in servers)
        by_time = [_when(r["scheduled_for"]) for r in runs]
        assert len(by_time) == len(set(by_time)), f"a fire time ran twice: {runs}\n{logs}"
        assert boundary in by_time, f"no run for {boundary}: {runs}\n{logs}"
        assert {(r["actor"], r["schedule"]) for r in runs} == {("schedule:minutely", "minutely")}

        # Every fire time since the schedule appeared is recorded exactly once: the latest one before the
        # servers came up was run (catch_up: once), earlier ones missed, the ones after it fired.
        recorded = fire_times(ws)
        times = [f[0] for f in recorded]
        assert times == sorted(set(times))
        expected = [
            minute(seen) + timedelta(minutes=n) for n in range(1, int((boundary - seen).total_seconds() // 60) + 1)
        ]
        assert times[: len(expected)] == expected, f"{recorded}\n{logs}"
        until_up = [f for f in recorded if f[0] <= minute(up)]
        assert until_up[-1][1] == "started", recorded  # caught up on the latest (or fired, on a boundary)
        assert [f[1] for f in until_up].count("started") in (1, 2), recorded  # 2: a minute passed in startup
        assert all(f[1] == "missed" for f in until_up[:-2]), recorded

        # Both schedulers fired at the boundary: one started the run, the other found it recorded.
        stamp = f"fired for {boundary.isoformat()}"
        outcomes = sorted(
            line.split(": ", 2)[-1] for s in servers for line in s.log_text().splitlines() if stamp in line
        )
        assert len(outcomes) == 2, f"expected both servers to fire for {boundary}:\n{logs}"
        assert outcomes[0].startswith("already recorded") and outcomes[1].startswith("run "), outcomes

        run_id = next(r["id"] for r in runs if _when(r["scheduled_for"]) == boundary)
        done = servers[1].wait_run(run_id, "completed")
        assert done["inputs"] == {"who": "the schedule"}
        for server in servers:
            assert "Traceback" not in server.log_text(), server.log_tail(80)
    finally:
        for server in servers:
            server.close()
