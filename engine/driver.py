"""Drives one claimed run: starts ready steps, executes them, writes outcomes, finishes the run.

Readiness comes from status alone: a step runs when it is PENDING and all its needs are COMPLETED,
never because an output or an alternative is (or is not) present. Every exit path (success,
error, timeout, cancellation, shutdown, a bug of ours) ends in a true state, written through
`engine/transitions.py`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from engine import transitions
from engine.context import StepContext, executing
from engine.definitions import StepDef, WorkflowDef
from engine.kinds import KINDS, KindEnv
from engine.outputs import clean_text, normalize_outputs
from engine.store import fetch
from models.status import RunStatus, StepStatus

if TYPE_CHECKING:
    from engine.executor import Engine

log = logging.getLogger(__name__)

SHUTDOWN = "shutdown"
CANCELLED = "cancelled"
LOST = "lost"
BROKEN = "broken"  # the database refused to record an outcome, even after retries
WRITE_RETRY_DELAYS_S = (0.1, 0.5, 2.0)
T = TypeVar("T")


async def _write(make: Callable[[], Awaitable[T]], what: str) -> T:
    """A transition, retried a few times on database errors (locked, I/O) before giving up."""
    for delay in (*WRITE_RETRY_DELAYS_S, None):
        try:
            return await make()
        except Exception as exc:
            if delay is None:
                raise
            log.warning("%s failed (%s: %s); retrying in %s s", what, type(exc).__name__, exc, delay)
            await asyncio.sleep(delay)
    raise AssertionError("unreachable")


@dataclass(slots=True)
class StepState:
    """What the driver knows of one step; refreshed from the database after outside changes."""

    id: int
    defn: StepDef
    status: StepStatus
    attempt: int
    outputs: list[Any] | None = None
    selected_index: int | None = None
    error: str | None = None

    @property
    def output(self) -> Any:
        if self.outputs is None or self.selected_index is None:
            return None
        return self.outputs[self.selected_index]


@dataclass(eq=False)
class RunDriver:
    engine: Engine
    run_id: int
    stop_reason: str | None = None
    dirty: bool = False
    steps: dict[str, StepState] = field(default_factory=dict)
    tasks: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    contexts: dict[str, StepContext] = field(default_factory=dict)
    _dependents: dict[str, list[str]] = field(default_factory=dict)
    _signal: asyncio.Future[None] | None = None  # resolved by outside changes to wake the loop
    _running_at_stop: list[str] = field(default_factory=list)
    broken: BaseException | None = None
    draining: bool = False  # the engine is stopping: in-flight steps may finish, no new step starts

    # --- outside signals (called from the engine's hub listener) --------------------------------

    def notice_outside_change(self) -> None:
        self.dirty = True
        self._signal_loop()

    def _signal_loop(self) -> None:
        if self._signal is not None and not self._signal.done():
            self._signal.set_result(None)

    def drain(self) -> None:
        """Start no new step; the run ends when its in-flight steps have (see `_finish`)."""
        self.draining = True
        self._signal_loop()

    def stop(self, reason: str) -> None:
        """Stop in-flight work: `cancelled` (already written by the operation), `shutdown`, or `lost`
        (another process failed or took the run). Lost steps are told to stop but not cancelled: a
        result they still return is then recorded as a late result instead of vanishing (their
        timeout still bounds them)."""
        if self.stop_reason is None:
            self.stop_reason = reason
            self._running_at_stop = [k for k, s in self.steps.items() if s.status == StepStatus.RUNNING]
        for ctx in self.contexts.values():
            ctx.cancelled.set()
        if reason != LOST:
            for task in self.tasks.values():
                task.cancel()
        self._signal_loop()

    # --- the run ---------------------------------------------------------------------------------

    async def drive(self) -> None:
        try:
            self.defn, self.inputs = await self._load()
            for _ in range(1000):
                await self._loop()
                if await self._finish():
                    break
                await asyncio.sleep(0.02)  # someone changed a step between our decision and its commit
                await self._refresh()
            else:
                raise RuntimeError("the run's steps kept changing while it was being finished")
        except asyncio.CancelledError:
            # The engine is going away while we drive: nothing may stay RUNNING.
            await asyncio.shield(self._fail_quietly(f"interrupted: the engine stopped ({self.engine.owner})"))
            raise
        except Exception as exc:
            log.exception("run %s: driver error", self.run_id)
            await asyncio.shield(self._fail_quietly(f"engine error: {type(exc).__name__}: {exc}"))

    async def _fail_quietly(self, reason: str) -> None:
        """Fail the run; if even that cannot be written, leave it to the sweep (it stops beating)."""
        try:
            await _write(lambda: self._fail(reason), f"run {self.run_id}: failing it")
        except Exception:
            log.exception("run %s: could not record its failure; the sweep will fail it", self.run_id)

    async def _load(self) -> tuple[WorkflowDef, dict[str, Any]]:
        rows = await fetch("SELECT definition, inputs FROM runs WHERE id = ?", (self.run_id,))
        defn = WorkflowDef.from_snapshot(_json(rows[0]["definition"]))
        self._dependents = {s.key: [] for s in defn.steps}
        for s in defn.steps:
            for need in s.needs:
                self._dependents[need].append(s.key)
        await self._refresh(defn)
        return defn, _json(rows[0]["inputs"])

    async def _refresh(self, defn: WorkflowDef | None = None) -> None:
        defn = defn or self.defn
        rows = await fetch(
            "SELECT s.id, s.key, s.status, s.attempt, a.outputs, a.selected_index, a.error FROM steps s"
            " LEFT JOIN attempts a ON a.step_id = s.id AND a.number = s.attempt WHERE s.run_id = ?",
            (self.run_id,),
        )
        by_key = {r["key"]: r for r in rows}
        for s in defn.steps:
            r = by_key[s.key]
            if s.key in self.tasks:
                continue  # ours while in flight
            self.steps[s.key] = StepState(
                id=r["id"],
                defn=s,
                status=StepStatus(r["status"]),
                attempt=r["attempt"],
                outputs=_json(r["outputs"]) if r["outputs"] is not None else None,
                selected_index=r["selected_index"],
                error=r["error"],
            )
        self.dirty = False

    def _ready(self, candidates: list[str]) -> list[StepState]:
        if self.draining:
            return []
        ready = []
        for key in dict.fromkeys(candidates):  # a join appears once per need that just finished
            s = self.steps[key]
            if s.status != StepStatus.PENDING or key in self.tasks:
                continue
            if all(self.steps[n].status == StepStatus.COMPLETED for n in s.defn.needs):
                ready.append(s)
        return ready

    async def _loop(self) -> None:
        candidates = list(self.steps)
        while self.stop_reason is None:
            for s in self._ready(candidates):
                self.tasks[s.defn.key] = asyncio.create_task(self._execute(s), name=f"run{self.run_id}:{s.defn.key}")
            if not self.tasks:
                return
            if self._signal is None or self._signal.done():
                self._signal = asyncio.get_running_loop().create_future()
            done, _ = await asyncio.wait([*self.tasks.values(), self._signal], return_when=asyncio.FIRST_COMPLETED)
            candidates = []
            for key, task in list(self.tasks.items()):
                if task in done:
                    del self.tasks[key]
                    self.contexts.pop(key, None)
                    candidates.extend(self._dependents[key])
            if self.dirty:
                await self._refresh()
                candidates = list(self.steps)
        # Stopped: let the cancelled step tasks write what they must before we decide.
        if self.tasks:
            await asyncio.gather(*self.tasks.values(), return_exceptions=True)
            self.tasks.clear()

    async def _finish(self) -> bool:
        """Write the run's outcome; False when the steps changed meanwhile and driving must go on."""
        if self.stop_reason in (CANCELLED, LOST):
            return True  # the operation that cancelled the run wrote its state
        if self.stop_reason == SHUTDOWN:
            reason = self._interrupted_reason(self.engine.stop_reason)
            if self.engine.settings.on_orphan == "resume":
                requeued = await _write(
                    lambda: transitions.requeue_interrupted(self.run_id, reason, owner=self.engine.owner, count=False),
                    f"run {self.run_id}: re-queueing",
                )
                if requeued:
                    return True
            await self._fail_quietly(reason)
            return True
        if self.stop_reason == BROKEN:
            error = f"{type(self.broken).__name__}: {self.broken}"
            await self._fail_quietly(f"engine error: could not record a step's outcome ({error})")
            return True
        steps = list(self.steps.values())
        failed = [s for s in steps if s.status in (StepStatus.FAILED, StepStatus.CANCELLED)]
        if failed:
            first = failed[0]
            error = f"step {first.defn.key!r} {first.status.value}" + (f": {first.error}" if first.error else "")
            outcome, done = RunStatus.FAILED, await self._finish_as(RunStatus.FAILED, error)
        elif all(s.status == StepStatus.COMPLETED for s in steps):
            outcome, done = RunStatus.COMPLETED, await self._finish_as(RunStatus.COMPLETED)
        elif any(s.status == StepStatus.WAITING for s in steps):
            outcome, done = RunStatus.WAITING, await self._finish_as(RunStatus.WAITING)
        elif self.draining:
            # Nothing was cut off: the run waits in the queue for the next start.
            why = f"released: {self.engine.stop_reason} before its next step could start"
            outcome, done = (
                RunStatus.QUEUED,
                await _write(
                    lambda: transitions.release_run(self.run_id, self.engine.owner, why), f"run {self.run_id}: release"
                ),
            )
        else:
            stuck = [s.defn.key for s in steps if s.status == StepStatus.PENDING]
            error = f"no step can run: {', '.join(stuck)} wait on steps that cannot complete"
            outcome, done = RunStatus.FAILED, await self._finish_as(RunStatus.FAILED, error)
        if done:
            return True
        rows = await fetch("SELECT status, owner FROM runs WHERE id = ?", (self.run_id,))
        still_ours = rows and rows[0]["status"] == RunStatus.RUNNING and rows[0]["owner"] == self.engine.owner
        if still_ours:
            log.info("run %s: steps changed before it could be marked %s; going on", self.run_id, outcome.value)
        return not still_ours

    async def _finish_as(self, to: RunStatus, error: str | None = None) -> bool:
        return await _write(
            lambda: transitions.finish_run(self.run_id, self.engine.owner, to, error), f"run {self.run_id}: finishing"
        )

    def _interrupted_reason(self, why: str) -> str:
        running = self._running_at_stop or [k for k, s in self.steps.items() if s.status == StepStatus.RUNNING]
        where = f" while step {', '.join(repr(k) for k in running)} was running" if running else ""
        return f"interrupted: {why}{where} ({self.engine.owner})"

    async def _fail(self, reason: str) -> None:
        await transitions.fail_running_run(self.run_id, reason, owner=self.engine.owner)

    # --- one step ----------------------------------------------------------------------------------

    async def _execute(self, s: StepState, started: tuple[int, int] | None = None) -> None:
        """Run one step; `started` (attempt id, number) when a predecessor started it for us.

        A predecessor that starts us also took our step slot; it is released when our task ends
        (a done-callback, so also when we are cancelled before running at all).
        """
        slots = self.engine.step_slots
        try:
            if started is None:
                async with slots:
                    if self.stop_reason is not None or self.draining:
                        return  # waited for a slot while the run was stopped or drained
                    start = self._start_of(s)
                    attempt_id = await _write(lambda: transitions.start_step(start), f"{s.defn.key}: start")
                    if attempt_id is None:
                        self.notice_outside_change()
                        return
                    self._mark_running(s, start.number)
                    await self._attempt(s, attempt_id, start.number)
            else:
                await self._attempt(s, *started)
        except Exception as exc:
            # Not the step's failure (that is recorded by _attempt): the database refused our writes.
            log.exception("run %s: could not record the outcome of step %r", self.run_id, s.defn.key)
            self.broken = exc
            self.stop(BROKEN)

    def _start_of(self, s: StepState, done: tuple[str, int, int | None] | None = None) -> transitions.StepStart:
        """The start of `s`, recording what it consumes; `done` is a need completing in the same commit."""
        d = s.defn
        consumed = {n: {"attempt": self.steps[n].attempt, "index": self.steps[n].selected_index} for n in d.needs}
        if done is not None:
            consumed[done[0]] = {"attempt": done[1], "index": done[2]}
        return transitions.StepStart(self.run_id, s.id, d.key, s.attempt + 1, d.needs, consumed, self.engine.owner)

    @staticmethod
    def _mark_running(s: StepState, number: int) -> None:
        s.status, s.attempt, s.outputs, s.selected_index, s.error = StepStatus.RUNNING, number, None, None, None

    def _claim_successors(self, s: StepState) -> list[StepState]:
        """Dependents that this step's completion makes ready, each with a step slot taken for it."""
        if self.stop_reason is not None or self.draining:
            return []
        chosen = []
        for key in self._dependents[s.defn.key]:
            d = self.steps[key]
            if d.status != StepStatus.PENDING or key in self.tasks or self.engine.step_slots.locked():
                continue
            if all(n == s.defn.key or self.steps[n].status == StepStatus.COMPLETED for n in d.defn.needs):
                self.engine.step_slots._value -= 1  # taken synchronously: no await between check and take
                chosen.append(d)
        return chosen

    async def _attempt(self, s: StepState, attempt_id: int, number: int) -> None:
        d = s.defn
        ref = transitions.AttemptRef(self.run_id, s.id, d.key, attempt_id, number)
        ctx = StepContext(
            run_id=self.run_id,
            step_key=d.key,
            attempt=number,
            alternatives=d.alternatives,
            inputs=self.inputs,
            outputs={n: self.steps[n].output for n in d.needs},
        )
        self.contexts[d.key] = ctx
        executing[(self.run_id, d.key)] = ctx

        async def checkpoint(text: str, llm: dict[str, Any] | None) -> None:
            await transitions.save_partial(ref, text, llm)

        env = KindEnv(self.engine.threads, self.engine.settings, checkpoint)
        timeout = asyncio.timeout(d.timeout_s)
        try:
            async with timeout:
                result = await KINDS[d.kind](d, ctx, env)
            outputs = normalize_outputs(result, d.alternatives)
        except asyncio.CancelledError as exc:
            ctx.cancelled.set()
            task = asyncio.current_task()
            if self.stop_reason is None and task is not None and not task.cancelling():
                # Raised by the step itself, not a stop of ours: a failure like any other exception.
                await asyncio.shield(self._failed(s, ref, ctx, exc))
                return
            await asyncio.shield(self._stopped(s, ref, ctx))
            return
        except TimeoutError as exc:
            ctx.cancelled.set()
            if not timeout.expired():
                await asyncio.shield(self._failed(s, ref, ctx, exc))
                return
            error = f"timed out after {d.timeout_s:g} s"
            failing = _write(
                lambda: transitions.fail_step(ref, error, None, ctx.logs, _partial(ctx), _llm(ctx)), f"{d.key}: timeout"
            )
            if await asyncio.shield(failing):
                s.status, s.error = StepStatus.FAILED, error
            return
        except Exception as exc:
            await asyncio.shield(self._failed(s, ref, ctx, exc))
            return
        finally:
            if executing.get((self.run_id, d.key)) is ctx:
                del executing[(self.run_id, d.key)]
        await asyncio.shield(self._completed(s, ref, ctx, outputs))

    async def _completed(self, s: StepState, ref: transitions.AttemptRef, ctx: StepContext, outputs: list[Any]) -> None:
        """Write the completion; successors it makes ready start in the same commit (saves a round trip)."""
        index = 0 if s.defn.select == "auto" else None
        successors = self._claim_successors(s) if index is not None else []
        starts = [self._start_of(n, done=(s.defn.key, ref.number, index)) for n in successors]
        try:
            done, attempt_ids = await _write(
                lambda: transitions.complete_step_and_start(
                    ref, outputs, index, ctx.logs, ctx.fraction, ctx.message, starts, _llm(ctx)
                ),
                f"{s.defn.key}: completion",
            )
        except BaseException:
            for _ in successors:
                self.engine.step_slots.release()
            raise
        if done:
            s.status = StepStatus.COMPLETED if index is not None else StepStatus.WAITING
            s.outputs, s.selected_index = outputs, index
        else:
            self.notice_outside_change()
        for successor, attempt_id, start in zip(successors, attempt_ids, starts, strict=True):
            if attempt_id is None:
                self.engine.step_slots.release()
                self.notice_outside_change()
                continue
            self._mark_running(successor, start.number)
            task = asyncio.create_task(
                self._execute(successor, (attempt_id, start.number)), name=f"run{self.run_id}:{start.key}"
            )
            task.add_done_callback(lambda _: self.engine.step_slots.release())
            self.tasks[start.key] = task

    async def _failed(self, s: StepState, ref: transitions.AttemptRef, ctx: StepContext, exc: BaseException) -> None:
        error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        detail = "".join(traceback.format_exception(exc))
        failing = lambda: transitions.fail_step(ref, error, detail, ctx.logs, _partial(ctx), _llm(ctx))  # noqa: E731
        if await _write(failing, f"{s.defn.key}: failure"):
            s.status, s.error = StepStatus.FAILED, error
        else:
            self.notice_outside_change()

    async def _stopped(self, s: StepState, ref: transitions.AttemptRef, ctx: StepContext) -> None:
        if self.stop_reason == SHUTDOWN and self.engine.settings.on_orphan == "resume":
            # The run is re-queued as a whole (`_finish`): this attempt ends failed, the step pending.
            if ctx.llm is not None or ctx.partial_text() is not None:
                saving = lambda: transitions.save_partial(ref, _partial(ctx), _llm(ctx), final=True)  # noqa: E731
                await _write(saving, f"{s.defn.key}: save")
            return
        if self.stop_reason in (SHUTDOWN, BROKEN):
            why = self.engine.stop_reason if self.stop_reason == SHUTDOWN else "the engine could not record an outcome"
            reason = self._interrupted_reason(why)
            failing = lambda: transitions.fail_step(ref, reason, None, ctx.logs, _partial(ctx), _llm(ctx))  # noqa: E731
            if await _write(failing, f"{s.defn.key}: interrupt"):
                s.status, s.error = StepStatus.FAILED, reason
        else:
            # The cancel operation already ended the attempt: keep what it had produced.
            await transitions.keep_partial_output(ref, _partial(ctx), ctx.logs, _llm(ctx))
            s.status = StepStatus.CANCELLED


def _partial(ctx: StepContext) -> str | None:
    text = ctx.partial_text()
    return clean_text(text) if text is not None else None


def _llm(ctx: StepContext) -> dict[str, Any] | None:
    return ctx.llm.to_json() if ctx.llm is not None else None


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, (str, bytes)) else value
