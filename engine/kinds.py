"""Step kinds: how a step of each kind executes, given its definition and context."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import inspect
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine import forks, logs
from engine.calls import resolve_call
from engine.context import StepContext
from engine.db import current
from engine.db.base import Database, loop_woken_by_caller
from engine.definitions import StepDef
from engine.llm.kind import run_llm
from engine.settings import Settings


@dataclass(frozen=True, slots=True)
class KindEnv:
    """What the engine lends a step's execution."""

    threads: Executor  # for sync work that must not stall the event loop
    settings: Settings
    # Saves streamed text (and the LLM record) on the running attempt, so a crash leaves it visible.
    checkpoint: Callable[[str, dict[str, Any] | None], Awaitable[None]]
    # Called in the worker thread with a sync function's return value: it completes the attempt right
    # there (see `engine/step_runner.py`), and its result is what the kind returns.
    finish: Callable[[Any], Any] | None = None
    max_cost: float | None = None  # the workflow's LLM budget per run (USD)


KindRunner = Callable[[StepDef, StepContext, KindEnv], Awaitable[Any]]


# Resolved once per process: definitions are checked when loaded, and re-importing per step would
# cost more than the engine's whole per-step budget.
_resolved: dict[tuple[str, Path | None], Callable[..., Any]] = {}


def _callable(call: str, workflows_dir: Path | None) -> Callable[..., Any]:
    fn = _resolved.get((call, workflows_dir))
    if fn is None:
        fn = _resolved[(call, workflows_dir)] = resolve_call(call, workflows_dir)
    return fn


def completes_in_thread(step: StepDef, settings: Settings) -> bool:
    """A python step whose function is sync: it runs, and can complete, in a worker thread."""
    return (
        step.kind == "python" and step.call is not None and not _is_async(_callable(step.call, settings.workflows_dir))
    )


def _is_async(fn: Callable[..., Any]) -> bool:
    return inspect.iscoroutinefunction(fn)


async def run_python(step: StepDef, ctx: StepContext, env: KindEnv) -> Any:
    """Call `module:function`; a sync function runs in a thread so it cannot stall the event loop."""
    assert step.call is not None
    fn = _callable(step.call, env.settings.workflows_dir)
    threads = env.threads
    try:
        if _is_async(fn):
            try:
                return await fn(ctx)
            finally:
                forks.leave_if_forked()
        result = await _in_thread(threads, _capture, fn, ctx, env.finish)
        if isinstance(result, _Raised):
            raise result.exc
        if inspect.isawaitable(result):
            result = await result
        return result
    except (SystemExit, KeyboardInterrupt) as exc:
        # A step may not end the process that runs everyone's work: it is the step that fails.
        raise StepExit(f"the step raised {type(exc).__name__}({exc})") from exc


def _in_thread(threads: Executor, fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
    """`fn(*args)` in a worker thread (in a copy of this context); what it commits is delivered with its
    result, in one wake-up of the event loop (`engine.db.base.loop_woken_by_caller`)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Any] = loop.create_future()
    context = contextvars.copy_context()
    db = current()

    def job() -> None:
        result: Any = None
        error: BaseException | None = None
        try:
            with loop_woken_by_caller():
                result = context.run(fn, *args)
        except BaseException as exc:  # `fn` captures the step's own exceptions: this is ours
            error = exc
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
            loop.call_soon_threadsafe(_hand_over, db, future, result, error)

    submitted = threads.submit(job)
    future.add_done_callback(lambda f: submitted.cancel() if f.cancelled() else None)  # not started: never is
    return future


def _hand_over(db: Database, future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    db.deliver_committed()  # first: the hub hears of the commit before the step's task goes on
    if future.done():
        return  # its task gave up (timed out, stopped): the thread's commit was delivered all the same
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class StepExit(Exception):
    """A step function tried to exit the process (sys.exit, KeyboardInterrupt)."""


class _Raised:
    """An exception raised in the thread, carried back as a value: asyncio would otherwise swap a
    TimeoutError or CancelledError for a new one without the step's traceback."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


def _capture(fn: Callable[..., Any], ctx: StepContext, finish: Callable[[Any], Any] | None) -> Any:
    try:
        result = fn(ctx)
    except BaseException as exc:
        return _Raised(exc)
    finally:
        forks.leave_if_forked()
    if finish is None or inspect.isawaitable(result):
        return result
    return finish(result)


def _logging_the_step(runner: KindRunner) -> KindRunner:
    """The step's key and attempt on the lines logged while it executes (its task, its worker thread)."""

    async def run(step: StepDef, ctx: StepContext, env: KindEnv) -> Any:
        logs.bind(step=step.key, attempt=ctx.attempt)
        return await runner(step, ctx, env)

    return run


KINDS: dict[str, KindRunner] = {"python": _logging_the_step(run_python), "llm": _logging_the_step(run_llm)}
