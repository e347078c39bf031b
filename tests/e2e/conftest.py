"""Real Chromium (Debian's, driven by Playwright) against `main.py serve` on a temporary workspace.

`playwright install` cannot download here: the browser is the system's /usr/bin/chromium, which
`.ci/run` installs with apt-get when it is missing. Without it these tests fail (never skip).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect, sync_playwright

from tests.integration.served import ROOT, Server, Workspace, serving
from tests.workflow_yaml import TOO_SHORT_STEP

# What a browser test waits for comes; on a loaded machine it comes later. A generous wait changes
# how long a failing test takes, never a verdict.
expect.set_options(timeout=20_000)

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
WIDE = {"width": 1400, "height": 900}
NARROW = {"width": 390, "height": 844}

STEP_COUNT = 50
LAST = f"s{STEP_COUNT:02d}"  # the key of the last step of the 50-step run
LONG_RUN = 300  # steps of the long runs (the overview strip, jumps, liveness)
FAILING_AT = (120, 250)  # the steps of the long mixed run that fail
LONG_TOKEN = "x" * 300  # the unbroken word in their error

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


def boom(ctx):
    raise ValueError("x" * 300)


def many_lines(ctx):
    for i in range(100):
        ctx.log(f"line {i + 1} of 100")
    return "logged"


async def gated_log(ctx):
    """Logs a line once the file <inputs.gate_dir>/<step key>-log exists, then waits like `gated`."""
    gate = Path(ctx.inputs["gate_dir"]) / f"{ctx.step_key}-log"
    while not gate.exists():
        await asyncio.sleep(0.002)
    ctx.log("through the first gate")
    return await gated(ctx)


async def gated_boom(ctx):
    """Fails once the file <inputs.gate_dir>/<step key> exists."""
    await gated(ctx)
    raise ValueError(f"{ctx.step_key} failed on purpose")


async def gated_pick(ctx):
    """Offers its alternatives once the file <inputs.gate_dir>/<step key> exists."""
    await gated(ctx)
    return [f"{ctx.step_key} option {i + 1}" for i in range(ctx.alternatives)]


def overlay(ctx):
    """Markdown a model could write to draw over the page."""
    return (
        "# A heading of the output\\n\\nBefore the overlay.\\n\\n"
        '<div style="position:fixed;top:0;left:0;width:100%;height:100%;background:red;z-index:99999" '
        'class="fixed inset-0">overlay</div>\\n\\nAfter the overlay.'
    )


def huge(ctx):
    """About 2 MB of text in numbered lines."""
    return "\\n".join(f"line {i:06d} " + "lorem ipsum dolor sit amet " * 2 for i in range(32_000))


def drafts(ctx):
    return [f"Draft {i + 1}: tide pools are small worlds, version {i + 1}." for i in range(ctx.alternatives)]


def nested(ctx):
    return {"title": "Nested", "sections": [{"name": f"s{i}", "words": i * 100} for i in range(3)]}
'''

# A cut-off LLM output, then a choice among three drafts, then a step made from the choice.
STATES = f"""
name: states
steps:
{TOO_SHORT_STEP}  - key: draft
    label: Drafts
    call: e2e_steps:drafts
    alternatives: 3
  - key: polish
    label: Polish
    call: e2e_steps:quick
"""

# A gate, then a model that writes for a few seconds (the simulated provider streams 60 tokens/s).
LIVE_LLM = """
name: live-llm
inputs:
  gate_dir:
    type: string
steps:
  - key: gate
    label: Gate
    call: e2e_steps:gated
  - key: write
    label: Write
    kind: llm
    prompt: Write a long story about tide pools.
    max_tokens: 400
"""

OUTPUTS = """
name: outputs
steps:
  - key: overlay
    call: e2e_steps:overlay
  - key: below
    call: e2e_steps:quick
  - key: huge
    call: e2e_steps:huge
  - key: nested
    call: e2e_steps:nested
"""


def step_label(i: int) -> str:
    return f"Step {i:02d}"


def many_steps(name: str, count: int) -> str:
    """A workflow of `count` quick steps in sequence, keys s01…, labels 'Step 01'…."""
    steps = "".join(
        f"  - key: s{i:02d}\n    label: {step_label(i)}\n    call: e2e_steps:quick\n" for i in range(1, count + 1)
    )
    return f"name: {name}\nsteps:\n{steps}"


def mixed_steps(name: str, count: int, failing: tuple[int, ...]) -> str:
    """`count` independent quick steps (keys s01…, labels 'Step 01'…); those numbered in `failing` raise
    an error whose message is one 300-character word."""
    steps = "".join(
        f"  - key: s{i:02d}\n    label: {step_label(i)}\n"
        f"    call: e2e_steps:{'boom' if i in failing else 'quick'}\n    needs: []\n"
        for i in range(1, count + 1)
    )
    return f"name: {name}\nsteps:\n{steps}"


def step(key: str, call: str, **fields: object) -> str:
    """One step of a workflow's YAML, labelled with its key capitalised: it calls e2e_steps:`call`, and `fields`
    are written as they are given."""
    extra = "".join(f"    {field}: {value}\n" for field, value in fields.items())
    return f"  - key: {key}\n    label: {key.capitalize()}\n    call: e2e_steps:{call}\n{extra}"


def gated_workflow(name: str, *steps: str) -> str:
    """A workflow of `steps` whose gated ones wait for files in the folder the run is given as `gate_dir`."""
    return f"name: {name}\ninputs:\n  gate_dir:\n    type: string\nsteps:\n{''.join(steps)}"


def gated_steps(name: str, count: int) -> str:
    """A gated first step (key `gate`, waits for the file <gate_dir>/gate) and then `count - 1` quick steps
    in sequence."""
    steps = "".join(f"  - key: s{i:02d}\n    call: e2e_steps:quick\n" for i in range(2, count + 1))
    return gated_workflow(name, "  - key: gate\n    call: e2e_steps:gated\n", steps)


def choice_at_the_end(name: str, before: int) -> str:
    """`before` quick steps in sequence, then a step with two alternatives waiting for a person (key `pick`)."""
    steps = "".join(
        f"  - key: s{i:02d}\n    label: {step_label(i)}\n    call: e2e_steps:quick\n" for i in range(1, before + 1)
    )
    pick = "  - key: pick\n    label: Pick one\n    call: e2e_steps:gated_pick\n    alternatives: 2\n"
    return gated_workflow(name, steps, pick)


LONG_LOG = """
name: long-log
steps:
  - key: many
    call: e2e_steps:many_lines
