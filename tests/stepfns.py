"""Step functions used by the tests (referenced as `tests.stepfns:NAME` in definitions)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections import Counter
from typing import Any

CALLS: Counter[str] = Counter()
RELEASE = threading.Event()  # set by a test to let `blocked` steps finish


def reset() -> None:
    CALLS.clear()
    RELEASE.clear()


def alternatives(ctx: Any) -> list[str]:
    """Counts its calls; each call produces fresh alternatives that name the call."""
    CALLS["alternatives"] += 1
    n = CALLS["alternatives"]
    return [f"call{n}-alt{i}" for i in range(ctx.alternatives)]


def use_upstream(ctx: Any) -> str:
    CALLS["use_upstream"] += 1
    return "used:" + ",".join(str(v) for v in ctx.outputs.values())


def echo_inputs(ctx: Any) -> dict[str, Any]:
    return dict(ctx.inputs)


def noop(ctx: Any) -> str:
    CALLS["noop"] += 1
    return "ok"


async def anoop(ctx: Any) -> str:
    CALLS["anoop"] += 1
    return "ok"


def boom(ctx: Any) -> str:
    CALLS["boom"] += 1
    raise ValueError("the step exploded")


def fail_first(ctx: Any) -> str:
    """Fails on its first call, succeeds afterwards (a flaky step that a retry fixes)."""
    CALLS["fail_first"] += 1
    if CALLS["fail_first"] == 1:
        raise RuntimeError("transient failure")
    return f"succeeded on call {CALLS['fail_first']}"


async def sleepy(ctx: Any) -> str:
    """Sleeps for ctx.inputs['sleep_s'] (default 30 s): for timeouts and cancellation."""
    CALLS["sleepy"] += 1
    ctx.log("going to sleep")
    await asyncio.sleep(float(ctx.inputs.get("sleep_s", 30)))
    return "woke up"


def blocking(ctx: Any) -> str:
    """A sync step that blocks (in its thread) until RELEASE is set or it is cancelled."""
    CALLS["blocking"] += 1
    while not RELEASE.wait(0.01):
        if ctx.is_cancelled:
            return "noticed cancellation"
    return "released"


def sync_sleep(ctx: Any) -> str:
    CALLS["sync_sleep"] += 1
    time.sleep(float(ctx.inputs.get("sleep_s", 30)))
    return "slept"


def wrong_count(ctx: Any) -> list[str]:
    return ["only one"]


def not_json(ctx: Any) -> object:
    return object()


def progress_and_logs(ctx: Any) -> str:
    for i in range(3):
        ctx.progress((i + 1) / 3, f"part {i + 1}")
        ctx.log(f"line {i + 1}")
    return "done"


# --- added for the engine, operations and transitions tests --------------------------------------


def blocking_watch(ctx: Any) -> str:
    """Like `blocking`, and counts in CALLS['blocking_saw_cancel'] when it sees ctx.is_cancelled."""
    CALLS["blocking_watch"] += 1
    while not RELEASE.wait(0.01):
        if ctx.is_cancelled:
            CALLS["blocking_saw_cancel"] += 1
            return "noticed cancellation"
    return "released"


async def sleep_once(ctx: Any) -> str:
    """Logs, then sleeps 30 s on its first call (to be cancelled or interrupted); later calls return at once."""
    CALLS["sleep_once"] += 1
    n = CALLS["sleep_once"]
    ctx.log(f"call {n} started")
    if n == 1:
        await asyncio.sleep(30)
    return f"done on call {n}"


def own_timeout(ctx: Any) -> str:
    """Raises a TimeoutError of its own (an upstream API timing out), not the step's timeout."""
    CALLS["own_timeout"] += 1
    raise TimeoutError("the upstream API timed out")


async def nap(ctx: Any) -> str:
    """Sleeps ctx.inputs['sleep_s'] (default 0.5 s); the output names the step."""
    CALLS["nap"] += 1
    await asyncio.sleep(float(ctx.inputs.get("sleep_s", 0.5)))
    return f"{ctx.step_key} woke"


def collect(ctx: Any) -> dict[str, Any]:
    """Returns the outputs of its upstream steps by key (what a join step sees)."""
    CALLS["collect"] += 1
    return dict(ctx.outputs)


