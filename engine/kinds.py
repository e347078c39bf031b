"""Step kinds: how a step of each kind executes, given its definition and context."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import threading
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
from engine.llm.providers import Providers
from engine.settings import Settings
from models.errors import StepdeckError


@dataclass(frozen=True, slots=True)
class KindEnv:
    """What the engine lends a step's execution."""

    threads: Executor  # for sync work that must not stall the event loop
    settings: Settings
    providers: Providers  # the engine's model clients (LLM steps)
    # Saves streamed text (and the LLM record) on the running attempt, so a crash leaves it visible.
    checkpoint: Callable[[str, dict[str, Any] | None], Awaitable[None]]
    # Called in the worker thread with a sync function's return value: it completes the attempt right
    # there (see `engine/step_runner.py`), and its result is what the kind returns.
    finish: Callable[[Any], Any] | None = None
    max_cost: float | None = None  # the workflow's LLM budget per run (USD)
    hand_overs: HandOvers | None = None  # the engine's, for its worker threads' outcomes (else one per call)


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
    if _is_async(fn):
        try:
            try:
                return await fn(ctx)
            finally:
                forks.leave_if_forked()
        except (SystemExit, KeyboardInterrupt) as exc:
            raise _exit_of(exc) from exc
    return await thread_outcome(_in_thread(env.threads, fn, ctx, env.finish, env.hand_overs))


def sync_function(step: StepDef, settings: Settings) -> Callable[..., Any]:
    """The function of a step that `completes_in_thread`."""
    assert step.call is not None
    return _callable(step.call, settings.workflows_dir)


async def thread_outcome(future: asyncio.Future[Any]) -> Any:
    """What a sync step function's thread handed over: its return value (or what `finish` made of it), or
    its exception raised here."""
    try:
        result = await future
        if isinstance(result, _Raised):
            raise result.exc
        if inspect.isawaitable(result):
            result = await result
        return result
    except (SystemExit, KeyboardInterrupt) as exc:
        raise _exit_of(exc) from exc


def _exit_of(exc: BaseException) -> StepExit:
    # A step may not end the process that runs everyone's work: it is the step that fails.
    return StepExit(f"the step raised {type(exc).__name__}({exc})")


@dataclass(frozen=True, slots=True)
class InThread:
    """A sync step function to call in a worker thread, and where its outcome goes: `call` runs it (and
    its `finish`) in the step's own context; the outcome is handed over to `future` on the event loop."""

    call: Callable[[], Any]
    future: asyncio.Future[Any]


def in_thread(
    loop: asyncio.AbstractEventLoop,
    context: contextvars.Context,
    fn: Callable[..., Any],
    ctx: StepContext,
    finish: Callable[[Any], Any] | None,
) -> InThread:
    """The execution of a sync step function, made in any thread (the future belongs to `loop`)."""
    future: asyncio.Future[Any] = loop.create_future()
    return InThread(functools.partial(context.run, _capture, fn, ctx, finish), future)


def _in_thread(
    threads: Executor,
    fn: Callable[..., Any],
    ctx: StepContext,
    finish: Callable[[Any], Any] | None,
    hand_overs: HandOvers | None = None,
) -> asyncio.Future[Any]:
    """Run `fn(ctx)` in a worker thread (in a copy of this context). What it commits is delivered with its
    result, in one wake-up of the event loop (`engine.db.base.loop_woken_by_caller`). When its outcome
    names work to go on with in the same thread (`then`: the start of a successor it committed), the
    thread does that next, without a round trip through the loop."""
    loop = asyncio.get_running_loop()
    work = in_thread(loop, contextvars.copy_context(), fn, ctx, finish)
    handing = hand_overs or HandOvers(loop, current())

    def job() -> None:
        step: InThread | None = work
        while step is not None:
            result: Any = None
            error: BaseException | None = None
            loop_woken_by_caller(True)
            try:
                result = step.call()
            except BaseException as exc:  # `_capture` keeps the step's own exceptions: this is ours
                error = exc
            finally:
                loop_woken_by_caller(False)
            then = getattr(result, "then", None) if error is None else None
            following = then if isinstance(then, InThread) else None
            try:
                handing.put(step.future, result, error, last=following is None)
            except RuntimeError:
                return  # the loop is closed: nobody waits any more
            step = following

    submitted = threads.submit(job)
    work.future.add_done_callback(lambda f: submitted.cancel() if f.cancelled() else None)  # not started: never is
    return work.future


GATHER_S = 0.002  # how long the outcomes of a chain's steps may wait to be handed over together


class HandOvers:
    """The outcomes of sync steps, handed from worker threads to the event loop: at once when a thread's
    chain ends, else gathered for up to GATHER_S, so that chains of quick steps wake the loop once per
    batch rather than once per step (each wake-up takes the GIL from the threads that commit). One per
    engine (`Engine.hand_overs`): its worker threads share one timer."""

    def __init__(self, loop: asyncio.AbstractEventLoop, db: Database) -> None:
        self._loop, self._db = loop, db
        self._lock = threading.Lock()
        self._pending: list[tuple[asyncio.Future[Any], Any, BaseException | None]] = []
        self._armed = False

    def put(self, future: asyncio.Future[Any], result: Any, error: BaseException | None, *, last: bool) -> None:
        """Hand over a step's outcome (from the worker thread); RuntimeError when the loop is closed."""
        with self._lock:
            self._pending.append((future, result, error))
            if last:
                self._loop.call_soon_threadsafe(self._deliver)
            elif not self._armed:
                self._armed = True
                self._loop.call_soon_threadsafe(self._loop.call_later, GATHER_S, self._deliver)

    def _deliver(self) -> None:
        with self._lock:
            pending, self._pending, self._armed = self._pending, [], False
        if not pending:
            return
        self._db.deliver_committed()  # first: the hub hears of the commits before the steps' task goes on
        for future, result, error in pending:
            if future.done():
                continue  # its task gave up (timed out, stopped): the thread's commit was delivered all the same
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(result)


class StepExit(StepdeckError):
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
