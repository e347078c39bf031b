"""Several processes on one PostgreSQL database: what one commits reaches the hub of every other through
LISTEN/NOTIFY (the events table is the truth), so a dashboard process shows a step running in another
process as it happens, and a cancel or a choice made on the dashboard reaches the process executing the run.

The engine process polls only every 60 s here (its heartbeat, which also notices cancels, and its look for
queued runs): anything that arrives within the tests' 30 s came through the database's notifications."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from engine.db import current
from engine.engine import Engine
from engine.hub import Change
from engine.registry import Registry
from engine.store import fetch
from models.schema import dsn
from tests.conftest import wait_for, wait_run
from tests.integration.served import Server, Workspace

# Most tests here start two servers: slow on a loaded machine, though never this slow.
pytestmark = pytest.mark.timeout(300)

SLOW_POLLS = {
    "STEPDECK_HEARTBEAT_INTERVAL_S": "60",
    "STEPDECK_STALE_AFTER_S": "600",
    "STEPDECK_POLL_INTERVAL_S": "60",
}

GATES = """
import asyncio
import pathlib
import time

HERE = pathlib.Path(__file__).parent


def hold(ctx):
    gate = HERE / f"open-{ctx.run_id}"
    while not gate.exists():
        time.sleep(0.02)
    return "held"


async def wait_forever(ctx):
    try:
        await asyncio.sleep(3600)
    except asyncio.CancelledError:
        (HERE / f"stopped-{ctx.run_id}").write_text("cancelled")
        raise
    return "never"


def two(ctx):
    return ["first", "second"]


def chatty(ctx):
    for i in range(3):
        ctx.log(f"line {i + 1} of run {ctx.run_id}")
    ctx.log("é" * 20_000)  # longer than a notification carries: it arrives cut
    ctx.progress(0.5, "half way")
    gate = HERE / f"open-{ctx.run_id}"
    while not gate.exists():
        time.sleep(0.02)
    return "said"


def after(ctx):
    return "after " + ctx.outputs["choose"]
"""

WORKFLOWS = {
    "chatty": """
        steps:
          - key: talk
            call: "gates:chatty"
    """,
    "slow": """
        steps:
          - key: hold
            call: "gates:hold"
          - key: wait
            call: "gates:wait_forever"
    """,
    "pick": """
        steps:
          - key: choose
            call: "gates:two"
            alternatives: 2
            select: human
          - key: after
            call: "gates:after"
    """,
}


@contextlib.contextmanager
def dashboard_and_engine(tmp_path: Path) -> Iterator[tuple[Workspace, Server, Server]]:
    ws = Workspace(tmp_path, WORKFLOWS, {"gates": GATES}, env=SLOW_POLLS)
    dashboard = Server(ws, extra_args=["--no-engine"], log_name="dashboard.log")
    engine = Server(ws, log_name="engine.log")
    try:
        dashboard.start()
        engine.start()
        yield ws, dashboard, engine
    except BaseException:
        print(f"--- dashboard ---\n{dashboard.log_tail(80)}\n--- engine ---\n{engine.log_tail(80)}")
        raise
    finally:
        dashboard.close()
        engine.close()


class EventReader:
    """A live event stream of one run on one server, read in a thread; `events` grows as they arrive."""

    def __init__(self, server: Server, run_id: int) -> None:
        self.events: list[dict[str, Any]] = []
        self.live = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, args=(server.base_url, run_id), daemon=True)
        self._thread.start()

    def _read(self, base_url: str, run_id: int) -> None:
        with (
            httpx.Client(base_url=base_url, timeout=httpx.Timeout(5.0, read=None)) as client,
            client.stream("GET", f"/api/runs/{run_id}/events") as response,
        ):
            for line in response.iter_lines():
                if self._stop.is_set():
                    return
                if line == ": live":
                    self.live.set()
                elif line.startswith("data: "):
                    self.events.append(json.loads(line[len("data: ") :]))

    def wait(self, found: Callable[[dict[str, Any]], bool], what: str, timeout_s: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for event in list(self.events):
                if found(event):
                    return event
            time.sleep(0.02)
        raise AssertionError(f"the stream did not show {what} within {timeout_s} s: {self.events}")

    def close(self) -> None:
        self._stop.set()


@contextlib.contextmanager
def live_events(dashboard: Server, run_id: int) -> Iterator[EventReader]:
    """The dashboard's event stream of `run_id`, once it is live: what arrives from then on came through the
    database's notifications, not the replay of what was stored before."""
    reader = EventReader(dashboard, run_id)
    try:
        assert reader.live.wait(30), "the dashboard's stream never went live"
        yield reader
    finally:
        reader.close()


def gates_of(ws: Workspace) -> Path:
    """The folder the steps of GATES watch: `open-<run>` lets `hold` finish, `stopped-<run>` tells a cancel arrived."""
    assert ws.workflows_dir is not None
    return ws.workflows_dir


def cancel_on_the_dashboard(ws: Workspace, dashboard: Server, engine: Server, run_id: int) -> None:
    """Cancel `run_id` through the dashboard and wait until the step waiting in the engine process was stopped."""
    r = dashboard.client.post(f"/api/runs/{run_id}/cancel")
    assert r.status_code == 200, r.text
    deadline = time.monotonic() + 30
    while not (gates_of(ws) / f"stopped-{run_id}").exists():
        assert time.monotonic() < deadline, f"the cancel did not reach the step:\n{engine.log_tail()}"
        time.sleep(0.02)


def log_line(text: str) -> Callable[[dict[str, Any]], bool]:
    return lambda e: e["kind"] == "log" and e["line"] == text


def step_event(key: str, status: str) -> Callable[[dict[str, Any]], bool]:
    return lambda e: e["kind"] == "step" and e["step"] == key and e["to_status"] == status


