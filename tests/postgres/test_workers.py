"""Several `main.py worker` processes and a dashboard (`serve --no-engine`) on one PostgreSQL database:
a worker killed or frozen mid-load loses its runs to the others, nothing that completed runs again, and
what was in flight on it runs at most twice."""

from __future__ import annotations

import signal
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.integration.served import Server, Workspace, every_minute
from tests.postgres.cluster import COUNTING_STEPS, Worker, chain, dump, eventually, executions

STEPS = 10
# Real processes side by side on a shared machine: each start is seconds of imports, more when it is busy.
pytestmark = pytest.mark.timeout(600)
START_WAIT_S = 240.0
# Short leases so that a lost worker is noticed in seconds; a sweep every second on the leader.
FAST = {
    "STEPDECK_HEARTBEAT_INTERVAL_S": "1",
    "STEPDECK_STALE_AFTER_S": "6",
    "STEPDECK_SWEEP_INTERVAL_S": "1",
    "STEPDECK_POLL_INTERVAL_S": "0.2",
    "STEPDECK_ON_ORPHAN": "resume",
}


def workspace(tmp_path: Path, steps: int, sleep_s: float) -> Workspace:
    count_file = tmp_path / "executions.txt"
    ws = Workspace(
        tmp_path,
        workflows={"chain": chain("chain", steps, sleep_s)},
        modules={"counting": COUNTING_STEPS},
        env={**FAST, "COUNT_FILE": str(count_file)},
    )
    ws.migrate_for_serve()
    return ws


def start_all(workers: list[Worker], dashboard: Server | None = None) -> list[str]:
    """Start the processes side by side (each start is mostly imports); the workers' ids."""
    with ThreadPoolExecutor(len(workers) + 1) as pool:
        started = pool.submit(dashboard.start, START_WAIT_S) if dashboard is not None else None
        ids = list(pool.map(lambda w: w.start(START_WAIT_S), workers))
        if started is not None:
            started.result()
    return ids


def stop_all(workers: list[Worker], dashboard: Server | None = None) -> None:
    with ThreadPoolExecutor(len(workers) + 1) as pool:
        stopped = [pool.submit(w.stop) for w in workers]
        if dashboard is not None:
            stopped.append(pool.submit(dashboard.close))
        for f in stopped:
            f.result()


def completed_steps(ws: Workspace) -> int:
    n: int = ws.sql("SELECT count(*) AS n FROM steps WHERE status = 'completed'")[0]["n"]
    return n


def running_attempts(ws: Workspace, owner: str) -> set[tuple[int, str, int]]:
    rows = ws.sql(
        "SELECT a.run_id, s.key, a.id FROM attempts a JOIN steps s ON s.id = a.step_id"
        " WHERE a.owner = ? AND a.status = 'running'",
        (owner,),
    )
    return {(r["run_id"], r["key"], r["id"]) for r in rows}


def frozen_with_attempts_in_flight(ws: Workspace, worker: Worker, worker_id: str) -> set[tuple[int, str, int]]:
    """Stop the worker (SIGSTOP) at a moment it holds running attempts; those attempts.

    Checking and then signalling would race: the attempts seen can finish before the signal lands. A
    stopped process sends nothing more, so what the database shows once the stop has settled is what stays
    in flight; when that is nothing, the worker is let go on and stopped again a moment later.
    """
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        worker.signal(signal.SIGSTOP)
        time.sleep(0.3)  # a statement already on its way to the server lands before the look
        in_flight = running_attempts(ws, worker_id)
        if in_flight:
            return in_flight
        worker.signal(signal.SIGCONT)
        time.sleep(0.05)
    raise AssertionError(f"{worker.name} was never stopped with an attempt in flight:\n{worker.log_tail()}")


def all_completed(ws: Workspace, runs: int) -> bool:
    done: int = ws.sql("SELECT count(*) AS n FROM runs WHERE status = 'completed'")[0]["n"]
    return done == runs


def assert_each_step_completed_once(ws: Workspace, runs: int, steps: int) -> None:
    statuses = Counter(r["status"] for r in ws.sql("SELECT status FROM runs"))
    assert statuses == {"completed": runs}, statuses
    done = ws.sql(
        "SELECT step_id, count(*) AS n FROM attempts WHERE status = 'completed' GROUP BY step_id HAVING count(*) <> 1"
    )
    assert done == [], done
    assert completed_steps(ws) == runs * steps


def assert_check_is_clean(ws: Workspace) -> None:
    done = ws.cli("check", timeout_s=240)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "no problems found" in done.stdout


# Who the workers look like: each its own process on this host; two containers with one host name and
# pid 1 each (only the worker id tells them apart); the one killed on another host (its pid means
# nothing here, so only its lease can tell that it died).
IDENTITIES: dict[str, Callable[[int], dict[str, str]]] = {
    "own": lambda i: {},
    "one-host-and-pid": lambda i: {"STEPDECK_SIMULATE_HOST_PID": "box:1"},
    "killed-on-another-host": lambda i: {"STEPDECK_SIMULATE_HOST_PID": "far-away:4242"} if i == 0 else {},
}


