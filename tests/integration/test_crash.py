"""Crash safety with real processes: kill -9 and restart, a frozen owner and the sweep, a healthy long
step, timeouts, cancellation, concurrent requests, viewers that leave, graceful shutdown.

Each test drives `main.py serve` on its own temporary SQLite file through the JSON API, and ends by
stopping the server and running `main.py check` (no impossible state left behind). Steps live in a
workflows-directory module; they block on gate files (the server is another process) and append one
line per call to a calls file, so a test can count executions from outside.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from tests.integration.served import Server, Workspace, serving
from tests.integration.test_processes import sse_frames

T = TypeVar("T")

STEPS_MODULE = '''
import pathlib
import time


def _dir(ctx):
    return pathlib.Path(ctx.inputs["dir"])


def _count(ctx):
    with open(_dir(ctx) / f"calls-{ctx.run_id}-{ctx.step_key}", "a") as f:
        f.write(f"{ctx.attempt}\\n")


def quick(ctx):
    """Returns at once; the output is unique per execution (a re-execution would show)."""
    _count(ctx)
    return f"{ctx.step_key} of run {ctx.run_id} at {time.time_ns()}"


def gated(ctx):
    """Blocks its thread until DIR/gate-<step key> exists; notes (in a file) when told it was cancelled."""
    _count(ctx)
    gate = _dir(ctx) / f"gate-{ctx.step_key}"
    deadline = time.monotonic() + 60
    while not gate.exists():
        if ctx.is_cancelled:
            (_dir(ctx) / f"told-{ctx.run_id}-{ctx.step_key}-{ctx.attempt}").write_text("told")
            return "noticed cancellation"
        if time.monotonic() > deadline:
            raise TimeoutError(f"gate {gate} was never opened")
        time.sleep(0.01)
    return f"{ctx.step_key} passed on attempt {ctx.attempt}"


def stubborn(ctx):
    """Like `gated`, but never looks at its context (a blocking call that cannot be interrupted)."""
    _count(ctx)
    gate = _dir(ctx) / f"gate-{ctx.step_key}"
    deadline = time.monotonic() + 60
    while not gate.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    return f"{ctx.step_key} passed on attempt {ctx.attempt}"


def sleeper(ctx):
    """One blocking call longer than the sweep threshold (a slow sync API call)."""
    _count(ctx)
    time.sleep(float(ctx.inputs["sleep_s"]))
    return f"slept {ctx.inputs['sleep_s']} s"


def chatty(ctx):
    """Logs and reports progress every few milliseconds until DIR/gate-<step key> exists."""
    _count(ctx)
    gate = _dir(ctx) / f"gate-{ctx.step_key}"
    deadline = time.monotonic() + 60
    n = 0
    while not gate.exists() and time.monotonic() < deadline:
        n += 1
        ctx.log(f"line {n}")
        ctx.progress(min(n / 1000, 0.99), f"line {n}")
        time.sleep(0.005)
    return f"said {n} lines"
'''


def quick_around(name: str, middle: str) -> str:
    """A workflow of three steps in a row: `first` and `last` quick, and `wait` calling crashsteps:`middle`, the step
    the crash tests stop or kill the server in."""
    return f"""
        name: {name}
        inputs:
          dir: string
        steps:
          - key: first
            call: crashsteps:quick
          - key: wait
            call: crashsteps:{middle}
          - key: last
            call: crashsteps:quick
        """


WORKFLOWS = {
    "crash-chain": quick_around("crash-chain", "gated"),
    "crash-stubborn": quick_around("crash-stubborn", "stubborn"),
    "crash-block": """
        name: crash-block
        inputs:
          dir: string
        steps:
          - key: nap
            call: crashsteps:stubborn
          - key: after
            call: crashsteps:quick
        """,
    "crash-hang": """
        name: crash-hang
        inputs:
          dir: string
        steps:
          - key: hang
            call: crashsteps:gated
            timeout_s: 1
          - key: after
            call: crashsteps:quick
        """,
    "crash-drain": """
        name: crash-drain
        inputs:
          dir: string
          sleep_s: number
        steps:
          - key: first
            call: crashsteps:quick
          - key: slow
            call: crashsteps:sleeper
          - key: last
            call: crashsteps:quick
        """,
    "crash-chatty": """
        name: crash-chatty
        inputs:
          dir: string
        steps:
          - key: talk
            call: crashsteps:chatty
          - key: after
            call: crashsteps:quick
        """,
}

# Short intervals so that liveness is visible within a test; a short grace so that stopping a
# server with a blocked step does not wait 5 s (the graceful-shutdown test sets its own).
FAST = {
    "STEPDECK_HEARTBEAT_INTERVAL_S": "0.3",
    "STEPDECK_STALE_AFTER_S": "3",
    "STEPDECK_SWEEP_INTERVAL_S": "1",
    "STEPDECK_POLL_INTERVAL_S": "0.2",
    "STEPDECK_SHUTDOWN_GRACE_S": "0.5",
}
ACTIVE_RUN = {"queued", "running"}


def workspace(directory: Path, **env: str) -> Workspace:
    return Workspace(directory, WORKFLOWS, {"crashsteps": STEPS_MODULE}, env={**FAST, **env})


def new_dir(tmp_path: Path, name: str) -> Path:
    """A directory for gates and call counts (the `dir` input of a run)."""
    d = tmp_path / name
    d.mkdir()
    return d


def open_gate(d: Path, key: str) -> None:
    (d / f"gate-{key}").write_text("open")


def calls(d: Path, run_id: int, key: str) -> list[int]:
    """The attempt numbers with which the step function was called, in call order."""
    path = d / f"calls-{run_id}-{key}"
    return [int(n) for n in path.read_text().split()] if path.exists() else []


def step_of(run: dict[str, Any], key: str) -> dict[str, Any]:
    return next(s for s in run["steps"] if s["key"] == key)


def poll(what: str, probe: Callable[[], T | None], timeout_s: float, interval_s: float = 0.05) -> T:
    """The first truthy result of `probe`; fails naming `what` and the last result after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    last: T | None = None
    while True:
        last = probe()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout_s} s (last seen: {last!r})")
        time.sleep(interval_s)


