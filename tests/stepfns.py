"""Step functions used by the tests (referenced as `tests.stepfns:NAME` in definitions)."""

from __future__ import annotations

import asyncio
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
