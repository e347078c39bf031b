"""Real Chromium (Debian's, driven by Playwright) against `main.py serve` on a temporary workspace.

`playwright install` cannot download here: the browser is the system's /usr/bin/chromium, which
`.ci/run` installs with apt-get when it is missing. Without it these tests fail (never skip).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, sync_playwright

from tests.integration.served import ROOT, Server, Workspace, serving

CHROMIUM = Path(os.environ.get("STEPDECK_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
DESKTOP = {"width": 1280, "height": 900}
NARROW = {"width": 390, "height": 844}

STEP_COUNT = 50

# Step functions of the served process, imported from its workflows directory.
E2E_STEPS = '''
"""Step functions for the browser tests and the UI benchmark."""

import asyncio
from pathlib import Path


async def quick(ctx):
    return f"{ctx.step_key} done"


async def gated(ctx):
    """Waits until the file <inputs.gate_dir>/<step key> exists (the test creates it)."""
    gate = Path(ctx.inputs["gate_dir"]) / ctx.step_key
    while not gate.exists():
        await asyncio.sleep(0.002)
    return f"{ctx.step_key} released"
'''


def step_label(i: int) -> str:
    return f"Step {i:02d}"


def many_steps(name: str, count: int) -> str:
    """A workflow of `count` quick steps in sequence, keys s01…, labels 'Step 01'…."""
    steps = "".join(
        f"  - key: s{i:02d}\n    label: {step_label(i)}\n    call: e2e_steps:quick\n" for i in range(1, count + 1)
    )
    return f"name: {name}\nsteps:\n{steps}"


GATED_TRIO = """
name: gated-trio
inputs:
  gate_dir:
    type: string
steps:
  - key: alpha
    label: Alpha
    call: e2e_steps:quick
  - key: bravo
    label: Bravo
    call: e2e_steps:gated
  - key: charlie
    label: Charlie
    call: e2e_steps:quick
"""


def artifacts_dir() -> Path:
    """Where screenshots go: $STEPDECK_ARTIFACTS, or tests/e2e/artifacts/ (ignored by git)."""
    directory = Path(os.environ.get("STEPDECK_ARTIFACTS") or ROOT / "tests" / "e2e" / "artifacts")
    directory.mkdir(parents=True, exist_ok=True)
    return directory


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(
            f"Chromium is not installed at {CHROMIUM}: the browser tests need Debian's chromium "
            "(`sudo apt-get update && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y chromium`; "
            ".ci/run does this when it is missing), or set STEPDECK_CHROMIUM to another Chromium binary.",
            pytrace=False,
        )
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One served Stepdeck for the module, with a 50-step workflow and a gated one."""
    ws = Workspace(
        tmp_path_factory.mktemp("e2e"),
        workflows={"fifty": many_steps("fifty", STEP_COUNT), "gated-trio": GATED_TRIO},
        modules={"e2e_steps": E2E_STEPS},
    )
    with serving(ws) as served:
        yield served


@pytest.fixture(scope="module")
def fifty_run(server: Server) -> int:
    """A completed run of the 50-step workflow."""
    run_id = server.start_run("fifty")
    server.wait_run(run_id, "completed")
    return run_id


@pytest.fixture
def artifacts() -> Path:
    return artifacts_dir()
