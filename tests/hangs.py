"""What a hung test was waiting for: pytest-timeout shows the threads' stacks, which for a test stuck in
an event loop end in `select`. Shortly before the timeout fires, the stacks of every task of the running
event loops are taken and added to the test's report."""

from __future__ import annotations

import asyncio
import gc
import threading
import traceback
from collections.abc import Generator

import pytest

AHEAD_S = 20.0  # taken this long before pytest-timeout fires
TASKS = pytest.StashKey[list[str]]()


def timeout_of(item: pytest.Item) -> float:
    marker = item.get_closest_marker("timeout")
    if marker is not None and marker.args:
        return float(marker.args[0])
    return float(item.config.getini("timeout") or 0)


def running_loops() -> list[asyncio.AbstractEventLoop]:
    return [o for o in gc.get_objects() if isinstance(o, asyncio.AbstractEventLoop) and o.is_running()]


def task_stacks() -> str:
    out: list[str] = []
    for loop in running_loops():
        for _ in range(5):  # the set of tasks may change under us: it is read from another thread
            try:
                tasks = list(asyncio.all_tasks(loop))
                break
            except RuntimeError:
                continue
        else:
            continue
        out += [f"--- {task!r}\n{awaiting(task.get_coro())}" for task in tasks]
    return "\n".join(out) or "no running event loop"


def awaiting(coro: object) -> str:
    """Where a coroutine waits, down the chain of what each one awaits (a task's own stack stops at its
    outermost coroutine)."""
    lines: list[str] = []
    while coro is not None and len(lines) < 100:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "ag_frame", None) or getattr(coro, "gi_frame", None)
        if frame is not None:
            lines += traceback.format_list(traceback.extract_stack(frame, limit=1))
        nxt = getattr(coro, "cr_await", None) or getattr(coro, "ag_await", None) or getattr(coro, "gi_yieldfrom", None)
        if nxt is None:
            lines.append(f"  awaits {coro!r}\n" if frame is None else "")
        coro = nxt
    return "".join(lines)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Generator[None, None, None]:
    timeout = timeout_of(item)
    timer = None
    if timeout > AHEAD_S:
        taken = item.stash.setdefault(TASKS, [])
        timer = threading.Timer(timeout - AHEAD_S, lambda: taken.append(task_stacks()))
        timer.daemon = True
        timer.start()
    try:
        yield
    finally:
        if timer is not None:
            timer.cancel()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item) -> Generator[None, pytest.TestReport, None]:
    outcome = yield
    taken = item.stash.get(TASKS, [])
    if taken:
        outcome.get_result().sections.append(("asyncio tasks shortly before the timeout", taken.pop()))