def all_runs(server: Server) -> list[dict[str, Any]]:
    """Every run in full (steps with their outputs and errors), as `GET /api/runs/{id}` shows it."""
    r = server.client.get("/api/runs", params={"limit": 200})
    assert r.status_code == 200, r.text
    runs: list[dict[str, Any]] = []
    for summary in r.json():
        detail = server.client.get(f"/api/runs/{summary['id']}")
        assert detail.status_code == 200, detail.text
        runs.append(detail.json())
    return runs


def attempts(server: Server, run_id: int, key: str | None = None) -> list[dict[str, Any]]:
    r = server.client.get(f"/api/runs/{run_id}/attempts")
    assert r.status_code == 200, r.text
    return [a for a in r.json() if key is None or a["step"] == key]


def events(server: Server, run_id: int) -> list[dict[str, Any]]:
    r = server.client.get(f"/api/runs/{run_id}/events", params={"follow": "false"})
    assert r.status_code == 200, r.text
    found: list[dict[str, Any]] = r.json()
    return found


def stop_and_check(server: Server, ws: Workspace) -> None:
    """Stop the server (SIGTERM) and audit the database it leaves."""
    code = server.stop(signal.SIGTERM, timeout_s=15)
    assert code is not None, f"the server ignored SIGTERM for 15 s:\n{server.log_tail()}"
    check = ws.cli("check")
    assert check.returncode == 0, check.stdout + check.stderr
    assert "no problems found" in check.stdout, check.stdout


def check_database(ws: Workspace) -> None:
    check = ws.cli("check")
    assert check.returncode == 0, check.stdout + check.stderr


@contextlib.contextmanager
def launched(ws: Workspace, log_name: str) -> Iterator[tuple[Server, float]]:
    """Like `serving`, also yielding the monotonic time taken just before the process was started."""
    server = Server(ws, log_name=log_name)
    started = time.monotonic()
    try:
        server.start()
        yield server, started
    except BaseException:
        print(f"--- log of main.py serve on port {server.port} ---\n{server.log_tail(200)}", file=sys.stderr)
        raise
    finally:
        server.close()


def fire(server: Server, requests: list[tuple[str, str]]) -> list[tuple[str, int, dict[str, Any]]]:
    """POST every (label, path) at once, one thread and connection each; returns (label, status, body)."""
    barrier = threading.Barrier(len(requests))
    results: list[tuple[str, int, dict[str, Any]] | None] = [None] * len(requests)
    failures: list[BaseException] = []

    def one(i: int, label: str, path: str) -> None:
        try:
            with httpx.Client(base_url=server.base_url, timeout=30) as client:
                barrier.wait(timeout=10)
                r = client.post(path)
                results[i] = (label, r.status_code, r.json())
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=one, args=(i, *req)) for i, req in enumerate(requests)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not failures, failures
    done = [r for r in results if r is not None]
    assert len(done) == len(requests), results
    return done


