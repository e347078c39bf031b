"""Engine cost per step against the floor of the same durable writes, in-process and served.

    uv run python -m bench.engine [--steps 1000] [--runs 200] [--run-steps 10] [--backlog 1000] [--reps 3]
                                  [--no-served]
    uv run python -m bench.engine --only post [--posts 300] [--reps 3]
    uv run python -m bench.engine --db postgresql [--workers 1,2,4] [--runs 200] [--run-steps 10]

With `--db postgresql`: the throughput of 1, 2, 4 `main.py worker` processes (`bench/workers.py`).

Every figure is measured side by side in one run, the shapes interleaved `--reps` times (medians
reported): absolute times on a shared machine are noise, ratios are not.

- floor: per step, one thread round trip that commits what a step needs at the least — 2 guarded
  UPDATEs (attempt, step) and 2 event INSERTs — on a SQLite file in WAL with synchronous=NORMAL.
- in-process: an engine in this process; R runs started with `operations.start_run`, wall time from
  the first start to the last completion, divided by the steps. Steps are sync no-op functions. Also a
  backlog: `--backlog` one-step runs queued while no engine runs, drained by an engine that starts then.
- served: `main.py serve` as a subprocess; runs started with `POST /api/runs` (one kept-alive connection,
  the standard library's client: a light load generator), completion read from the database file.
  Also the CPU a `POST /api/runs` costs, on `serve --no-engine` (nothing else runs), against the same
  request on `bench/http_floor.py` (the HTTP server and FastAPI alone).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

import httpx

from engine import operations
from engine.db import connected, current
from engine.definitions import WorkflowDef, parse_definition
from engine.engine import Engine
from engine.heap import freeze_startup_objects
from engine.hub import Change, ChangeKind
from engine.settings import Settings
from engine.store import fetch
from models.db import migrate
from tests.dbtemplate import migrated_copy
from tests.integration.served import ROOT, Server, Workspace, clean_env, free_port

NOOP = "bench.steps:noop"


def sequential(name: str, steps: int, call: str = NOOP) -> WorkflowDef:
    data = {"name": name, "steps": [{"key": f"s{i}", "call": call} for i in range(steps)]}
    return parse_definition(data, f"<bench {name}>")


def workflow_yaml(name: str, steps: int, call: str = "benchsteps:noop") -> str:
    body = "".join(f"  - key: s{i}\n    call: {call}\n" for i in range(steps))
    return f"name: {name}\nsteps:\n{body}"


BENCH_STEPS = "def noop(ctx):\n    return 'ok'\n"


# --- the floor -------------------------------------------------------------------------------------


async def floor_ms_per_step(path: Path, steps: int) -> float:
    """One thread round trip per step, committing 2 guarded UPDATEs and 2 event INSERTs."""
    await migrate(f"sqlite://{path}")
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    now = "2026-01-01 00:00:00+00:00"
    conn.execute(
        "INSERT INTO runs (workflow, definition, inputs, status, actor, recoveries, created_at, updated_at)"
        " VALUES ('floor', '{}', '{}', 'running', 'bench', 0, ?, ?)",
        (now, now),
    )
    for i in range(steps):
        conn.execute(
            "INSERT INTO steps (run_id, key, label, position, kind, needs, status, attempt, stale, updated_at)"
            " VALUES (1, ?, ?, ?, 'python', '[]', 'running', 1, 0, ?)",
            (f"s{i}", f"s{i}", i, now),
        )
        conn.execute(
            "INSERT INTO attempts (run_id, step_id, number, status, consumed, logs, started_at)"
            " VALUES (1, ?, 1, 'running', '{}', '[]', ?)",
            (i + 1, now),
        )

    def one_step(i: int) -> None:
        conn.execute("BEGIN IMMEDIATE")
        a = conn.execute(
            "UPDATE attempts SET status = 'completed', outputs = '[\"ok\"]', finished_at = ?"
            " WHERE id = ? AND status = ?",
            (now, i + 1, "running"),
        )
        s = conn.execute("UPDATE steps SET status = 'completed' WHERE id = ? AND status = ?", (i + 1, "running"))
        assert a.rowcount == 1 and s.rowcount == 1
        for kind in ("step", "step"):
            conn.execute(
                "INSERT INTO events (run_id, step_key, attempt, kind, from_status, to_status, created_at)"
                " VALUES (1, ?, 1, ?, 'running', 'completed', ?) RETURNING id",
                (f"s{i}", kind, now),
            ).fetchall()
        conn.execute("COMMIT")

    loop = asyncio.get_running_loop()
    with ThreadPoolExecutor(1) as hop:
        t0 = time.perf_counter()
        for i in range(steps):
            await loop.run_in_executor(hop, one_step, i)
        elapsed = time.perf_counter() - t0
    conn.close()
    return elapsed / steps * 1000


# --- in-process ------------------------------------------------------------------------------------


async def wait_done(run_ids: list[int], timeout_s: float) -> None:
    """Until every run has completed, told by the hub (a poll would add readers to what is measured)."""
    pending = set(run_ids)
    failed: list[int] = []
    done = asyncio.Event()

    def on_change(change: Change) -> None:
        if change.kind == ChangeKind.RUN and change.run_id in pending and change.to_status in ("completed", "failed"):
            pending.discard(change.run_id)
            if change.to_status == "failed":
                failed.append(change.run_id)
            if not pending:
                done.set()

    remove = current().hub.add_listener(on_change)
    try:
        rows = await fetch(
            f"SELECT id FROM runs WHERE status = 'completed' AND id IN ({', '.join('?' for _ in run_ids)})", run_ids
        )
        pending.difference_update(r["id"] for r in rows)
        if pending:
            await asyncio.wait_for(done.wait(), timeout_s)
    finally:
        remove()
    if failed:
        raise SystemExit(f"runs failed: {failed}")


async def in_process_ms_per_step(defn: WorkflowDef, runs: int) -> float:
    t0 = time.perf_counter()
    run_ids = [await operations.start_run(defn, {}, "bench") for _ in range(runs)]
    await wait_done(run_ids, timeout_s=900)
    return (time.perf_counter() - t0) / (runs * len(defn.steps)) * 1000


async def backlog_ms_per_step(url: str, engine: Engine, defn: WorkflowDef, runs: int) -> tuple[float, Engine]:
    """`runs` runs queued while no engine runs (a burst, or a restart after a while), then drained by a new
    engine: wall time from its start to the last completion, divided by the steps. Returns the engine,
    which the next shapes use."""
    await engine.stop()
    run_ids = [await operations.start_run(defn, {}, "bench") for _ in range(runs)]
    t0 = time.perf_counter()
    engine = Engine(Settings(db_url=url))
    await engine.start()
    await wait_done(run_ids, timeout_s=900)
    return (time.perf_counter() - t0) / (runs * len(defn.steps)) * 1000, engine


# --- served ----------------------------------------------------------------------------------------


def _all_completed(ws: Workspace, first_id: int, runs: int) -> bool:
    rows = ws.sql("SELECT status, count(*) AS n FROM runs WHERE id >= ? GROUP BY status", (first_id,))
    counts = {r["status"]: r["n"] for r in rows}
    if counts.get("failed"):
        raise SystemExit(f"runs failed: {counts}")
    return bool(counts.get("completed", 0) == runs)


class Poster:
    """`POST /api/runs` on one kept-alive connection, with the standard library's client: the load this
    process puts on the shared cores stays small (httpx took 0.10 ms of CPU per step of a 10-step run,
    this 0.03), so that the figure is the server's."""

    def __init__(self, base_url: str) -> None:
        host, port = base_url.removeprefix("http://").split(":")
        self.conn = http.client.HTTPConnection(host, int(port), timeout=60)

    def start_run(self, workflow: str) -> int:
        body = json.dumps({"workflow": workflow, "inputs": {}})
        self.conn.request("POST", "/api/runs", body, {"Content-Type": "application/json"})
        response = self.conn.getresponse()
        answer = response.read()
        if response.status != 201:
            raise SystemExit(f"POST /api/runs -> {response.status}: {answer[:500]!r}")
        run_id: int = json.loads(answer)["id"]
        return run_id


