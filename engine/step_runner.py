"""How one step executes within its run's driver: start it, run its kind, write its outcome.

Every exit of a step's execution ends in a true state: completed (its successors started in the same
commit), failed with the reason (an error, a timeout, a step that would not stop), or stopped with
the run. A sync python step completes in the worker thread it ran in (`ThreadFinish`), so it costs
one thread round trip, not two; the successor it starts in that commit, when it is a sync python step
too, runs next in the same thread (`Chained`) and is followed by the same task (`_go_on`): a chain of
such steps costs the event loop one wake-up per step and no new task. A step that ignores its
cancellation is abandoned after a grace period: its slot is freed and its attempt ends, though its
task may go on in the background.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import functools
import threading
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Any, TypeVar

from engine import kinds, logs, retry, transitions
from engine.context import StepContext, WaitForPerson
from engine.db import current
from engine.db.base import Database
from engine.definitions import MAX_TOKENS_LIMIT
from engine.llm.kind import TruncatedOutput
from engine.outputs import clean_text, normalize_outputs
from engine.records import AttemptRef, keep_partial_output, record_late_result, save_partial, utcnow
from engine.retry import FailureKind
from models.status import AttemptStatus, StepStatus

if TYPE_CHECKING:
    from engine.driver import RunDriver, StepState

log = logs.logger(__name__)

WRITE_RETRY_DELAYS_S = (0.1, 0.5, 2.0)
T = TypeVar("T")


class StopReason(StrEnum):
    SHUTDOWN = "shutdown"  # the engine is stopping
    CANCELLED = "cancelled"  # a person cancelled the run (the operation wrote its state)
    LOST = "lost"  # another process failed or took the run
    BROKEN = "broken"  # the database refused to record an outcome, even after retries


async def write(make: Callable[[], Awaitable[T]], what: str) -> T:
    """A transition, retried a few times on database errors (locked, I/O) before giving up."""
    for delay in (*WRITE_RETRY_DELAYS_S, None):
        try:
            return await make()
        except Exception as exc:
            if delay is None:
                raise
            log.warning("%s failed (%s: %s); retrying in %s s", what, type(exc).__name__, describe(exc), delay)
            await asyncio.sleep(delay)
    raise AssertionError("unreachable")


def describe(exc: BaseException | None) -> str:
    """An exception's text, even when its `__str__` itself raises."""
    try:
        return str(exc)
    except Exception as inner:
        return f"(its message could not be read: {type(inner).__name__})"


async def execute(
    driver: RunDriver, s: StepState, started: tuple[int, int] | None = None, chained: Chained | None = None
) -> None:
    """Run one step; `started` (attempt id, number) when a predecessor started it for us (`chained`: and its
    worker thread is executing it already).

    A predecessor that starts us also took our step slot; it is released when our task ends (a
    done-callback, so also when we are cancelled before running at all). The task holds one slot
    throughout: the chained successors it goes on with (`_go_on`) bring their own, and give back one.
    """
    slots = driver.engine.step_slots
    try:
        if started is None:
            if s.status == StepStatus.RETRYING and not await driver.wait_until(s.retry_at):
                return  # stopped or drained first: the retry stays pending in the database
            await slots.take()
            try:
                if driver.stopping:
                    return  # waited for a slot while the run was stopped or drained
                start = driver.start_of(s)
                attempt_id = await write(lambda: transitions.start_step(start), f"{s.defn.key}: start")
                if attempt_id is None:
                    driver.notice_outside_change()
                    return
                driver.mark_running(s, start.number)
                await _go_on(driver, s, await _attempt(driver, s, attempt_id, start.number))
            finally:
                slots.release()
        else:
            await _go_on(driver, s, await _attempt(driver, s, *started, chained=chained))
    except Exception as exc:
        # Not the step's failure (that is recorded by _attempt): the database refused our writes.
        log.exception("run %s: could not record the outcome of step %r", driver.run_id, s.defn.key)
        driver.broken = exc
        driver.stop(StopReason.BROKEN)


