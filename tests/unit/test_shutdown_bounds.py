"""A shutdown handler that hangs cannot hold the process: it is given up after its limit, with an error
that names it, and the handlers after it still run."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from ui.app import bounded


async def test_a_hanging_handler_is_given_up_after_its_limit_and_named_in_the_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    never = asyncio.Event()
    after: list[str] = []
    handlers = [bounded("a stuck thing", never.wait, 0.2), bounded("the next thing", lambda: after.append("ran"), 5)]
    started = time.monotonic()
    with caplog.at_level(logging.ERROR, logger="stepdeck.ui.app"):
        for handler in handlers:
            await handler()
    assert time.monotonic() - started < 30  # given up, not waited for (the limit is 0.2 s)
    assert after == ["ran"]
    assert any("stopping a stuck thing took longer than 0.2 s" in r.getMessage() for r in caplog.records)


async def test_a_handler_that_ends_in_time_is_waited_for_and_logs_nothing(caplog: pytest.LogCaptureFixture) -> None:
    done: list[str] = []

    async def quick() -> None:
        await asyncio.sleep(0.01)
        done.append("stopped")

    with caplog.at_level(logging.ERROR, logger="stepdeck.ui.app"):
        await bounded("a quick thing", quick, 30)()
    assert done == ["stopped"]
    assert not caplog.records


async def test_an_error_of_a_handler_is_not_swallowed() -> None:
    async def broken() -> None:
        raise RuntimeError("could not stop")

    with pytest.raises(RuntimeError, match="could not stop"):
        await bounded("a broken thing", broken, 30)()