def served_ms_per_step(server: Server, ws: Workspace, workflow: str, runs: int, steps: int) -> float:
    """From the first run's creation to the last one's finish, by the database's timestamps: the poll
    that tells us they are done (every 50 ms, from this process) is not in the figure."""
    poster = Poster(server.base_url)
    try:
        ids = [poster.start_run(workflow) for _ in range(runs)]
    finally:
        poster.conn.close()
    deadline = time.monotonic() + 900
    while not _all_completed(ws, ids[0], runs):
        if time.monotonic() > deadline:
            raise SystemExit("served runs did not complete in time")
        time.sleep(0.05)
    row = ws.sql("SELECT MIN(created_at) AS a, MAX(finished_at) AS b FROM runs WHERE id >= ?", (ids[0],))[0]
    elapsed = datetime.fromisoformat(row["b"]).timestamp() - datetime.fromisoformat(row["a"]).timestamp()
    return elapsed / (runs * steps) * 1000


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])  # utime + stime
    return ticks / os.sysconf("SC_CLK_TCK")


def post_cpu_ms(pid: int, post: Callable[[], object], count: int) -> float:
    """CPU of the process `pid` per request that `post` makes."""
    for _ in range(20):  # warm up: imports, caches
        post()
    before = _cpu_s(pid)
    for _ in range(count):
        post()
    return (_cpu_s(pid) - before) / count * 1000


