"""Run page figures on a served Stepdeck (`main.py serve` as a subprocess, a temporary SQLite file),
with a real Chromium tab (Playwright, /usr/bin/chromium) where a user would have one.

    uv run python -m bench.ui [--steps 1000] [--reps 3]

Measured side by side in one run (absolute times on a shared machine are noise; ratios are not):

(a) Watching costs nothing: a sequential run of N sync steps (default 1,000), unwatched and watched by
    a tab on its page, interleaved `--reps` times. Its first step waits for a gate file, so the tab
    is open, loaded and settled (no request for half a second, as a tab watching a long run is) before
    the work starts; the figure is the run's own time from the gate's step
    ending to the run finishing (database timestamps). Target: watched / unwatched <= 1.3.
(b) The page keeps up: in the watched runs, the time from the run finishing (its `finished_at`) to
    the tab's `#run-root` reading `data-run-status="completed"` (a MutationObserver's Date.now();
    same machine, same clock). Target <= 1 s.
(c) Server-side build of `/runs/{id}` for 300 and 2,000 steps: GET to the full response (the page is
    built before it answers). Targets <= 100 ms and <= 300 ms.
(d) A 2,000-step page usable in Chromium: from navigation to the first card shown and the overview
    strip drawn. Target <= 2 s.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from playwright.sync_api import Browser, sync_playwright

from tests.e2e.conftest import CHROMIUM, CHROMIUM_ARGS, E2E_STEPS, many_steps
from tests.integration.served import Server, Workspace, serving

TARGET_WATCH_RATIO = 1.3
TARGET_CATCH_UP_S = 1.0
TARGET_BUILD_MS = {300: 100.0, 2000: 300.0}
TARGET_USABLE_S = 2.0

STEPS_MODULE = (
    E2E_STEPS
    + '''

def noop(ctx):
    return "ok"


def wait_gate(ctx):
    """Waits (in its worker thread) until the file <inputs.gate_dir>/go exists."""
    import time as _time
    from pathlib import Path as _Path

    gate = _Path(ctx.inputs["gate_dir"]) / "go"
    while not gate.exists():
        _time.sleep(0.002)
    return "open"
'''
)

WATCH_JS = """
() => {
    const root = document.getElementById('run-root');
    window.completedAt = null;
    const check = () => {
        if (window.completedAt === null && root.dataset.runStatus === 'completed') window.completedAt = Date.now();
    };
    new MutationObserver(check).observe(root, {attributes: true});
    check();
}
"""


def gated_chain(name: str, steps: int) -> str:
    body = "".join(f"  - key: s{i}\n    call: e2e_steps:noop\n" for i in range(1, steps + 1))
    return (
        f"name: {name}\ninputs:\n  gate_dir:\n    type: string\nsteps:\n"
        f"  - key: gate\n    call: e2e_steps:wait_gate\n{body}"
    )


def epoch_s(stored: str) -> float:
    at = datetime.fromisoformat(stored)
    assert at.tzinfo is not None, f"a time without a zone: {stored!r}"
    return at.timestamp()


def wait_finished(ws: Workspace, run_id: int, timeout_s: float = 300.0) -> dict[str, Any]:
    """Poll the database file (not the API: a poll must not add to the server's work)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        rows = ws.sql("SELECT status, finished_at FROM runs WHERE id = ?", (run_id,))
        if rows and rows[0]["status"] in ("completed", "failed", "cancelled"):
            if rows[0]["status"] != "completed":
                raise SystemExit(f"run {run_id} ended {rows[0]['status']}")
            return rows[0]
        time.sleep(0.05)
    raise SystemExit(f"run {run_id} did not finish in {timeout_s} s")


def wait_running(ws: Workspace, run_id: int, key: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if ws.sql("SELECT 1 FROM steps WHERE run_id = ? AND key = ? AND status = 'running'", (run_id, key)):
            return
        time.sleep(0.02)
    raise SystemExit(f"step {key} of run {run_id} never started")


def engine_seconds(ws: Workspace, run_id: int) -> float:
    """From the gate step's end to the run's end, by the database's own timestamps."""
    gate = ws.sql(
        "SELECT a.finished_at FROM attempts a JOIN steps s ON s.id = a.step_id WHERE s.run_id = ? AND s.key = 'gate'",
        (run_id,),
    )[0]["finished_at"]
    finished = ws.sql("SELECT finished_at FROM runs WHERE id = ?", (run_id,))[0]["finished_at"]
    return epoch_s(finished) - epoch_s(gate)


def one_run(
    server: Server, ws: Workspace, browser: Browser | None, name: str, gates: Path
) -> tuple[float, float | None]:
    """(engine seconds, page catch-up seconds or None when unwatched)."""
    gate_dir = Path(tempfile.mkdtemp(dir=gates))
    run_id = server.start_run(name, {"gate_dir": str(gate_dir)})
    wait_running(ws, run_id, "gate")
    page = None
    if browser is not None:
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.goto(f"{server.base_url}/runs/{run_id}")
        page.wait_for_selector("[data-testid=card-header-gate]")
        page.wait_for_load_state("networkidle")  # loaded and settled, as a tab watching a long run is
        page.evaluate(WATCH_JS)
    (gate_dir / "go").touch()
    row = wait_finished(ws, run_id)
    catch_up = None
    if page is not None:
        page.wait_for_function("window.completedAt !== null", timeout=120_000)
        catch_up = page.evaluate("window.completedAt") / 1000 - epoch_s(row["finished_at"])
        page.close()
    return engine_seconds(ws, run_id), catch_up


def build_ms(server: Server, steps: int, reps: int) -> tuple[float, float, int]:
    run_id = server.start_run(f"steps-{steps}")
    server.wait_run(run_id, "completed", timeout_s=300)
    samples = []
    size = 0
    for i in range(reps + 1):
        t0 = time.perf_counter()
        response = server.client.get(f"/runs/{run_id}")
        elapsed = (time.perf_counter() - t0) * 1000
        if response.status_code != 200 or "run-root" not in response.text:
            raise SystemExit(f"GET /runs/{run_id} -> {response.status_code}:\n{server.log_tail()}")
        size = len(response.content)
        if i:
            samples.append(elapsed)
    return statistics.median(samples), max(samples), size


def usable_s(server: Server, browser: Browser, steps: int, reps: int) -> list[float]:
    run_id = server.start_run(f"steps-{steps}")
    server.wait_run(run_id, "completed", timeout_s=300)
    times = []
    for _ in range(reps):
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        t0 = time.perf_counter()
        page.goto(f"{server.base_url}/runs/{run_id}", wait_until="commit")
        page.wait_for_function(
            "document.querySelector('[data-testid^=card-header-]') !== null"
            f" && document.querySelector('[data-testid=overview]')?.dataset.cells === '{steps}'"
            " && document.querySelector('[data-testid=overview]').width > 0",
            timeout=60_000,
        )
        times.append(time.perf_counter() - t0)
        page.close()
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ui", description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=1000, help="steps of the watched run (default 1000)")
    parser.add_argument("--reps", type=int, default=3, help="repetitions of each shape (default 3)")
    args = parser.parse_args(argv)
    if not CHROMIUM.exists():
        print(f"Chromium is missing at {CHROMIUM}: sudo apt-get install -y chromium", file=sys.stderr)
        return 2
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="stepdeck-bench-ui-") as tmp:
        gates = Path(tmp) / "gates"
        gates.mkdir()
        chain = f"chain-{args.steps}"
        ws = Workspace(
            Path(tmp) / "ws",
            workflows={
                chain: gated_chain(chain, args.steps),
                "steps-300": many_steps("steps-300", 300),
                "steps-2000": many_steps("steps-2000", 2000),
            },
            modules={"e2e_steps": STEPS_MODULE},
        )
        with serving(ws) as server, sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            try:
                unwatched: list[float] = []
                watched: list[float] = []
                catch_ups: list[float] = []
                for rep in range(args.reps):
                    unwatched.append(one_run(server, ws, None, chain, gates)[0])
                    seconds, catch_up = one_run(server, ws, browser, chain, gates)
                    watched.append(seconds)
                    assert catch_up is not None
                    catch_ups.append(catch_up)
                    print(f"  (repetition {rep + 1} of {args.reps} done)", file=sys.stderr)
                builds = {steps: build_ms(server, steps, 5) for steps in (300, 2000)}
                usable = usable_s(server, browser, 2000, args.reps)
            finally:
                browser.close()
    n = args.steps
    u, w = statistics.median(unwatched), statistics.median(watched)
    ratio = w / u
    print(f"(a) a {n}-step sequential run (sync steps), medians of {args.reps} interleaved repetitions")
    print(f"    unwatched {u * 1000 / n:.3f} ms/step   watched by a Chromium tab {w * 1000 / n:.3f} ms/step")
    print(
        f"    watched / unwatched = {ratio:.2f}  (target <= {TARGET_WATCH_RATIO}: {_ok(ratio <= TARGET_WATCH_RATIO)})"
    )
    worst = max(catch_ups)
    print(
        f"(b) run finished -> page shows completed: median {statistics.median(catch_ups) * 1000:.0f} ms,"
        f" worst {worst * 1000:.0f} ms  (target <= {TARGET_CATCH_UP_S:.0f} s: {_ok(worst <= TARGET_CATCH_UP_S)})"
    )
    print("(c) server-side build of /runs/{id} (GET to full response; median of 5 after a first request)")
    for steps, (median, most, size) in builds.items():
        target = TARGET_BUILD_MS[steps]
        print(
            f"    {steps:>5} steps: median {median:6.1f} ms  max {most:6.1f} ms  page {size / 1024:.0f} KiB"
            f"  (target <= {target:.0f} ms: {_ok(median <= target)})"
        )
    best = statistics.median(usable)
    print(
        f"(d) 2000-step page usable in Chromium (first card and overview drawn): median {best:.2f} s,"
        f" worst {max(usable):.2f} s  (target <= {TARGET_USABLE_S:.0f} s: {_ok(best <= TARGET_USABLE_S)})"
    )
    print(f"total {time.monotonic() - started:.1f} s")
    return 0


def _ok(flag: bool) -> str:
    return "yes" if flag else "NO"


if __name__ == "__main__":
    sys.exit(main())