# --- kill -9 with 20 runs mid-step, then restart ----------------------------------------------------


def start_blocked_runs(server: Server, d: Path, n: int) -> dict[int, dict[str, Any]]:
    """`n` runs of crash-chain, each past `first` and blocked in `wait`; returns them (as the API shows) by id."""
    ids = {server.start_run("crash-chain", {"dir": str(d)}) for _ in range(n)}

    def blocked(run: dict[str, Any]) -> bool:
        first, wait = step_of(run, "first"), step_of(run, "wait")
        return bool(run["status"] == "running" and first["status"] == "completed" and wait["status"] == "running")

    def all_blocked() -> dict[int, dict[str, Any]] | None:
        by_id = {r["id"]: r for r in all_runs(server) if r["id"] in ids}
        return by_id if len(by_id) == n and all(blocked(r) for r in by_id.values()) else None

    return poll(f"{n} runs blocked in step 'wait'", all_blocked, timeout_s=20)


def kill_hard(server: Server) -> str:
    """SIGKILL the server; returns the owner id its running runs recorded."""
    owners = {r["owner"] for r in server.ws.sql("SELECT owner FROM runs WHERE status = 'running'")}
    assert server.stop(signal.SIGKILL) == -signal.SIGKILL
    assert len(owners) == 1, owners
    owner = owners.pop()
    assert owner, "a running run must record its owner"
    return str(owner)


@pytest.mark.sqlite_only  # liveness by process and heartbeat; on PostgreSQL by lease (tests/postgres/test_workers.py)
def test_kill9_with_20_runs_mid_step_then_restart_fails_them_at_startup_saying_why(tmp_path: Path) -> None:
    ws = workspace(tmp_path / "ws")
    d = new_dir(tmp_path, "d")
    with serving(ws, log_name="before.log") as server:
        before = start_blocked_runs(server, d, 20)
        old_owner = kill_hard(server)
    assert {r["status"] for r in ws.sql("SELECT status FROM runs")} == {"running"}  # what the kill left

    with launched(ws, "after.log") as (server, _):  # how soon is a speed (bench), not a verdict

        def settled() -> list[dict[str, Any]] | None:
            runs = all_runs(server)
            active = [r for r in runs if r["status"] in ACTIVE_RUN]
            running = [s for r in runs for s in r["steps"] if s["status"] == "running"]
            return runs if runs and not active and not running else None

        runs = poll("no run or step active after the restart", settled, timeout_s=30, interval_s=0.02)

        after = {r["id"]: r for r in runs}
        assert set(after) == set(before)
        for run_id, run in after.items():
            assert run["status"] == "failed", (run_id, run["status"], run["error"])
            error = run["error"] or ""
            # Failed at start-up as the dead previous server's runs, not later as stale by the sweep.
            assert error.startswith("interrupted: the server stopped"), error
            assert "'wait'" in error, f"the reason should name the step that was running: {error!r}"
            assert "last heartbeat" in error, error
            assert old_owner in error, f"the reason should name the previous owner {old_owner!r}: {error!r}"
            assert "object at 0x" not in error
            # what completed before the kill is intact, and was not executed again
            first = step_of(run, "first")
            assert (first["status"], first["attempt"]) == ("completed", 1)
            assert first["output"] == step_of(before[run_id], "first")["output"]
            assert calls(d, run_id, "first") == [1]
            assert (step_of(run, "wait")["status"], step_of(run, "last")["status"]) == ("failed", "pending")
            history = [(a["step"], a["number"], a["status"]) for a in attempts(server, run_id)]
            assert history == [("first", 1, "completed"), ("wait", 1, "failed")], (run_id, history)
            assert calls(d, run_id, "last") == []
        stop_and_check(server, ws)


