"""Hooks that let tests put a real process in a chosen state, deterministically; inert unless set.

- `STEPDECK_TEST_PAUSE_AT=POINT`: the process stops at the named point, says so on stderr
  (`stepdeck: paused at POINT (pid N)`) and waits there until it is killed, so a test can kill -9 it
  exactly there. The points, `NAME` a migration (`models.0003_users`):
  `migrate:applied:NAME` its statements have run, nothing after them has (its commit, its record);
  `migrate:committed:NAME` it is committed, the next one has not started.
- `STEPDECK_TEST_PAGE_WORK_S=SECONDS`: building a dashboard page takes that much longer, one page at a time
  (as a busy server builds them): of a burst of N page loads, the last waits at least N times as long.

Nobody sets these outside tests; they are not settings.
"""

from __future__ import annotations

import asyncio
import os
import sys

PAUSE_AT = "STEPDECK_TEST_PAUSE_AT"
PAGE_WORK_S = "STEPDECK_TEST_PAGE_WORK_S"

_page_work: asyncio.Lock | None = None


async def pause_point(point: str) -> None:
    """Wait here forever when `STEPDECK_TEST_PAUSE_AT` names this point; return at once otherwise."""
    if os.environ.get(PAUSE_AT) != point:
        return
    print(f"stepdeck: paused at {point} (pid {os.getpid()})", file=sys.stderr, flush=True)
    await asyncio.Event().wait()  # nothing sets it: only a signal ends the process here


async def page_work() -> None:
    """The extra work of one page build under `STEPDECK_TEST_PAGE_WORK_S`; none unless it is set."""
    seconds = float(os.environ.get(PAGE_WORK_S) or 0)
    if seconds <= 0:
        return
    global _page_work
    if _page_work is None:
        _page_work = asyncio.Lock()
    async with _page_work:
        await asyncio.sleep(seconds)