@pytest.mark.parametrize(
    ("workers", "runs", "identities"),
    [(3, 100, "own"), (2, 30, "one-host-and-pid"), (2, 30, "killed-on-another-host")],
    ids=["three-workers-100-runs", "two-workers-one-host-and-pid", "two-workers-killed-one-on-another-host"],
)
def test_a_worker_killed_mid_load_loses_only_its_steps_in_flight(
    tmp_path: Path, workers: int, runs: int, identities: str
) -> None:
    ws = workspace(tmp_path, STEPS, sleep_s=0.05)
    identity = IDENTITIES[identities]
    pool = [Worker(ws, f"worker-{i}", concurrency=4, env=identity(i)) for i in range(workers)]
    dashboard = Server(ws, extra_args=["--no-engine"], log_name="dashboard.log")
    restarted: Worker | None = None

    def logs() -> str:
        return "\n".join(f"--- {w.name}\n{w.log_tail(40)}" for w in [*pool, *([restarted] if restarted else [])])

    try:
        ids = start_all(pool, dashboard)
        rows = {
            r["id"]: (r["host"], r["pid"])
            for r in ws.sql("SELECT id, host, pid FROM workers WHERE id = ANY(?)", (ids,))
        }
        if identities == "one-host-and-pid":
            assert set(rows.values()) == {("box", 1)} and len(rows) == workers
        elif identities == "killed-on-another-host":
            assert rows[ids[0]] == ("far-away", 4242) and rows[ids[1]] != ("far-away", 4242)
        run_ids = [dashboard.start_run("chain") for _ in range(runs)]
        victim, victim_id = pool[0], ids[0]
        # Mid-load: a fifth of the steps done, and the victim executing some.
        eventually(
            "the victim executes steps mid-load",
            lambda: completed_steps(ws) >= runs * STEPS // 5 and bool(running_attempts(ws, victim_id)),
            timeout_s=180,
            logs=logs,
        )
        in_flight = frozen_with_attempts_in_flight(ws, victim, victim_id)
        victim.kill()  # stopped, it wrote nothing more: what was in flight stays as it was
        assert 1 <= len(in_flight) <= victim.concurrency
        restarted = Worker(ws, "worker-0-restarted", concurrency=4, env=identity(0))
        new_id = restarted.start(START_WAIT_S)
        assert new_id != victim_id

        eventually("every run completes", lambda: all_completed(ws, runs), timeout_s=300, logs=logs)

        assert_each_step_completed_once(ws, runs, STEPS)
        counts = executions(tmp_path / "executions.txt")
        assert set(counts) == {(r, f"s{i}") for r in run_ids for i in range(STEPS)}
        twice = {step for step, n in counts.items() if n > 1}
        assert all(counts[step] == 2 for step in twice), counts.most_common(5)
        # Only what was in flight on the killed worker ran again, and those attempts were failed by the
        # recovery, naming the lease that ended.
        assert twice <= {(run_id, key) for run_id, key, _ in in_flight}
        failed = ws.sql("SELECT id, status, error FROM attempts WHERE id = ANY(?)", ([a for _, _, a in in_flight],))
        assert all(r["status"] == "failed" and "lease" in (r["error"] or "") for r in failed), failed
        requeued = ws.sql(
            "SELECT count(*) AS n FROM events WHERE kind = 'run' AND from_status = 'running' AND to_status = 'queued'"
            " AND message LIKE '%lease%'"
        )[0]["n"]
        assert requeued >= 1
        assert_check_is_clean(ws)
    finally:
        stop_all([*pool, *([restarted] if restarted else [])], dashboard)