async def _go_on(driver: RunDriver, s: StepState, following: Following | None) -> None:
    """Execute, one after the other in this task, the chained successors that the worker thread went on
    with (`Chained`): the task becomes each one's, as a task spawned for it would be."""
    slots = driver.engine.step_slots
    while following is not None:
        successor, started, chained = following
        driver.advance(s.defn.key, successor)
        slots.release()  # the slot taken for the successor stands for the one this task held for `s`
        s = successor
        following = await _attempt(driver, s, *started, chained=chained)


@dataclass(slots=True)
class Finished:
    """What a sync step's worker thread did after the function returned."""

    handled: bool  # False: the thread left the completion to the event loop (`result` is the return value)
    result: Any = None
    error: Exception | None = None  # the return value cannot be stored (the step fails)
    outputs: list[Any] | None = None
    successors: list[tuple[StepState, transitions.StepStart]] = field(default_factory=list)
    completed: transitions.Completed | None = None  # what its commit wrote (None: nothing was committed)
    commit_error: Exception | None = None  # the database refused the commit: the loop writes it again
    chained: Chained | None = None  # a successor started with it, which this thread executes next

    @property
    def done(self) -> bool:
        """The completion committed."""
        return self.completed is not None and self.completed.done

    @property
    def then(self) -> kinds.InThread | None:
        """What the worker thread goes on with once it handed this over (`kinds._in_thread`)."""
        return self.chained.work if self.chained is not None else None


# A successor started in a completion's commit and executing in the worker thread already: the step, its
# attempt (id, number) and what the thread does with it; its task is the one of the step before.
Following = tuple["StepState", tuple[int, int], "Chained"]


@dataclass(slots=True)
class Chained:
    """A successor whose start committed with a sync step's completion, and that is a sync python step
    too: the worker thread executes it right away (no round trip through the event loop between two
    steps of a chain), and the loop adopts it (`_attempt`), with its context, as if it had started it.
    A task stopped before it could adopt it leaves it to `_unadopted`."""

    ctx: StepContext
    finish: ThreadFinish
    work: kinds.InThread
    adopted: bool = False