"""


GATED_TRIO = gated_workflow("gated-trio", step("alpha", "quick"), step("bravo", "gated"), step("charlie", "quick"))

# Bravo fails and charlie waits for a choice, each when the test lets it (both start at once).
LIVE_ATTENTION = gated_workflow(
    "live-attention",
    step("alpha", "quick"),
    step("bravo", "gated_boom"),
    step("charlie", "gated_pick", alternatives=2, needs="[alpha]"),
)

# A step that logs a line when the test lets it, then runs on until the test lets it finish.
LIVE_LOG = gated_workflow("live-log", step("talk", "gated_log"))


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


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One served Stepdeck for the module, with the workflows of the run page's tests."""
    ws = Workspace(
        tmp_path_factory.mktemp("e2e"),
        workflows={
            "fifty": many_steps("fifty", STEP_COUNT),
            "gated-trio": GATED_TRIO,
            "long": many_steps("long", LONG_RUN),
            "long-mixed": mixed_steps("long-mixed", LONG_RUN, FAILING_AT),
            "long-gated": gated_steps("long-gated", LONG_RUN),
            "choice-at-the-end": choice_at_the_end("choice-at-the-end", 60),
            "live-attention": LIVE_ATTENTION,
            "outputs": OUTPUTS,
            "states": STATES,
            "live-llm": LIVE_LLM,
            "live-log": LIVE_LOG,
            "long-log": LONG_LOG,
        },
        modules={"e2e_steps": E2E_STEPS},
    )
    with serving(ws) as served:
        yield served


@pytest.fixture(scope="session")
def fifty_run(server: Server) -> int:
    """A completed run of the 50-step workflow."""
    run_id = server.start_run("fifty")
    server.wait_run(run_id, "completed")
    return run_id


@pytest.fixture(scope="session")
def long_run(server: Server) -> int:
    """A completed run of 300 quick steps."""
    run_id = server.start_run("long")
    server.wait_run(run_id, "completed", timeout_s=120)
    return run_id


@pytest.fixture(scope="session")
def mixed_run(server: Server) -> int:
    """A failed run of 300 independent steps, of which s120 and s250 failed (a 300-character word in the error)."""
    run_id = server.start_run("long-mixed")
    run = server.wait_run(run_id, "failed", timeout_s=120)
    failed = [s["key"] for s in run["steps"] if s["status"] == "failed"]
    assert failed == [f"s{i:02d}" for i in FAILING_AT], failed
    return run_id


@pytest.fixture(scope="module")
def shared_context(browser: Browser) -> Iterator[BrowserContext]:
    """The browser context of a module's `page` (wide) and `narrow` pages. Its HTTP cache keeps NiceGUI's scripts,
    styles and fonts (served as immutable) from one test to the next, as a person's browser does: a page
    opened in a new context fetches and compiles them all again. What a test could leave behind is
    cleared around each test (see `new_page`)."""
    context = browser.new_context(viewport={"width": WIDE["width"], "height": WIDE["height"]})
    try:
        yield context
    finally:
        context.close()


def _fresh(context: BrowserContext) -> None:
    """No cookie (the browser's id, and so the theme a person chose; a sign-in) and not offline. The pages'
    own storage (NiceGUI's tab id in sessionStorage) goes with each page."""
    context.clear_cookies()
    context.set_offline(False)


def new_page(context: BrowserContext, size: dict[str, int]) -> Iterator[Page]:
    """A new page of `size` in `context`, the light colour scheme, as in a new context."""
    _fresh(context)
    page = context.new_page()
    try:
        page.set_viewport_size({"width": size["width"], "height": size["height"]})
        yield page
    finally:
        page.close()
        _fresh(context)


@pytest.fixture
def page(shared_context: BrowserContext) -> Iterator[Page]:
    """A new page in a wide window (WIDE): the page of most browser tests."""
    yield from new_page(shared_context, WIDE)


@pytest.fixture
def narrow(shared_context: BrowserContext) -> Iterator[Page]:
    yield from new_page(shared_context, NARROW)


@pytest.fixture
def artifacts() -> Path:
    return artifacts_dir()