def wait_up(client: httpx.Client, proc: subprocess.Popen[bytes], path: str) -> None:
    """Wait (a minute at most) until the process started to serve `client` answers `path`."""
    deadline = time.monotonic() + 60
    while True:
        try:
            client.get(path)
            return
        except httpx.TransportError:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise
            time.sleep(0.1)


@contextlib.contextmanager
def serving_posts(
    args: list[str], cwd: Path, env: dict[str, str], port: int, ready: str
) -> Iterator[tuple[int, Callable[[], object]]]:
    """`python ARGS` serving on `port` (ready once `ready` answers): its pid and a POST like `Server.start_run`'s."""
    proc = subprocess.Popen([sys.executable, *args], cwd=cwd, env=env)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
            wait_up(client, proc, ready)

            def post() -> object:
                r = client.post("/api/runs", json={"workflow": "par", "inputs": {}})
                assert r.status_code == 201, r.text
                return r.json()["id"]

            yield proc.pid, post
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@contextlib.contextmanager
def http_floor() -> Iterator[tuple[int, Callable[[], object]]]:
    """`bench/http_floor.py` served on a free port: its pid and a POST."""
    port = free_port()
    with serving_posts(["-m", "bench.http_floor", str(port)], ROOT, clean_env(), port, "/docs") as served:
        yield served


def post_figures(no_engine: Server, count: int, reps: int) -> tuple[float, float]:
    """Medians of the CPU per POST on `serve --no-engine` and on the HTTP floor, interleaved."""
    assert no_engine.proc is not None
    ours: list[float] = []
    floor: list[float] = []
    with http_floor() as (pid, post):
        for _ in range(reps):
            ours.append(post_cpu_ms(no_engine.proc.pid, lambda: no_engine.start_run("par"), count))
            floor.append(post_cpu_ms(pid, post, count))
    return statistics.median(ours), statistics.median(floor)


# --- main ------------------------------------------------------------------------------------------


def _median_line(label: str, samples: list[float], floor: float) -> str:
    m = statistics.median(samples)
    spread = f"{min(samples):.3f} to {max(samples):.3f}"
    return f"  {label:<42} {m:7.3f} ms/step  ({spread})   {m / floor:5.2f} x the floor"