class ThreadFinish:
    """Completes a sync step's attempt in the worker thread it ran in: the outputs are checked and the
    completion (with the starts of the successors it makes ready) committed right there.

    A timeout or a stop on the event loop and a completion in the thread can race: `take_over` settles
    which one writes. Once the thread has started committing, the loop waits for its outcome.
    """

    def __init__(
        self,
        driver: RunDriver,
        s: StepState,
        ref: AttemptRef,
        ctx: StepContext,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        """Made on the event loop, or (a chained step) in a worker thread with the loop given."""
        self.driver, self.s, self.ref, self.ctx = driver, s, ref, ctx
        self._lock = threading.Lock()
        self._state = "open"  # → finishing (the thread writes) → finished | abandoned (the loop writes)
        self._finished: Finished | None = None
        self._waited = False  # the loop took over while the thread was committing: tell it when done
        self._loop = loop or asyncio.get_running_loop()
        self._outcome: asyncio.Future[Finished] | None = None  # made by `take_over`, on the event loop

    def __call__(self, result: Any) -> Finished:
        with self._lock:
            if self._state != "open" or self.ctx.cancelled.is_set():
                self._state = "abandoned"
                return Finished(handled=False, result=result)
            self._state = "finishing"
        finished = self._complete(result)
        with self._lock:
            self._state, self._finished = "finished", finished
            waited = self._waited
        if waited:  # otherwise the loop gets it as the thread's return value: one wake-up, not two
            assert self._outcome is not None
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
                self._loop.call_soon_threadsafe(_delivered_then_resolve, current(), self._outcome, finished)
        return finished

    def _complete(self, result: Any) -> Finished:
        d, ctx = self.s.defn, self.ctx
        try:
            outputs = normalize_outputs(result, d.alternatives)
        except Exception as exc:
            return Finished(handled=True, error=exc)
        index = 0 if d.select == "auto" else None
        successors = self.driver.successors_to_start(self.s, self.ref.number, index)
        completion = transitions.Completion(
            self.ref,
            outputs,
            index,
            ctx.logs,
            ctx.fraction,
            ctx.message,
            log_times=ctx.log_times,
            finishes_run=not successors and self.driver.completes_run(self.s, index),
        )
        try:
            completed = transitions.complete_step_and_start_blocking(completion, [st for _, st in successors])
        except Exception as exc:
            return Finished(handled=True, outputs=outputs, successors=successors, commit_error=exc)
        chained = None
        if completed.done and index is not None:
            chained = self._chain(outputs, index, successors, completed.started)
        return Finished(handled=True, outputs=outputs, successors=successors, completed=completed, chained=chained)

    def _chain(
        self,
        outputs: list[Any],
        index: int,
        successors: list[tuple[StepState, transitions.StepStart]],
        started: list[int | None],
    ) -> Chained | None:
        """The first successor started with this completion that is a sync python step, made ready to
        execute in this thread (its context sees this step's output)."""
        driver = self.driver
        if driver.stopping:
            return None
        for (successor, start), attempt_id in zip(successors, started, strict=True):
            d = successor.defn
            function = driver.sync_function(d)
            if attempt_id is None or function is None:
                continue
            key, output = self.s.defn.key, outputs[index]
            ctx = StepContext(
                run_id=driver.run_id,
                step_key=d.key,
                attempt=start.number,
                alternatives=d.alternatives,
                inputs=driver.inputs,
                outputs={n: output if n == key else driver.steps[n].output for n in d.needs},
                hub=driver.engine.hub,
            )
            ref = AttemptRef(driver.run_id, successor.id, d.key, attempt_id, start.number, driver.owner)
            finish = ThreadFinish(driver, successor, ref, ctx, self._loop)
            context = contextvars.copy_context()
            context.run(logs.bind, step=d.key, attempt=start.number)
            work = kinds.in_thread(self._loop, context, function, ctx, finish)
            return Chained(ctx, finish, work)
        return None

    def take_over(self) -> bool:
        """On a timeout or a stop: True when the thread is committing or has committed (await
        `outcome()`), else the thread will not write and the loop does."""
        with self._lock:
            self._outcome = self._outcome or self._loop.create_future()
            if self._state == "finished":
                assert self._finished is not None
                _resolve(self._outcome, self._finished)
                return True
            if self._state == "finishing":
                self._waited = True
                return True
            self._state = "abandoned"
            return False

    async def outcome(self) -> Finished:
        """What the thread did; after `take_over` returned True."""
        assert self._outcome is not None
        return await asyncio.shield(self._outcome)


def _resolve(future: asyncio.Future[Finished], finished: Finished) -> None:
    if not future.done():
        future.set_result(finished)


def _delivered_then_resolve(db: Database, future: asyncio.Future[Finished], finished: Finished) -> None:
    db.deliver_committed()  # the thread's commit reaches the hub before the loop acts on its outcome
    _resolve(future, finished)


_abandoned: set[asyncio.Task[Any]] = set()  # steps that ignored their cancellation, still running


async def _cancellable(coro: Awaitable[T], ctx: StepContext, grace_s: float) -> T:
    """Await a step's coroutine in a task of its own; when we are cancelled (a stop or the timeout),
    cancel it and wait up to `grace_s` for it to end. One that ignores its cancellation is abandoned
    (`ctx.abandoned`): we stop waiting, it may run on."""
    task = asyncio.ensure_future(coro)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        if not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=grace_s)
            if not task.done():
                ctx.abandoned = True
                _abandoned.add(task)
                task.add_done_callback(_abandoned.discard)
                log.error(
                    "run %s: step %r did not stop within %g s of being cancelled; abandoned (it may still run)",
                    ctx.run_id,
                    ctx.step_key,
                    grace_s,
                )
        raise