@pytest.mark.sqlite_only  # liveness by process and heartbeat; on PostgreSQL by lease (tests/postgres/test_workers.py)
def test_kill9_with_20_runs_mid_step_then_restart_under_resume_completes_them_all(tmp_path: Path) -> None:
    ws = workspace(tmp_path / "ws", STEPDECK_ON_ORPHAN="resume")
    d = new_dir(tmp_path, "d")
    with serving(ws, log_name="before.log") as server:
        before = start_blocked_runs(server, d, 21)
        old_owner = kill_hard(server)
    # A 21st run that (as if by three earlier crashes) was already re-queued as often as allowed.
    capped = max(before)
    ws.sql("UPDATE runs SET recoveries = 3 WHERE id = ?", (capped,))
    open_gate(d, "wait")

    with serving(ws, log_name="after.log") as server:

        def finished() -> dict[int, dict[str, Any]] | None:
            runs = {r["id"]: r for r in all_runs(server)}
            return runs if runs and all(r["status"] not in ACTIVE_RUN for r in runs.values()) else None

        runs = poll("every run finished after the restart", finished, timeout_s=30)
        for run_id in sorted(set(before) - {capped}):
            run = runs[run_id]
            assert run["status"] == "completed", (run_id, run["status"], run["error"])
            assert run["recoveries"] == 1, run
            first, wait = step_of(run, "first"), step_of(run, "wait")
            assert first["output"] == step_of(before[run_id], "first")["output"], "completed before the kill: kept"
            assert calls(d, run_id, "first") == [1]
            assert (wait["attempt"], wait["output"]) == (2, "wait passed on attempt 2")
            assert calls(d, run_id, "wait") == [1, 2]
            history = [(a["step"], a["number"], a["status"], a["current"]) for a in attempts(server, run_id)]
            assert history == [
                ("first", 1, "completed", True),
                ("wait", 1, "failed", False),
                ("wait", 2, "completed", True),
                ("last", 1, "completed", True),
            ], (run_id, history)
            assert "interrupted" in (attempts(server, run_id, "wait")[0]["error"] or "")

        run = runs[capped]
        assert run["status"] == "failed", f"a run interrupted a 4th time must fail for good: {run['status']}"
        error = run["error"] or ""
        assert "interrupted" in error, error
        assert "'wait'" in error, error
        assert re.search(r"(?<![\w.:-])3(?![\w.:])", error.replace(old_owner, "")), f"should name the limit: {error!r}"
        assert (step_of(run, "wait")["status"], step_of(run, "wait")["attempt"]) == ("failed", 1)
        assert calls(d, capped, "wait") == [1]
        stop_and_check(server, ws)


# --- the sweep: never a healthy long step; always a frozen owner ---------------------------------------


def test_a_sync_step_blocking_past_stale_after_completes_and_the_sweep_fails_nothing(tmp_path: Path) -> None:
    """A sync step that blocks its thread (and never looks at its context) for longer than the stale
    threshold: heartbeats go on, the sweep leaves the run alone, and the step completes when it returns.
    It returns when the test opens its gate, after the sweep: how fast the machine is changes nothing."""
    stale_s = 2.0
    ws = workspace(
        tmp_path / "ws",
        STEPDECK_HEARTBEAT_INTERVAL_S="0.3",
        STEPDECK_STALE_AFTER_S=str(stale_s),
        STEPDECK_SWEEP_INTERVAL_S="0.5",
    )
    d = new_dir(tmp_path, "d")
    with serving(ws) as server:
        run_id = server.start_run("crash-block", {"dir": str(d)})
        server.wait_step(run_id, "nap", "running")
        time.sleep(stale_s + 0.5)  # past the threshold: a run whose heartbeat stalled would now look dead

        run = server.run(run_id)
        assert run["heartbeat_at"], run
        beat_age_s = (datetime.now(UTC) - datetime.fromisoformat(run["heartbeat_at"])).total_seconds()
        assert beat_age_s < stale_s, f"no heartbeat for {beat_age_s:.1f} s while a sync step blocks its thread"
        swept = ws.cli("sweep")
        assert swept.returncode == 0, swept.stdout + swept.stderr
        assert "0 orphaned run(s) failed" in swept.stdout, swept.stdout
        run = server.run(run_id)
        assert (run["status"], step_of(run, "nap")["status"]) == ("running", "running"), run["error"]
        assert calls(d, run_id, "nap") == [1]

        open_gate(d, "nap")
        run = server.wait_run(run_id, "completed", "failed", "cancelled", timeout_s=15)
        assert run["status"] == "completed", run["error"]
        nap = step_of(run, "nap")
        assert (nap["status"], nap["attempt"], nap["output"]) == ("completed", 1, "nap passed on attempt 1")
        assert calls(d, run_id, "nap") == [1]
        assert [e for e in events(server, run_id) if e["to_status"] == "failed"] == []
        stop_and_check(server, ws)