async def raises_cancelled(ctx: Any) -> str:
    """An async step whose own awaitable was cancelled by someone else (not the engine stopping it)."""
    CALLS["raises_cancelled"] += 1
    future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    future.cancel()
    return await future


def sync_raises_cancelled(ctx: Any) -> str:
    """A sync step that waits on a concurrent future someone else cancelled."""
    CALLS["sync_raises_cancelled"] += 1
    future: concurrent.futures.Future[str] = concurrent.futures.Future()
    future.cancel()
    return future.result()


# --- added for the run page tests (tests/ui/test_run_page.py) ------------------------------------

GATES: dict[str, threading.Event] = {}  # step key -> event a test sets to let `gated` finish


def gate(key: str) -> threading.Event:
    """The gate of the `gated` step with this key (created on first use, by the test or the step)."""
    return GATES.setdefault(key, threading.Event())


def gated(ctx: Any) -> str:
    """A sync step that blocks (in its thread) until the test sets `gate(step_key)`, or it is cancelled."""
    CALLS["gated"] += 1
    event = gate(ctx.step_key)
    while not event.wait(0.01):
        if ctx.is_cancelled:
            return "noticed cancellation"
    return f"{ctx.step_key} released"


def counted(ctx: Any) -> str:
    """Counts its calls per step key; the output names the step and the call (a re-execution shows)."""
    CALLS[f"counted:{ctx.step_key}"] += 1
    return f"{ctx.step_key} call {CALLS[f'counted:{ctx.step_key}']}"


def exits(ctx: Any) -> str:
    """A sync step that tries to end the process."""
    raise SystemExit(3)


async def interrupts(ctx: Any) -> str:
    """An async step that raises KeyboardInterrupt."""
    raise KeyboardInterrupt


def verbose(ctx: Any) -> str:
    """200 KB of logs and a 200 KB output: what a chatty step leaves on its attempt."""
    for i in range(200):
        ctx.log(f"line {i} " + "x" * 1000)
    return "y" * 200_000


def flaky(ctx: Any) -> str:
    """Fails `inputs.failures` times (default 2) per run, then succeeds: a flaky step that retries fix."""
    key = f"flaky:{ctx.run_id}:{ctx.step_key}"
    CALLS[key] += 1
    if CALLS[key] <= int(ctx.inputs.get("failures", 2)):
        raise RuntimeError(f"transient failure {CALLS[key]}")
    return f"succeeded on call {CALLS[key]}"


def fail_when_released(ctx: Any) -> str:
    """Blocks until RELEASE is set, then fails (a failure that comes while the engine is stopping)."""
    CALLS["fail_when_released"] += 1
    while not RELEASE.wait(0.01):
        if ctx.is_cancelled:
            return "noticed cancellation"
    raise RuntimeError("failed while the engine drained")


# --- log times ---------------------------------------------------------------------------------------

LOG_GAP_S = 0.05  # what `timed_logs` lets the clock advance between its first and second line


def _clock_moves_on(since_s: float) -> bool:
    return time.time() >= since_s + LOG_GAP_S


def timed_logs(ctx: Any) -> str:
    """Logs a line, lets the clock move on by LOG_GAP_S, then logs two more; fails when `inputs.fail`."""
    ctx.log("first")
    since_s = time.time()
    while not _clock_moves_on(since_s):
        time.sleep(0.005)
    ctx.log("second")
    ctx.log("third")
    if ctx.inputs.get("fail"):
        raise RuntimeError("failed after logging")
    return "logged"


async def timed_logs_async(ctx: Any) -> str:
    """`timed_logs` as an async step (its outcome is written from the event loop, not a worker thread)."""
    ctx.log("first")
    since_s = time.time()
    while not _clock_moves_on(since_s):  # noqa: ASYNC110 (the wall clock moving on is no event)
        await asyncio.sleep(0.005)
    ctx.log("second")
    ctx.log("third")
    if ctx.inputs.get("fail"):
        raise RuntimeError("failed after logging")
    return "logged"


def logs_between_gates(ctx: Any) -> str:
    """Blocks until the test sets `gate(step_key + ":log")`, logs a line, then blocks until `gate(step_key)`."""
    for name in (f"{ctx.step_key}:log", ctx.step_key):
        event = gate(name)
        while not event.wait(0.01):
            if ctx.is_cancelled:
                return "noticed cancellation"
        if name != ctx.step_key:
            ctx.log("through the first gate")
    return f"{ctx.step_key} released"