ABANDONED = "did not stop when cancelled (its task may still be running)"


async def _attempt(
    driver: RunDriver, s: StepState, attempt_id: int, number: int, chained: Chained | None = None
) -> Following | None:
    """Execute step `s`'s started attempt and write its outcome; what follows it in this task, if anything."""
    d = s.defn
    engine = driver.engine
    if d.kind == "llm" and s.retries_used and d.retry_max_tokens_factor != 1.0:
        base = int(d.config.get("max_tokens") or engine.settings.max_tokens)
        raised = retry.max_tokens_for(base, d.retry_policy, s.retries_used, MAX_TOKENS_LIMIT)
        d = dataclasses.replace(d, config={**d.config, "max_tokens": raised})
    ref = AttemptRef(driver.run_id, s.id, d.key, attempt_id, number, driver.owner)
    if chained is not None:
        chained.adopted = True
        ctx = chained.ctx
        logs.bind(step=d.key, attempt=number)
        if driver.stop_reason is not None:
            ctx.cancelled.set()  # stopped before we adopted it: its outcome is written as a stopped step's
    else:
        ctx = StepContext(
            run_id=driver.run_id,
            step_key=d.key,
            attempt=number,
            alternatives=d.alternatives,
            inputs=driver.inputs,
            outputs={n: driver.steps[n].output for n in d.needs},
            hub=engine.hub,
        )
    driver.contexts[d.key] = ctx
    executing = engine.hub.executing
    executing[(driver.run_id, d.key)] = ctx

    if chained is not None:
        finish: ThreadFinish | None = chained.finish
    else:
        finish = ThreadFinish(driver, s, ref, ctx) if driver.sync_function(d) is not None else None
    # A chained step whose thread has handed its outcome over already cannot time out any more (a timeout
    # would find its outcome written): no timer for it, and a chain of quick steps arms one per batch.
    handed_over = chained is not None and chained.work.future.done()
    timeout = asyncio.timeout(None if handed_over else d.timeout_s)
    try:
        async with timeout:
            if chained is not None:
                result = await kinds.thread_outcome(chained.work.future)
            else:
                run = kinds.KINDS[d.kind](d, ctx, _kind_env(driver, ref, finish))
                result = await (run if finish is not None else _cancellable(run, ctx, engine.settings.cancel_grace_s))
        if isinstance(result, Finished) and not result.handled:
            result = result.result  # the thread left the completion to us
        if not isinstance(result, Finished):
            result = normalize_outputs(result, d.alternatives)
    except asyncio.CancelledError as exc:
        ctx.cancelled.set()
        if finish is not None and finish.take_over():
            await asyncio.shield(_after_thread_outcome(driver, s, ref, ctx, finish))
            return None
        task = asyncio.current_task()
        if driver.stop_reason is None and task is not None and not task.cancelling():
            # Raised by the step itself, not a stop of ours: a failure like any other exception.
            await asyncio.shield(_failed(driver, s, ref, ctx, exc))
            return None
        await asyncio.shield(_stopped(driver, s, ref, ctx))
        return None
    except TimeoutError as exc:
        ctx.cancelled.set()
        if finish is not None and finish.take_over():
            await asyncio.shield(_after_thread_outcome(driver, s, ref, ctx, finish))
            return None
        if not timeout.expired():
            await asyncio.shield(_failed(driver, s, ref, ctx, exc))
            return None
        error = f"timed out after {d.timeout_s:g} s" + (f" and {ABANDONED}" if ctx.abandoned else "")
        await asyncio.shield(_fail(driver, s, ref, ctx, error, None, FailureKind.TIMEOUT))
        return None
    except WaitForPerson as hold:
        ctx.log(str(hold))
        await asyncio.shield(_completed(driver, s, ref, ctx, [], hold=True))
        return None
    except BaseException as exc:
        # Any exception of the step is its failure, BaseException subclasses of its own included.
        if isinstance(exc, (KeyboardInterrupt, SystemExit)) and not isinstance(exc, kinds.StepExit):
            exc = kinds.StepExit(f"the step raised {type(exc).__name__}({describe(exc)})")
        await asyncio.shield(_failed(driver, s, ref, ctx, exc))
        return None
    finally:
        if executing.get((driver.run_id, d.key)) is ctx:
            del executing[(driver.run_id, d.key)]
    # Outside the try: a stop arriving while the outcome is written must not write it a second time.
    if isinstance(result, Finished):
        if _committed(result):
            return _took_effect(driver, s, result)  # the common case, with nothing left to write: no wait
        await asyncio.shield(_after_thread(driver, s, ref, ctx, result))
    else:
        await asyncio.shield(_completed(driver, s, ref, ctx, result))
    return None