def test_sigstop_past_stale_after_then_sweep_fails_the_runs_and_late_results_are_discarded(tmp_path: Path) -> None:
    """Two runs of a frozen owner: `ready`'s step has its result the moment the process thaws; `slow`'s
    (which ignores its context, like a blocking call) returns a second after the thaw, once the engine has
    had time to see that its run was taken away. Both results are late: discarded, and recorded."""
    stale_s = 2.0
    ws = workspace(tmp_path / "ws", STEPDECK_HEARTBEAT_INTERVAL_S="0.3", STEPDECK_STALE_AFTER_S=str(stale_s))
    ready_dir, slow_dir = new_dir(tmp_path, "ready"), new_dir(tmp_path, "slow")
    with serving(ws) as server:
        ready = server.start_run("crash-chain", {"dir": str(ready_dir)})
        slow = server.start_run("crash-stubborn", {"dir": str(slow_dir)})
        server.wait_step(ready, "wait", "running")
        server.wait_step(slow, "wait", "running")
        assert server.proc is not None
        pid = server.proc.pid
        os.kill(pid, signal.SIGSTOP)
        try:
            time.sleep(stale_s + 0.5)  # frozen past the threshold: its heartbeat is now stale
            swept = ws.cli("sweep")
            assert swept.returncode == 0, swept.stdout + swept.stderr
            for run_id in (ready, slow):
                assert re.search(rf"^run {run_id}: failed, interrupted.*'wait'", swept.stdout, re.M), swept.stdout
            assert "2 orphaned run(s) failed" in swept.stdout, swept.stdout
            errors = {
                r["id"]: r["error"] for r in ws.sql("SELECT id, status, error FROM runs") if r["status"] == "failed"
            }
            assert set(errors) == {ready, slow}, ws.sql("SELECT id, status, error FROM runs")
            again = ws.cli("sweep")
            assert again.returncode == 0, again.stderr
            assert "0 orphaned run(s) failed" in again.stdout, again.stdout
            open_gate(ready_dir, "wait")  # this result is ready the moment the process thaws
        finally:
            os.kill(pid, signal.SIGCONT)
        time.sleep(1.0)  # only decides when `slow` returns (after ~3 heartbeats), not what must happen
        open_gate(slow_dir, "wait")

        for run_id, d in ((ready, ready_dir), (slow, slow_dir)):

            def late_results(run_id: int = run_id) -> list[dict[str, Any]]:
                return [e for e in events(server, run_id) if e["kind"] == "late_result"]

            try:
                late = poll(f"a late_result event of run {run_id}", late_results, timeout_s=5)
            except AssertionError as exc:
                seen = [(e["kind"], e["step"], e["to_status"], e["message"]) for e in events(server, run_id)]
                wait_attempts = attempts(server, run_id, "wait")
                raise AssertionError(
                    f"{exc}\nevents: {seen}\nattempts of wait: {wait_attempts}\nfiles: {sorted(os.listdir(d))}"
                ) from None
            assert [(e["step"], e["attempt"]) for e in late] == [("wait", 1)], late
            run = server.run(run_id)
            assert (run["status"], run["error"]) == ("failed", errors[run_id])
            assert [(s["key"], s["status"]) for s in run["steps"]] == [
                ("first", "completed"),
                ("wait", "failed"),
                ("last", "pending"),
            ]
            assert step_of(run, "wait")["output"] is None, "a discarded result must not become the step's output"
            history = [(a["step"], a["number"], a["status"]) for a in attempts(server, run_id)]
            assert history == [("first", 1, "completed"), ("wait", 1, "failed")]
            assert calls(d, run_id, "last") == []
        time.sleep(1.0)  # a few more heartbeats of the thawed server: it must not take a run back
        assert [server.run(r)["status"] for r in (ready, slow)] == ["failed", "failed"]
        assert server.client.get("/api/health").status_code == 200
        stop_and_check(server, ws)


# --- timeouts, cancellation, concurrent requests ------------------------------------------------------


