"""Throughput of several `main.py worker` processes on one PostgreSQL database, side by side.

    uv run python -m bench.engine --db postgresql [--workers 1,2,4] [--runs 200] [--run-steps 10] [--reps 3]

For each worker count, interleaved `--reps` times: a fresh database (migrated), that many workers
started and healthy, then `--runs` runs of a `--run-steps`-step workflow of sync no-op steps created at
once from this process; the figure is the time from the first run's creation to the last one's finish
by the database's clock, per step. Reported as medians, with each count's speed-up over one worker,
and the CPU each step cost in the workers and in the PostgreSQL server's processes over the same time
(what the two cores of a small machine are spent on).
The server is `STEPDECK_TEST_PG` (default postgresql://postgres@127.0.0.1:5432/test); the databases
made here are dropped at the end.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

from engine import operations
from engine.db import connected
from engine.definitions import WorkflowDef
from tests import pgdb
from tests.integration.served import PATIENCE_S, Workspace
from tests.postgres.cluster import Worker


def _elapsed_ms_per_step(url: str, runs: int, steps: int) -> float:
    row = pgdb.sql(url, "SELECT min(created_at) AS a, max(finished_at) AS b FROM runs")[0]
    elapsed: timedelta = row["b"] - row["a"]
    return elapsed.total_seconds() / (runs * steps) * 1000


def _cpu_s(pid: int) -> float:
    """User and system CPU seconds of a process so far (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _postgres_pids() -> list[int]:
    pids = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/comm") as f:
                    if f.read().strip() == "postgres":
                        pids.append(int(name))
            except OSError:
                continue
    return pids


def _cpu_of(pids: list[int]) -> dict[int, float]:
    return {pid: _cpu_s(pid) for pid in pids}


def _settled(url: str, runs: int) -> bool:
    counts = {r["status"]: r["n"] for r in pgdb.sql(url, "SELECT status, count(*) AS n FROM runs GROUP BY status")}
    if counts.get("failed") or counts.get("cancelled"):
        raise SystemExit(f"runs did not complete: {counts}")
    return bool(counts.get("completed", 0) == runs)


async def _start_runs(url: str, defn: WorkflowDef, runs: int) -> None:
    async with connected(url, apply_migrations=False):
        for _ in range(runs):
            await operations.start_run(defn, {}, "bench")


class Measure:
    """One measurement: wall ms per step, and CPU ms per step in the workers and in PostgreSQL."""

    def __init__(self, ms_per_step: float, workers_cpu_ms: float, postgres_cpu_ms: float) -> None:
        self.ms_per_step, self.workers_cpu_ms, self.postgres_cpu_ms = ms_per_step, workers_cpu_ms, postgres_cpu_ms


def one_measure(tmp: Path, workflow_yaml: str, defn: WorkflowDef, workers: int, runs: int, concurrency: int) -> Measure:
    """ms per step with `workers` worker processes on a fresh database."""
    url = pgdb.create_empty()
    try:
        pgdb.migrate_blocking(url)
        ws = Workspace(tmp, {defn.name: workflow_yaml}, env={"STEPDECK_DB": url})
        procs = [Worker(ws, f"worker{i}", concurrency=concurrency) for i in range(workers)]
        try:
            with ThreadPoolExecutor(workers) as pool:
                list(pool.map(lambda w: w.start(PATIENCE_S), procs))
            worker_pids = [w.proc.pid for w in procs if w.proc is not None]
            before_workers, before_pg = _cpu_of(worker_pids), _cpu_of(_postgres_pids())
            asyncio.run(_start_runs(url, defn, runs))
            deadline = time.monotonic() + 900
            while not _settled(url, runs):
                if time.monotonic() > deadline:
                    raise SystemExit("the runs did not complete in time")
                time.sleep(0.05)
            after_workers, after_pg = _cpu_of(worker_pids), _cpu_of(_postgres_pids())
        finally:
            with ThreadPoolExecutor(workers) as pool:
                list(pool.map(lambda w: w.stop(), procs))
        total = runs * len(defn.steps)
        workers_s = sum(after_workers[p] - before_workers[p] for p in worker_pids)
        pg_s = sum(after_pg[p] - before_pg.get(p, 0.0) for p in after_pg)  # backends started meanwhile too
        return Measure(_elapsed_ms_per_step(url, runs, len(defn.steps)), workers_s / total * 1000, pg_s / total * 1000)
    finally:
        pgdb.drop_blocking(url)


def workers_curve(
    counts: list[int], runs: int, workflow_yaml: str, defn: WorkflowDef, reps: int, concurrency: int
) -> None:
    samples: dict[int, list[Measure]] = {n: [] for n in counts}
    with tempfile.TemporaryDirectory(prefix="stepdeck-bench-workers-") as name:
        for rep in range(reps):
            for n in counts:
                samples[n].append(one_measure(Path(name) / f"{rep}-{n}", workflow_yaml, defn, n, runs, concurrency))
            print(f"  (repetition {rep + 1} of {reps} done)", flush=True)
    steps = len(defn.steps)
    base = statistics.median(m.ms_per_step for m in samples[counts[0]])
    print(f"\nworkers on PostgreSQL: {runs} runs x {steps} sync no-op steps, --concurrency {concurrency} each")
    print("(medians of the repetitions, lowest and highest in brackets; speed-up against the first count;")
    print(" CPU per step spent in the workers and in the PostgreSQL server meanwhile, on all cores)")
    for n, measures in samples.items():
        values = [m.ms_per_step for m in measures]
        m = statistics.median(values)
        spread = f"{min(values):.3f} to {max(values):.3f}"
        workers_cpu = statistics.median(x.workers_cpu_ms for x in measures)
        pg_cpu = statistics.median(x.postgres_cpu_ms for x in measures)
        print(
            f"  {n} worker{'s' if n > 1 else ' '}  {m:7.3f} ms/step  {1000 / m:6.0f} steps/s  ({spread})"
            f"   {base / m:5.2f} x the throughput   CPU/step: workers {workers_cpu:.2f} ms, PostgreSQL {pg_cpu:.2f} ms"
        )
