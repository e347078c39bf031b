"""Step functions for the benchmarks: they do nothing, so what is measured is the engine."""

from typing import Any


def noop(ctx: Any) -> str:
    return "ok"


async def anoop(ctx: Any) -> str:
    return "ok"