def test_a_hanging_step_is_failed_by_its_timeout(tmp_path: Path) -> None:
    ws = workspace(tmp_path / "ws")
    d = new_dir(tmp_path, "d")
    with serving(ws) as server:
        run_id = server.start_run("crash-hang", {"dir": str(d)})
        run = server.wait_run(run_id, "completed", "failed", "cancelled", timeout_s=10)
        assert run["status"] == "failed", run
        hang = step_of(run, "hang")
        assert (hang["status"], hang["error"]) == ("failed", "timed out after 1 s")
        assert "timed out after 1 s" in (run["error"] or ""), run["error"]
        (attempt,) = attempts(server, run_id, "hang")
        assert (attempt["status"], attempt["error"]) == ("failed", "timed out after 1 s")
        # Well under the minute the step would otherwise block for; its lower end is the timeout itself.
        assert 0.9 <= attempt["duration_s"] < 15.0, attempt["duration_s"]
        assert step_of(run, "after")["status"] == "pending"
        assert calls(d, run_id, "after") == []
        poll("the hanging function told to stop", lambda: (d / f"told-{run_id}-hang-1").exists(), timeout_s=15)
        stop_and_check(server, ws)


def test_cancel_stops_a_running_step_at_once_and_frees_its_slot(tmp_path: Path) -> None:
    # A step that ignored its cancellation would hold its slot for this long (then be abandoned), and the
    # gated step blocks for a minute unless told: a cancel that works takes a small fraction of either.
    grace_s = 60
    ws = workspace(tmp_path / "ws", STEPDECK_MAX_STEPS="1", STEPDECK_CANCEL_GRACE_S=str(grace_s))
    a_dir, b_dir = new_dir(tmp_path, "a"), new_dir(tmp_path, "b")
    with serving(ws) as server:
        a = server.start_run("crash-chain", {"dir": str(a_dir)})
        server.wait_step(a, "wait", "running")
        b = server.start_run("crash-chain", {"dir": str(b_dir)})
        server.wait_run(b, "running")
        assert step_of(server.run(b), "first")["status"] == "pending"  # the only step slot is a's

        posted = time.monotonic()
        r = server.client.post(f"/api/runs/{a}/cancel")
        assert r.status_code == 200, r.text

        def stopped() -> dict[str, Any] | None:
            run = server.run(a)
            idle = all(s["status"] != "running" for s in run["steps"])
            return run if run["status"] == "cancelled" and idle else None

        run = poll("the run cancelled with no step running", stopped, timeout_s=grace_s / 4, interval_s=0.01)
        took_s = time.monotonic() - posted
        assert took_s < grace_s / 4, f"cancel took {took_s:.2f} s"
        assert [(s["key"], s["status"]) for s in run["steps"]] == [
            ("first", "completed"),
            ("wait", "cancelled"),
            ("last", "pending"),
        ]
        history = [(x["step"], x["number"], x["status"]) for x in attempts(server, a)]
        assert history == [("first", 1, "completed"), ("wait", 1, "cancelled")]
        poll("the step function told through its context", lambda: (a_dir / f"told-{a}-wait-1").exists(), 15)
        # The freed slot goes to b at once.
        server.wait_step(b, "first", "completed", timeout_s=grace_s / 4)
        server.wait_step(b, "wait", "running", timeout_s=grace_s / 4)
        assert server.run(a)["status"] == "cancelled"  # the step's own late return changed nothing
        assert calls(a_dir, a, "last") == []
        assert server.client.post(f"/api/runs/{b}/cancel").status_code == 200
        stop_and_check(server, ws)


