"""Throughput of several `main.py worker` processes on one PostgreSQL database, side by side.

    uv run python -m bench.engine --db postgresql [--workers 1,2,4] [--runs 200] [--run-steps 10] [--reps 3]

For each worker count, interleaved `--reps` times: a fresh database (migrated), that many workers
started and healthy, then `--runs` runs of a `--run-steps`-step workflow of sync no-op steps created at
once from this process; the figure is the time from the first run's creation to the last one's finish
by the database's clock, per step. Reported as medians, with each count's speed-up over one worker.
The server is `STEPDECK_TEST_PG` (default postgresql://postgres@127.0.0.1:5432/test); the databases
made here are dropped at the end.
"""

from __future__ import annotations

import asyncio
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


def _settled(url: str, runs: int) -> bool:
    counts = {r["status"]: r["n"] for r in pgdb.sql(url, "SELECT status, count(*) AS n FROM runs GROUP BY status")}
    if counts.get("failed") or counts.get("cancelled"):
        raise SystemExit(f"runs did not complete: {counts}")
    return bool(counts.get("completed", 0) == runs)


async def _start_runs(url: str, defn: WorkflowDef, runs: int) -> None:
    async with connected(url, apply_migrations=False):
        for _ in range(runs):
            await operations.start_run(defn, {}, "bench")


def one_measure(tmp: Path, workflow_yaml: str, defn: WorkflowDef, workers: int, runs: int, concurrency: int) -> float:
    """ms per step with `workers` worker processes on a fresh database."""
    url = pgdb.create_empty()
    try:
        pgdb.migrate_blocking(url)
        ws = Workspace(tmp, {defn.name: workflow_yaml}, env={"STEPDECK_DB": url})
        procs = [Worker(ws, f"worker{i}", concurrency=concurrency) for i in range(workers)]
        try:
            with ThreadPoolExecutor(workers) as pool:
                list(pool.map(lambda w: w.start(PATIENCE_S), procs))
            asyncio.run(_start_runs(url, defn, runs))
            deadline = time.monotonic() + 900
            while not _settled(url, runs):
                if time.monotonic() > deadline:
                    raise SystemExit("the runs did not complete in time")
                time.sleep(0.05)
        finally:
            with ThreadPoolExecutor(workers) as pool:
                list(pool.map(lambda w: w.stop(), procs))
        return _elapsed_ms_per_step(url, runs, len(defn.steps))
    finally:
        pgdb.drop_blocking(url)


def workers_curve(
    counts: list[int], runs: int, workflow_yaml: str, defn: WorkflowDef, reps: int, concurrency: int
) -> None:
    samples: dict[int, list[float]] = {n: [] for n in counts}
    with tempfile.TemporaryDirectory(prefix="stepdeck-bench-workers-") as name:
        for rep in range(reps):
            for n in counts:
                samples[n].append(one_measure(Path(name) / f"{rep}-{n}", workflow_yaml, defn, n, runs, concurrency))
            print(f"  (repetition {rep + 1} of {reps} done)", flush=True)
    steps = len(defn.steps)
    base = statistics.median(samples[counts[0]])
    print(f"\nworkers on PostgreSQL: {runs} runs x {steps} sync no-op steps, --concurrency {concurrency} each")
    print("(medians of the repetitions, lowest and highest in brackets; speed-up against the first count)")
    for n, values in samples.items():
        m = statistics.median(values)
        spread = f"{min(values):.3f} to {max(values):.3f}"
        print(f"  {n} worker{'s' if n > 1 else ' '}  {m:7.3f} ms/step  ({spread})   {base / m:5.2f} x the throughput")