def _kind_env(driver: RunDriver, ref: AttemptRef, finish: ThreadFinish | None) -> kinds.KindEnv:
    engine = driver.engine

    async def checkpoint(text: str, llm: dict[str, Any] | None) -> None:
        await save_partial(ref, text, llm)

    return kinds.KindEnv(
        engine.threads,
        engine.settings,
        engine.providers,
        checkpoint,
        finish,
        driver.defn.max_cost,
        engine.hand_overs,
    )


async def _after_thread_outcome(
    driver: RunDriver, s: StepState, ref: AttemptRef, ctx: StepContext, finish: ThreadFinish
) -> None:
    """Wait for the committing thread, then act on what it did. Shielded as a whole by the caller: a
    second cancellation while waiting must not drop the slots the thread took for the successors."""
    await _after_thread(driver, s, ref, ctx, await finish.outcome())


async def _after_thread(driver: RunDriver, s: StepState, ref: AttemptRef, ctx: StepContext, f: Finished) -> None:
    """On the event loop, what the worker thread's completion did."""
    if not f.handled:
        await _completed(driver, s, ref, ctx, normalize_outputs(f.result, s.defn.alternatives))
        return
    if f.error is not None:
        await _failed(driver, s, ref, ctx, f.error)
        return
    assert f.outputs is not None
    if f.commit_error is not None or not f.done:
        for _ in f.successors:
            driver.engine.step_slots.release()
        if f.commit_error is not None:  # nothing was written: write it from here, with retries
            log.warning(
                "run %s: %s: completion failed in its thread (%s); retrying",
                ref.run_id,
                ref.key,
                describe(f.commit_error),
            )
            await _completed(driver, s, ref, ctx, f.outputs)
        else:
            await record_late_result(ref, AttemptStatus.COMPLETED)
            driver.notice_outside_change()
        return
    _spawn(driver, _took_effect(driver, s, f))


def _committed(f: Finished) -> bool:
    return f.handled and f.error is None and f.commit_error is None and f.done


def _took_effect(driver: RunDriver, s: StepState, f: Finished) -> Following | None:
    """The thread committed the completion (and the starts of the successors it made ready)."""
    index = 0 if s.defn.select == "auto" else None
    s.status = StepStatus.COMPLETED if index is not None else StepStatus.WAITING
    s.outputs, s.selected_index = f.outputs, index
    assert f.completed is not None
    driver.finished |= f.completed.finished
    return _start_successors(driver, f.successors, f.completed.started, f.chained)