def test_20_concurrent_reruns_of_a_step_take_effect_exactly_once(tmp_path: Path) -> None:
    ws = workspace(tmp_path / "ws")
    d = new_dir(tmp_path, "d")
    open_gate(d, "wait")
    with serving(ws) as server:
        run_id = server.start_run("crash-chain", {"dir": str(d)})
        done = server.wait_run(run_id, "completed", "failed", "cancelled")
        assert done["status"] == "completed", done["error"]
        (d / "gate-wait").unlink()  # the re-run blocks in `wait`: the run stays active while the others land

        results = fire(server, [("rerun", f"/api/runs/{run_id}/steps/wait/rerun")] * 20)
        assert Counter(code for _, code, _ in results) == Counter({200: 1, 409: 19}), results
        assert all(body["error"] == "conflict" for _, code, body in results if code == 409)

        wait = server.wait_step(run_id, "wait", "running")
        assert wait["attempt"] == 2
        open_gate(d, "wait")
        run = server.wait_run(run_id, "completed", "failed", "cancelled")
        assert run["status"] == "completed", run["error"]
        wait = step_of(run, "wait")
        assert (wait["attempt"], wait["output"]) == (2, "wait passed on attempt 2")
        assert calls(d, run_id, "wait") == [1, 2], "the step ran exactly twice"
        assert calls(d, run_id, "last") == [1, 2]
        assert calls(d, run_id, "first") == [1]
        assert step_of(run, "first")["output"] == step_of(done, "first")["output"]
        history = [(a["step"], a["number"], a["status"]) for a in attempts(server, run_id)]
        assert history == [
            ("first", 1, "completed"),
            ("wait", 1, "completed"),
            ("wait", 2, "completed"),
            ("last", 1, "completed"),
            ("last", 2, "completed"),
        ]
        reruns = [e for e in events(server, run_id) if e["kind"] == "action" and e["message"].startswith("rerun")]
        assert len(reruns) == 1, reruns
        stop_and_check(server, ws)


def test_20_concurrent_cancels_and_reruns_never_apply_one_twice(tmp_path: Path) -> None:
    """Cancel and rerun undo each other, so several may take effect; but never the same one twice in a row
    (two cancels of one running period, or two reruns of one stopped period), and every 200 rerun is one."""
    ws = workspace(tmp_path / "ws")
    d = new_dir(tmp_path, "d")  # the gate of `wait` stays closed: a rerun leaves the run active
    with serving(ws) as server:
        run_id = server.start_run("crash-chain", {"dir": str(d)})
        server.wait_step(run_id, "wait", "running")
        cancel, rerun = f"/api/runs/{run_id}/cancel", f"/api/runs/{run_id}/steps/wait/rerun"
        results = fire(server, [("cancel", cancel), ("rerun", rerun)] * 10)
        assert {code for _, code, _ in results} <= {200, 409}, results
        # Rerun of a running run, or a cancel that lost its guard to three changes in a row: a conflict.
        assert all(body["error"] == "conflict" for _, code, body in results if code == 409), results
        reruns_ok = sum(1 for label, code, _ in results if label == "rerun" and code == 200)

        evs = events(server, run_id)
        actions = [
            "cancel" if e["message"] == "cancelled the run" else "rerun"
            for e in evs
            if e["kind"] == "action" and (e["message"] == "cancelled the run" or e["message"].startswith("rerun"))
        ]
        assert actions, evs
        assert actions[0] == "cancel", actions  # the run was running: a rerun could not come first
        assert all(x != y for x, y in itertools.pairwise(actions)), actions
        assert actions.count("rerun") == reruns_ok, (actions, results)
        cancelled = [e for e in evs if e["kind"] == "run" and e["to_status"] == "cancelled"]
        assert len(cancelled) == actions.count("cancel"), (actions, cancelled)

        if actions[-1] == "rerun":  # the last word was a rerun: it runs again, then we cancel it
            server.wait_step(run_id, "wait", "running")
            assert server.client.post(cancel).status_code == 200
        run = server.wait_run(run_id, "cancelled")
        assert all(s["status"] != "running" for s in run["steps"]), run["steps"]
        waits = attempts(server, run_id, "wait")
        assert {a["status"] for a in waits} == {"cancelled"}, waits
        assert len(waits) <= 1 + reruns_ok, (waits, reruns_ok)
        assert calls(d, run_id, "last") == []
        stop_and_check(server, ws)


# --- viewers are not owners -----------------------------------------------------------------------