def test_a_worker_frozen_past_its_lease_loses_its_runs_and_writes_nothing_when_it_wakes(tmp_path: Path) -> None:
    runs, steps = 8, 3
    ws = workspace(tmp_path, steps, sleep_s=1.0)
    frozen, other = Worker(ws, "frozen", concurrency=4), Worker(ws, "other", concurrency=4)
    dashboard = Server(ws, extra_args=["--no-engine"], log_name="dashboard.log")

    def logs() -> str:
        return (
            f"--- frozen\n{frozen.log_tail(60)}\n--- other\n{other.log_tail(60)}\n{dump(ws, 'SELECT * FROM workers')}"
        )

    try:
        frozen_id = start_all([frozen], dashboard)[0]
        for _ in range(runs):
            dashboard.start_run("chain")
        eventually("the frozen worker executes steps", lambda: bool(running_attempts(ws, frozen_id)), 120, logs)
        in_flight = frozen_with_attempts_in_flight(ws, frozen, frozen_id)
        other.start(START_WAIT_S)

        # Its lease runs out; its runs are re-queued and the other worker completes them all.
        eventually("every run completes without the frozen worker", lambda: all_completed(ws, runs), 240, logs)
        assert_each_step_completed_once(ws, runs, steps)
        before = ws.sql("SELECT id, status, finished_at, error FROM attempts ORDER BY id")
        runs_before = ws.sql("SELECT id, status, owner, finished_at FROM runs ORDER BY id")

        frozen.signal(signal.SIGCONT)
        # It finds its lease gone, stops what it was doing and registers under a new id.
        again = frozen.wait_healthy(wait_s=120, other_than=frozen_id)
        assert again != frozen_id
        assert "stops its" in frozen.log_text() and "without writing" in frozen.log_text()
        # Its in-flight steps return now: their results are recorded as late results, nothing else.
        keys = {(run_id, key) for run_id, key, _ in in_flight}
        eventually(
            "the woken worker's results are recorded as late results",
            lambda: (
                keys
                <= {
                    (r["run_id"], r["step_key"])
                    for r in ws.sql("SELECT run_id, step_key FROM events WHERE kind = 'late_result'")
                }
            ),
            timeout_s=60,
            logs=logs,
        )
        assert ws.sql("SELECT id, status, finished_at, error FROM attempts ORDER BY id") == before
        assert ws.sql("SELECT id, status, owner, finished_at FROM runs ORDER BY id") == runs_before
        assert (
            ws.sql("SELECT count(*) AS n FROM attempts WHERE owner = ? AND status = 'completed'", (again,))[0]["n"] == 0
        )
        assert_check_is_clean(ws)
    finally:
        stop_all([frozen, other], dashboard)


def test_cron_with_its_leader_killed_still_fires_the_next_time_once(tmp_path: Path) -> None:
    ws = Workspace(tmp_path, workflows={"tick": every_minute()}, env=FAST)
    ws.migrate_for_serve()
    pool = [Worker(ws, f"worker-{i}", concurrency=2) for i in range(3)]

    def logs() -> str:
        return "\n".join(f"--- {w.name}\n{w.log_tail(30)}" for w in pool)

    def leader() -> str | None:
        rows = ws.sql("SELECT holder FROM leases WHERE name = 'leader' AND lease_until > now()")
        return rows[0]["holder"] if rows else None

    try:
        ids = start_all(pool)
        eventually("a worker leads", lambda: leader() in ids, 60, logs)
        first = leader()
        assert first is not None
        killed = pool[ids.index(first)]
        killed.kill()
        killed_at = ws.sql("SELECT now() AS t")[0]["t"]
        survivors = [w for w in pool if w is not killed]

        def fired_after_kill() -> list[dict[str, object]]:
            return ws.sql(
                "SELECT fire_time, outcome, run_id FROM schedule_fires WHERE fire_time > ? ORDER BY fire_time",
                (killed_at,),
            )

        def started_after_kill() -> list[dict[str, object]]:
            return [f for f in fired_after_kill() if f["outcome"] == "started"]

        eventually("a fire time after the kill starts a run", lambda: bool(started_after_kill()), 150, logs)
        eventually("a survivor leads", lambda: leader() in {i for i in ids if i != first}, 30, logs)
        fire = started_after_kill()[0]
        assert fire["run_id"] is not None
        # On a loaded machine the takeover can outlast a minute: the fire times it passed are recorded as
        # missed (the schedule's `skip`), never started late, and the next one is started.
        before = [f for f in fired_after_kill() if f["fire_time"] < fire["fire_time"]]  # type: ignore[operator]
        assert all(f["outcome"] == "missed" for f in before), before
        runs = ws.sql("SELECT count(*) AS n FROM runs WHERE scheduled_for = ?", (fire["fire_time"],))[0]["n"]
        assert runs == 1
        # Only the new leader fired it: no other process even tried (the unique key would have refused it).
        texts = [w.log_text() for w in survivors]
        assert sum("already recorded" in t for t in texts) == 0, logs()
        assert sum("fired for" in t or "caught up" in t for t in texts) == 1, logs()
    finally:
        stop_all(pool)


def test_worker_refuses_a_database_that_was_not_migrated(tmp_path: Path) -> None:
    ws = Workspace(tmp_path, bundled=True)
    done = ws.cli("worker", timeout_s=240)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "the database schema is not up to date" in done.stderr
    assert ws.tables() == set()


def test_a_worker_stops_cleanly_on_sigterm_and_leaves_no_lease(tmp_path: Path) -> None:
    ws = workspace(tmp_path, 2, sleep_s=0.01)
    worker = Worker(ws, "worker")
    try:
        worker_id = worker.start(START_WAIT_S)
        assert ws.sql("SELECT id FROM workers WHERE lease_until > now()") == [{"id": worker_id}]
        started = time.monotonic()
        assert worker.stop() == 0
        assert time.monotonic() - started < 30
        assert ws.sql("SELECT id FROM workers") == []
        assert ws.sql("SELECT holder FROM leases WHERE lease_until > now()") == []
    finally:
        worker.stop()