def _start_successors(
    driver: RunDriver,
    successors: list[tuple[StepState, transitions.StepStart]],
    attempt_ids: list[int | None],
    chained: Chained | None = None,
) -> Following | None:
    """Tasks for the successors started in a completion's commit (each holds the slot taken for it), but
    for the `chained` one: it is executing in the worker thread already, and is returned for the task of
    the step before to follow it (`_go_on`), or to give it a task of its own (`_spawn`)."""
    slots = driver.engine.step_slots
    following: Following | None = None
    for (successor, start), attempt_id in zip(successors, attempt_ids, strict=True):
        if attempt_id is None:
            slots.release()
            driver.notice_outside_change()
            continue
        driver.mark_running(successor, start.number)
        adopted = chained if chained is not None and chained.ctx.step_key == successor.defn.key else None
        if adopted is not None:
            following = (successor, (attempt_id, start.number), adopted)
            continue
        if driver.stop_reason is not None:
            slots.release()  # stopped meanwhile: the stop's transition ends its attempt with the run
            continue
        task = driver.spawn(successor, (attempt_id, start.number))
        task.add_done_callback(lambda _: slots.release())
    return following


def _spawn(driver: RunDriver, following: Following | None) -> None:
    """A task of its own for a chained successor that the task of the step before cannot follow."""
    if following is None:
        return
    successor, started, chained = following
    task = driver.spawn(successor, started, chained)
    task.add_done_callback(lambda _: driver.engine.step_slots.release())
    task.add_done_callback(functools.partial(_unadopted, driver, successor, chained))


_orphans: set[asyncio.Task[None]] = set()  # outcomes of chained steps whose task was stopped before adopting them


def _unadopted(driver: RunDriver, s: StepState, chained: Chained, _: asyncio.Task[None]) -> None:
    """A chained step's task ended before adopting it (a stop cancelled it before it ran): tell the step
    to stop, and act on what its thread does (or did) as the task would have, so that nothing it started
    or the slots it took for its successors are left behind."""
    if chained.adopted:
        return
    chained.ctx.cancelled.set()
    finish = chained.finish
    if finish.take_over():
        orphan = asyncio.ensure_future(_after_orphan(driver, s, chained))
        _orphans.add(orphan)
        orphan.add_done_callback(_orphans.discard)


async def _after_orphan(driver: RunDriver, s: StepState, chained: Chained) -> None:
    try:
        await _after_thread_outcome(driver, s, chained.finish.ref, chained.ctx, chained.finish)
    except Exception:
        log.exception("run %s: could not record the outcome of step %r", driver.run_id, s.defn.key)


async def _completed(
    driver: RunDriver, s: StepState, ref: AttemptRef, ctx: StepContext, outputs: list[Any], hold: bool = False
) -> None:
    """Write the completion; successors it makes ready start in the same commit (saves a round trip).

    A hold (WaitForPerson) completes the attempt without output and leaves the step waiting. An output
    cut off at the token limit is retried instead when the step's `retry_on` lists `truncated` and
    retries are left (the last attempt completes under its `on_truncation` policy)."""
    if not hold and ctx.llm is not None and ctx.llm.truncated and _plan(driver, s, FailureKind.TRUNCATED) is not None:
        error = f"the output was cut off at the token limit (max_tokens={ctx.llm.max_tokens})"
        await _fail(driver, s, ref, ctx, error, None, FailureKind.TRUNCATED)
        return
    index = 0 if s.defn.select == "auto" and not hold else None
    successors = driver.successors_to_start(s, ref.number, index)
    starts = [start for _, start in successors]
    completion = transitions.Completion(
        ref,
        outputs,
        index,
        ctx.logs,
        ctx.fraction,
        ctx.message,
        _llm(ctx),
        log_times=ctx.log_times,
        finishes_run=not successors and driver.completes_run(s, index),
    )
    try:
        done, attempt_ids, finished = await write(
            lambda: transitions.complete_step_and_start(completion, starts), f"{s.defn.key}: completion"
        )
    except BaseException:
        for _ in successors:
            driver.engine.step_slots.release()
        raise
    if done:
        s.status = StepStatus.COMPLETED if index is not None else StepStatus.WAITING
        s.outputs, s.selected_index = outputs, index
        driver.finished |= finished
    else:
        driver.notice_outside_change()
    _spawn(driver, _start_successors(driver, successors, attempt_ids))


