"""Run page figures on a served Stepdeck (`main.py serve` as a subprocess, a temporary SQLite file).

    uv run python -m bench.ui [--reps 5] [--gated 30]

(a) Server-side render time of `/runs/{id}` for runs of 50 and 300 steps: from sending the HTTP GET
    to having read the whole response (the page is built on the server before it answers).
(b) Live delay: with Chromium (Playwright, /usr/bin/chromium) on a run page, N gated steps are
    completed one at a time. For each, the engine's commit time is the `created_at` (UTC) of the
    step's `completed` event, and the browser's time is Date.now() recorded by a MutationObserver
    when the pill dot's class turns to the completed colour. Same machine, same clock.
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

from playwright.sync_api import sync_playwright

from tests.e2e.conftest import CHROMIUM, CHROMIUM_ARGS, E2E_STEPS, many_steps
from tests.integration.served import Server, Workspace, serving

TARGET_P95_MS = 250.0
TARGET_RENDER_300_MS = 1000.0  # "a run with 300 steps opens in under 1 s"
COMPLETED_CLASS = "text-green-6"

# Records, per pill label, when its dot first shows the completed colour. Observing the whole bar
# (attributes and children) also catches a dot that Vue replaces instead of patching.
OBSERVER_JS = """
([completedClass]) => {
    const bar = [...document.querySelectorAll('.sticky')].find(e => e.textContent.includes('Expand all'));
    if (!bar) throw new Error('no sticky bar on the page');
    window.pillDone = {};
    const check = () => {
        const now = Date.now();
        for (const pill of bar.querySelectorAll('button')) {
            const dot = pill.querySelector('i.q-icon');
            const label = dot && dot.nextElementSibling;  // the pill's label follows its dot
            if (!label) continue;
            const name = label.textContent.trim();
            if (!(name in window.pillDone) && dot.classList.contains(completedClass)) window.pillDone[name] = now;
        }
    };
    check();
    new MutationObserver(check).observe(bar, {subtree: true, childList: true, attributes: true,
                                              attributeFilter: ['class']});
    return Object.keys(window.pillDone).length;
}
"""


def gate_label(i: int) -> str:
    return f"Gate {i:02d}"


def gated_steps(name: str, count: int) -> str:
    steps = "".join(
        f"  - key: g{i:02d}\n    label: {gate_label(i)}\n    call: e2e_steps:gated\n" for i in range(1, count + 1)
    )
    return f"name: {name}\ninputs:\n  gate_dir:\n    type: string\nsteps:\n{steps}"


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (no interpolation: with 30 samples p95 is the 29th smallest)."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(p / 100 * len(ordered) + 0.499999)))
    return ordered[rank - 1]


def epoch_ms(stored: str) -> float:
    at = datetime.fromisoformat(stored)
    assert at.tzinfo is not None, f"event time without a zone: {stored!r}"
    return at.timestamp() * 1000


# --- (a) render time ----------------------------------------------------------------------------------


def render_times(server: Server, steps: int, reps: int) -> dict[str, Any]:
    run_id = server.start_run(f"steps-{steps}")
    server.wait_run(run_id, "completed", timeout_s=60)
    samples: list[float] = []
    cold = 0.0
    for i in range(reps + 1):
        t0 = time.perf_counter()
        response = server.client.get(f"/runs/{run_id}")
        elapsed_ms = (time.perf_counter() - t0) * 1000
        if response.status_code != 200 or f"Step {steps:02d}" not in response.text:
            raise SystemExit(f"GET /runs/{run_id} -> {response.status_code}, no last step:\n{server.log_tail()}")
        if i == 0:
            cold = elapsed_ms
        else:
            samples.append(elapsed_ms)
    return {
        "steps": steps,
        "first_ms": cold,
        "median_ms": statistics.median(samples),
        "max_ms": max(samples),
        "bytes": len(response.content),
    }


# --- (b) live delay --------------------------------------------------------------------------------


def live_delays(server: Server, ws: Workspace, count: int, gate_dir: Path) -> list[float]:
    run_id = server.start_run(f"gated-{count}", {"gate_dir": str(gate_dir)})
    server.wait_step(run_id, "g01", "running")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(f"{server.base_url}/runs/{run_id}")
            page.wait_for_selector("text=Expand all")
            page.wait_for_function("document.querySelector('.q-icon.text-blue-6') !== null")  # g01 shown running
            already = page.evaluate(OBSERVER_JS, [COMPLETED_CLASS])
            if already:
                raise SystemExit(f"{already} pills were completed before any gate opened")
            for i in range(1, count + 1):
                (gate_dir / f"g{i:02d}").touch()
                page.wait_for_function(f"window.pillDone[{gate_label(i)!r}] !== undefined", timeout=10_000)
            seen: dict[str, float] = page.evaluate("window.pillDone")
        finally:
            browser.close()
    server.wait_run(run_id, "completed")
    rows = ws.sql(
        "SELECT step_key, created_at FROM events WHERE run_id = ? AND kind = 'step' AND to_status = 'completed'",
        (run_id,),
    )
    committed = {r["step_key"]: epoch_ms(r["created_at"]) for r in rows}
    return [seen[gate_label(i)] - committed[f"g{i:02d}"] for i in range(1, count + 1)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ui", description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=5, help="GETs per run size after a first one (default 5)")
    parser.add_argument("--gated", type=int, default=30, help="steps completed one at a time (default 30)")
    args = parser.parse_args(argv)
    if not CHROMIUM.exists():
        print(f"Chromium is missing at {CHROMIUM}: sudo apt-get install -y chromium", file=sys.stderr)
        return 2
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="stepdeck-bench-ui-") as tmp:
        gate_dir = Path(tmp) / "gates"
        gate_dir.mkdir()
        ws = Workspace(
            Path(tmp) / "ws",
            workflows={
                "steps-50": many_steps("steps-50", 50),
                "steps-300": many_steps("steps-300", 300),
                f"gated-{args.gated}": gated_steps(f"gated-{args.gated}", args.gated),
            },
            modules={"e2e_steps": E2E_STEPS},
        )
        with serving(ws) as server:
            print(
                f"(a) server-side render time of /runs/{{id}} (GET to full response; {args.reps} repeats after a first)"
            )
            for steps in (50, 300):
                r = render_times(server, steps, args.reps)
                print(
                    f"    {r['steps']:>3} steps: median {r['median_ms']:7.1f} ms   max {r['max_ms']:7.1f} ms"
                    f"   (first request {r['first_ms']:.1f} ms, page {r['bytes'] / 1024:.0f} KiB)"
                )
            verdict = "yes" if max(r["max_ms"], r["first_ms"]) < TARGET_RENDER_300_MS else "NO"
            print(f"    300 steps always under {TARGET_RENDER_300_MS:.0f} ms: {verdict}")
            delays = live_delays(server, ws, args.gated, gate_dir)
    p50, p95 = percentile(delays, 50), percentile(delays, 95)
    print(f"(b) step completed (event committed) -> pill colour changed in Chromium, {len(delays)} steps")
    print(f"    p50 {p50:.1f} ms   p95 {p95:.1f} ms   max {max(delays):.1f} ms   min {min(delays):.1f} ms")
    print(f"    p95 < {TARGET_P95_MS:.0f} ms: {'yes' if p95 < TARGET_P95_MS else 'NO'}")
    print(f"total {time.monotonic() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
