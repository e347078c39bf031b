"""Engine overhead per step, on a SQLite file under the default settings.

    uv run python -m bench.engine [--steps 1000] [--runs 200] [--run-steps 10] [--kind sync|async]

Shapes: one run of N sequential no-op python steps, and R concurrent runs of M steps. The steps do
nothing, so wall time divided by steps is the engine's own cost per step: claim, two guarded
transitions with their events, the thread hop of a sync function, readiness, the run's finish.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from engine import operations
from engine.definitions import WorkflowDef, parse_definition
from engine.executor import Engine
from engine.settings import Settings
from engine.store import fetch
from models.db import connected


def sequential(name: str, steps: int, call: str) -> WorkflowDef:
    data = {"name": name, "steps": [{"key": f"s{i}", "call": call} for i in range(steps)]}
    return parse_definition(data, f"<bench {name}>")


async def _wait_all_done(run_ids: list[int], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    marks = ", ".join("?" for _ in run_ids)
    while time.monotonic() < deadline:
        rows = await fetch(f"SELECT status, count(*) AS n FROM runs WHERE id IN ({marks}) GROUP BY status", run_ids)
        counts = {r["status"]: r["n"] for r in rows}
        if counts.get("completed", 0) == len(run_ids):
            return
        if counts.get("failed"):
            raise SystemExit(f"runs failed: {counts}")
        await asyncio.sleep(0.01)
    raise SystemExit(f"timeout: {counts}")


async def shape(label: str, engine: Engine, defn: WorkflowDef, runs: int) -> dict[str, float]:
    t0 = time.perf_counter()
    run_ids = [await operations.start_run(defn, {}, "bench") for _ in range(runs)]
    t1 = time.perf_counter()
    await _wait_all_done(run_ids, timeout_s=600)
    t2 = time.perf_counter()
    steps = runs * len(defn.steps)
    wall = t2 - t0
    figures = {
        "steps": steps,
        "wall_s": wall,
        "steps_per_s": steps / wall,
        "ms_per_step": wall / steps * 1000,
        "ms_per_step_excluding_creation": (t2 - t1) / steps * 1000,
        "creation_s": t1 - t0,
    }
    print(
        f"{label:<34} {steps:>6} steps  {wall:7.2f} s  {figures['steps_per_s']:8.0f} steps/s  "
        f"{figures['ms_per_step']:.3f} ms/step (excluding run creation {figures['ms_per_step_excluding_creation']:.3f})"
    )
    return figures


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=1000, help="steps of the sequential run")
    parser.add_argument("--runs", type=int, default=200, help="concurrent runs")
    parser.add_argument("--run-steps", type=int, default=10, help="steps of each concurrent run")
    parser.add_argument("--kind", choices=["sync", "async"], default="sync", help="no-op step functions")
    args = parser.parse_args()
    call = "bench.steps:noop" if args.kind == "sync" else "bench.steps:anoop"
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite://{Path(tmp) / 'bench.db'}"
        settings = Settings(db_url=url)
        async with connected(url):
            engine = Engine(settings)
            await engine.start()
            print(
                f"SQLite file, default settings ({settings.max_concurrent_runs} runs / "
                f"{settings.max_concurrent_steps} steps at once), {args.kind} no-op steps"
            )
            await shape(f"1 run x {args.steps} sequential steps", engine, sequential("seq", args.steps, call), 1)
            await shape(
                f"{args.runs} concurrent runs x {args.run_steps} steps",
                engine,
                sequential("par", args.run_steps, call),
                args.runs,
            )
            await engine.stop()


if __name__ == "__main__":
    asyncio.run(main())
