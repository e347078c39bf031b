"""`wait_set`: an event with a time limit, and a cancellation that is never lost."""

from __future__ import annotations

import asyncio

import pytest

from engine.waits import wait_set


async def test_it_tells_whether_the_event_was_set_in_time() -> None:
    event = asyncio.Event()
    assert await wait_set(event, 0.01) is False
    asyncio.get_running_loop().call_soon(event.set)
    assert await wait_set(event, 10) is True
    assert await wait_set(event, None) is True  # set already: no wait


async def test_a_cancellation_in_the_moment_the_event_is_set_is_not_lost() -> None:
    # Python 3.11's asyncio.wait_for returns normally here, and a loop waiting so never stops.
    event = asyncio.Event()
    ended: list[str] = []

    async def loop() -> None:
        while True:
            await wait_set(event, 10)
            ended.append("woken")
            event.clear()

    task = asyncio.create_task(loop())
    await asyncio.sleep(0)  # the task waits on the event
    event.set()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 5)
    assert ended == []