async def run_in_process(args: argparse.Namespace, tmp: Path, served: Callable[[str], float] | None) -> None:
    url = f"sqlite://{migrated_copy(tmp / 'engine.db')}"
    samples: dict[str, list[float]] = {}
    seq, par, one = sequential("seq", args.steps), sequential("par", args.run_steps), sequential("one", 1)
    shapes = [
        (f"1 run x {args.steps} sequential steps", seq, 1),
        (f"{args.runs} runs x {args.run_steps} steps", par, args.runs),
    ]
    async with connected(url, apply_migrations=False):
        engine = Engine(Settings(db_url=url))
        await engine.start()
        await in_process_ms_per_step(sequential("warm", 50), 2)
        freeze_startup_objects()  # as `serve`, `worker` and `run` do once started
        for rep in range(args.reps):
            samples.setdefault("floor", []).append(await floor_ms_per_step(tmp / f"floor{rep}.db", args.steps))
            for label, defn, runs in shapes:
                samples.setdefault(f"in-process: {label}", []).append(await in_process_ms_per_step(defn, runs))
            ms, engine = await backlog_ms_per_step(url, engine, one, args.backlog)
            samples.setdefault(f"in-process: {args.backlog} queued runs x 1 step", []).append(ms)
            if served is not None:
                for label, _, _ in shapes:
                    samples.setdefault(f"served:     {label}", []).append(await asyncio.to_thread(served, label))
            print(f"  (repetition {rep + 1} of {args.reps} done)", flush=True)
        await engine.stop()
    floor = statistics.median(samples.pop("floor"))
    print("\nfloor (one thread hop per step: 2 guarded UPDATEs + 2 event INSERTs, WAL, synchronous=NORMAL)")
    print(f"  {floor:.3f} ms/step")
    print("engine (sync no-op python steps; medians of the repetitions, lowest and highest in brackets)")
    for label, values in samples.items():
        print(_median_line(label, values, floor))


def print_post_figures(args: argparse.Namespace, tmp: Path) -> None:
    api = Workspace(tmp / "api", {"par": workflow_yaml("par", args.run_steps)}, {"benchsteps": BENCH_STEPS})
    migrated_copy(api.db_path)
    no_engine = Server(api, extra_args=["--no-engine"])
    no_engine.start()
    try:
        cpu, floor = post_figures(no_engine, args.posts, args.reps)
    finally:
        no_engine.close()
    print(f"POST /api/runs ({args.run_steps}-step workflow), CPU per request (medians of {args.reps}):")
    print(f"  serve --no-engine                          {cpu:7.3f} ms   {cpu / floor:5.2f} x the floor")
    print(f"  floor (uvicorn + FastAPI, same body model, a run's JSON, no database) {floor:7.3f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=1000, help="steps of the sequential run")
    parser.add_argument("--runs", type=int, default=200, help="concurrent runs")
    parser.add_argument("--run-steps", type=int, default=10, help="steps of each concurrent run")
    parser.add_argument("--reps", type=int, default=3, help="interleaved repetitions of every shape")
    parser.add_argument("--backlog", type=int, default=1000, help="one-step runs queued before an engine starts")
    parser.add_argument("--no-served", action="store_true", help="skip the served process")
    parser.add_argument("--posts", type=int, default=300, help="POST /api/runs timed for their CPU")
    parser.add_argument("--only", choices=("post",), help="post: only the CPU of a POST /api/runs against its floor")
    parser.add_argument(
        "--db", choices=("sqlite", "postgresql"), default="sqlite", help="postgresql: the worker processes' curve"
    )
    parser.add_argument("--workers", default="1,2,4", help="worker counts compared on PostgreSQL")
    parser.add_argument("--concurrency", type=int, default=16, help="each worker's --concurrency on PostgreSQL")
    args = parser.parse_args()
    if args.db == "postgresql":
        from bench.workers import workers_curve

        counts = [int(n) for n in args.workers.split(",")]
        par = sequential("par", args.run_steps)
        yaml = workflow_yaml("par", args.run_steps, NOOP)  # the same call as `par`'s: the workers import it
        workers_curve(counts, args.runs, yaml, par, args.reps, args.concurrency)
        return
    with tempfile.TemporaryDirectory(prefix="stepdeck-bench-engine-") as name:
        tmp = Path(name)
        if args.only == "post":
            print_post_figures(args, tmp)
            return
        if args.no_served:
            asyncio.run(run_in_process(args, tmp, None))
            return
        workflows = {"seq": workflow_yaml("seq", args.steps), "par": workflow_yaml("par", args.run_steps)}
        ws = Workspace(tmp / "served", workflows, {"benchsteps": BENCH_STEPS})
        migrated_copy(ws.db_path)
        server = Server(ws)
        server.start()
        lock = threading.Lock()

        def served(label: str) -> float:
            with lock:
                if label.startswith("1 run"):
                    return served_ms_per_step(server, ws, "seq", 1, args.steps)
                return served_ms_per_step(server, ws, "par", args.runs, args.run_steps)

        try:
            asyncio.run(run_in_process(args, tmp, served))
        finally:
            server.close()
        print_post_figures(args, tmp)


if __name__ == "__main__":
    main()