async def _failed(driver: RunDriver, s: StepState, ref: AttemptRef, ctx: StepContext, exc: BaseException) -> None:
    text = describe(exc)
    error = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    try:
        detail: str | None = "".join(traceback.format_exception(exc))
    except Exception:
        detail = None
    kind = FailureKind.TRUNCATED if isinstance(exc, TruncatedOutput) else FailureKind.ERROR
    if not await _fail(driver, s, ref, ctx, error, detail, kind):
        driver.notice_outside_change()


def _plan(driver: RunDriver, s: StepState, kind: FailureKind) -> retry.PendingRetry | None:
    """The retry the step's policy makes of this failure; never once the run is being stopped (cancelled,
    interrupted, taken away). A failure while the engine drains is retried: its retry waits in the queue."""
    if driver.stop_reason is not None:
        return None
    return retry.plan_retry(s.defn.retry_policy, s.retries_used, kind, utcnow())


async def _fail(
    driver: RunDriver,
    s: StepState,
    ref: AttemptRef,
    ctx: StepContext,
    error: str,
    detail: str | None,
    kind: FailureKind,
) -> bool:
    """Write the attempt's failure: the step fails, or waits for its retry when the policy retries it."""
    pending = _plan(driver, s, kind)
    planned = (pending, kind) if pending is not None else None
    failing = lambda: transitions.fail_step(  # noqa: E731
        ref, error, detail, ctx.logs, _partial(ctx), _llm(ctx), retry=planned, log_times=ctx.log_times
    )
    if not await write(failing, f"{s.defn.key}: failure"):
        return False
    s.error = error
    if pending is None:
        s.status = StepStatus.FAILED
    else:
        # Counted from when the failure is written, not when the retry was planned: the next attempt starts
        # at least the delay after the failed one's finish time.
        due = max(pending.due_at, utcnow() + timedelta(seconds=pending.delay_s))
        s.status, s.retry_at, s.retries_used = StepStatus.RETRYING, due, pending.retries_used
    return True


async def _stopped(driver: RunDriver, s: StepState, ref: AttemptRef, ctx: StepContext) -> None:
    if ctx.abandoned:
        ctx.log(f"the step {ABANDONED}")
    reason = driver.stop_reason
    if reason == StopReason.SHUTDOWN and driver.engine.settings.on_orphan == "resume":
        # The run is re-queued as a whole (`_finish`): this attempt ends failed, the step pending.
        if ctx.llm is not None or ctx.partial_text() is not None:
            saving = lambda: save_partial(ref, _partial(ctx), _llm(ctx), final=True)  # noqa: E731
            await write(saving, f"{s.defn.key}: save")
        return
    if reason in (StopReason.SHUTDOWN, StopReason.BROKEN):
        why = driver.engine.stop_reason if reason == StopReason.SHUTDOWN else "the engine could not record an outcome"
        error = driver.interrupted_reason(why) + (f"; the step {ABANDONED}" if ctx.abandoned else "")
        failing = lambda: transitions.fail_step(  # noqa: E731
            ref, error, None, ctx.logs, _partial(ctx), _llm(ctx), log_times=ctx.log_times
        )
        if await write(failing, f"{s.defn.key}: interrupt"):
            s.status, s.error = StepStatus.FAILED, error
    else:
        # The cancel operation already ended the attempt: keep what it had produced.
        await keep_partial_output(ref, _partial(ctx), ctx.logs, _llm(ctx), log_times=ctx.log_times)
        s.status = StepStatus.CANCELLED


def _partial(ctx: StepContext) -> str | None:
    text = ctx.partial_text()
    return clean_text(text) if text is not None else None


def _llm(ctx: StepContext) -> dict[str, Any] | None:
    return ctx.llm.to_json() if ctx.llm is not None else None