def test_sse_clients_disconnecting_mid_stream_leave_the_run_running_to_completion(tmp_path: Path) -> None:
    ws = workspace(tmp_path / "ws")
    d = new_dir(tmp_path, "d")
    with serving(ws) as server:
        start = len(server.log_text())
        run_id = server.start_run("crash-chatty", {"dir": str(d)})
        server.wait_step(run_id, "talk", "running")
        url = f"/api/runs/{run_id}/events"

        def watch(client: httpx.Client, wanted: int) -> int:
            """Read the stream until `wanted` live log frames of `talk` arrived, then hang up."""
            seen = 0
            with client.stream("GET", url) as r:
                assert r.status_code == 200
                for frame in sse_frames(r.iter_lines()):
                    if frame.event == "log" and frame.data and frame.data["step"] == "talk":
                        seen += 1
                        if seen >= wanted:
                            break
            return seen

        for wanted in (1, 5, 50):
            assert watch(server.client, wanted) == wanted
            run = server.run(run_id)
            assert (run["status"], step_of(run, "talk")["status"], step_of(run, "talk")["attempt"]) == (
                "running",
                "running",
                1,
            )
        # and several at once, each hanging up at a different point of the burst
        counts: list[int] = []

        def viewer(wanted: int) -> None:
            with httpx.Client(base_url=server.base_url, timeout=15) as client:
                counts.append(watch(client, wanted))

        viewers = [threading.Thread(target=viewer, args=(n,)) for n in (2, 3, 10, 20, 40)]
        for t in viewers:
            t.start()
        for t in viewers:
            t.join(20)
        assert sorted(counts) == [2, 3, 10, 20, 40]

        open_gate(d, "talk")
        run = server.wait_run(run_id, "completed", "failed", "cancelled")
        assert run["status"] == "completed", run["error"]
        talk = step_of(run, "talk")
        assert (talk["attempt"], talk["output"].startswith("said ")) == (1, True), talk
        assert calls(d, run_id, "talk") == [1]
        assert step_of(run, "after")["status"] == "completed"
        assert server.client.get("/api/health").json() == {"status": "ok"}
        assert "Traceback" not in server.log_text()[start:], server.log_text()[start:][-5000:]
        stop_and_check(server, ws)


# --- graceful shutdown ------------------------------------------------------------------------------


def test_sigterm_lets_in_flight_steps_finish_in_the_grace_period_and_requeues_the_rest(tmp_path: Path) -> None:
    ws = workspace(tmp_path / "ws", STEPDECK_SHUTDOWN_GRACE_S="3", STEPDECK_ON_ORPHAN="resume")
    a_dir, b_dir = new_dir(tmp_path, "a"), new_dir(tmp_path, "b")
    with serving(ws, log_name="before.log") as server:
        # a: its step ends by itself 1.5 s after starting, inside the grace; b: its step outlasts the grace.
        a = server.start_run("crash-drain", {"dir": str(a_dir), "sleep_s": 1.5})
        b = server.start_run("crash-chain", {"dir": str(b_dir)})
        server.wait_step(b, "wait", "running")
        server.wait_step(a, "slow", "running")
        code = server.stop(signal.SIGTERM, timeout_s=15)
        assert code is not None, f"the server ignored SIGTERM for 15 s:\n{server.log_tail()}"

    def steps_of(run_id: int) -> dict[str, tuple[str, int]]:
        rows = ws.sql("SELECT key, status, attempt FROM steps WHERE run_id = ? ORDER BY position", (run_id,))
        return {r["key"]: (r["status"], r["attempt"]) for r in rows}

    assert ws.sql("SELECT status FROM runs WHERE id = ?", (a,)) == [{"status": "queued"}]
    assert steps_of(a) == {"first": ("completed", 1), "slow": ("completed", 1), "last": ("pending", 0)}
    assert calls(a_dir, a, "last") == [], "no new step may start during shutdown"
    assert ws.sql("SELECT status FROM runs WHERE id = ?", (b,)) == [{"status": "queued"}]
    assert steps_of(b) == {"first": ("completed", 1), "wait": ("pending", 1), "last": ("pending", 0)}
    b_wait = ws.sql(
        "SELECT a.status, a.error FROM attempts a JOIN steps s ON s.id = a.step_id"
        " WHERE a.run_id = ? AND s.key = 'wait'",
        (b,),
    )
    assert [r["status"] for r in b_wait] == ["failed"]
    assert "interrupted" in b_wait[0]["error"], b_wait
    assert ws.sql("SELECT id FROM attempts WHERE status = 'running'") == []
    check_database(ws)

    open_gate(b_dir, "wait")
    with serving(ws, log_name="after.log") as server:
        run_a = server.wait_run(a, "completed", "failed", "cancelled")
        run_b = server.wait_run(b, "completed", "failed", "cancelled")
        assert (run_a["status"], run_b["status"]) == ("completed", "completed"), (run_a["error"], run_b["error"])
        assert calls(a_dir, a, "slow") == [1], "a step that finished in the grace period is not run again"
        assert calls(a_dir, a, "last") == [1]
        assert step_of(run_b, "wait")["attempt"] == 2
        assert calls(b_dir, b, "wait") == [1, 2]
        stop_and_check(server, ws)