def test_a_dashboard_shows_a_step_running_in_another_process_live_and_its_cancel_stops_the_step(
    tmp_path: Path,
) -> None:
    with dashboard_and_engine(tmp_path) as (ws, dashboard, engine):
        run_id = dashboard.start_run("slow")
        engine.wait_step(run_id, "hold", "running")  # claimed by the engine process, woken by the dashboard's run
        with live_events(dashboard, run_id) as reader:
            before = len(reader.events)
            (gates_of(ws) / f"open-{run_id}").write_text("go")
            running = reader.wait(step_event("wait", "running"), "step 'wait' running")
            assert reader.events.index(running) >= before  # delivered live, not replayed
            assert not (gates_of(ws) / f"stopped-{run_id}").exists()

            cancel_on_the_dashboard(ws, dashboard, engine, run_id)
            reader.wait(step_event("wait", "cancelled"), "step 'wait' cancelled")
        run = engine.wait_run(run_id, "cancelled")
        assert [s["status"] for s in run["steps"]] == ["completed", "cancelled"]


def test_a_dashboard_shows_the_log_lines_and_progress_of_a_step_running_in_another_process_as_they_come(
    tmp_path: Path,
) -> None:
    """Log lines and progress are no event rows: they reach the other processes in the notifications."""
    with dashboard_and_engine(tmp_path) as (ws, dashboard, engine):
        run_id = dashboard.start_run("chatty")
        with live_events(dashboard, run_id) as reader:
            lines = [reader.wait(log_line(f"line {n} of run {run_id}"), f"line {n}") for n in (1, 2, 3)]
            assert [e["step"] for e in lines] == ["talk"] * 3
            assert [reader.events.index(e) for e in lines] == sorted(reader.events.index(e) for e in lines)
            long = reader.wait(lambda e: e["kind"] == "log" and e["line"].startswith("éé"), "the long line")
            assert long["line"].endswith("…") and len(long["line"]) < 20_000
            progress = reader.wait(lambda e: e["kind"] == "progress", "the step's progress")
            assert (progress["fraction"], progress["message"]) == (0.5, "half way")
            # All of it while the step still runs in the other process.
            assert engine.run(run_id)["steps"][0]["status"] == "running"
            (gates_of(ws) / f"open-{run_id}").write_text("go")
            reader.wait(step_event("talk", "completed"), "step 'talk' completed")
        # Each line once on the dashboard, though both processes' hubs carried it.
        assert sum(1 for e in reader.events if e["kind"] == "log" and e["line"] == f"line 1 of run {run_id}") == 1


def test_a_choice_made_on_the_dashboard_continues_the_run_in_the_engine_process(tmp_path: Path) -> None:
    with dashboard_and_engine(tmp_path) as (_, dashboard, _engine):
        run_id = dashboard.start_run("pick")
        dashboard.wait_run(run_id, "waiting")
        r = dashboard.client.post(f"/api/runs/{run_id}/steps/choose/select", json={"index": 1})
        assert r.status_code == 200, r.text
        run = dashboard.wait_run(run_id, "completed", "failed")
        assert run["status"] == "completed", run
        assert [s["output"] for s in run["steps"]] == ["second", "after second"]


def test_changes_still_arrive_after_the_listening_connections_are_cut(tmp_path: Path) -> None:
    with dashboard_and_engine(tmp_path) as (ws, dashboard, engine):
        cut = ws.sql(
            "SELECT pg_terminate_backend(pid) AS cut FROM pg_stat_activity"
            " WHERE datname = current_database() AND starts_with(application_name, 'stepdeck-listen:')"
        )
        assert len(cut) == 2 and all(row["cut"] for row in cut), cut  # one per process
        run_id = dashboard.start_run("slow")
        engine.wait_step(run_id, "hold", "running")
        (gates_of(ws) / f"open-{run_id}").write_text("go")
        engine.wait_step(run_id, "wait", "running")
        cancel_on_the_dashboard(ws, dashboard, engine, run_id)
        engine.wait_run(run_id, "cancelled")


async def test_each_event_reaches_the_hub_once_whether_this_process_or_another_wrote_it(
    db: str, engine: Engine, define: Callable[..., Any], registry: Registry
) -> None:
    from engine import feed, operations

    await feed.start()
    assert current().kind == "postgresql"
    seen: list[Change] = []
    remove = current().hub.add_listener(lambda change: seen.append(change) if change.event_id is not None else None)
    try:
        define("five", [{"key": f"s{i}", "call": "tests.stepfns:noop"} for i in range(5)])
        run_id = await operations.start_run(registry.get("five"), {}, "t")
        await wait_run(run_id, "completed")
        # Another process writes an event of the run (its connection has an application name of its own).
        other = await asyncpg.connect(dsn(db), server_settings={"application_name": "another process"})
        try:
            await other.execute(
                "INSERT INTO events (run_id, kind, actor, message, created_at)"
                " VALUES ($1, 'action', 'bob', 'hi', now())",
                run_id,
            )
        finally:
            await other.close()
        await wait_for(
            lambda: _async([c for c in seen if c.actor == "bob"]), what="the other process's event on the hub"
        )
        # The feed reads in commit order: once the other process's (last) event is here, so is every
        # earlier row it would have published, twice or not.
        ids = [row["id"] for row in await fetch("SELECT id FROM events WHERE run_id = ? ORDER BY id", (run_id,))]
        published = [c.event_id or 0 for c in seen if c.run_id == run_id]
        assert sorted(published) == ids  # every row once: none missed, none twice
        assert len(set(published)) == len(published)
    finally:
        remove()


async def _async(value: Any) -> Any:
    return value
