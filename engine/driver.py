"""Drives one claimed run: starts ready steps, executes them, writes outcomes, finishes the run.

Readiness comes from status alone: a step runs when it is PENDING and all its needs are COMPLETED,
never because an output or an alternative is (or is not) present. Every exit path (success,
error, timeout, cancellation, shutdown, a bug of ours) ends in a true state, written through
`engine/transitions`. How one step executes is in `engine/step_runner.py`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from engine import kinds, logs, retry, step_runner, transitions
from engine.context import StepContext
from engine.definitions import StepDef, WorkflowDef
from engine.records import utcnow
from engine.step_runner import StopReason, write
from engine.store import fetch
from engine.waits import wait_set
from models.status import RunStatus, StepStatus

if TYPE_CHECKING:
    from engine.engine import Engine

log = logs.logger(__name__)

FINISH_ATTEMPTS = 1000  # decisions the steps kept overturning before the run is failed as a bug of ours
_DONE_OR_ENDING = (StepStatus.COMPLETED, StepStatus.RUNNING)
SHUTDOWN, CANCELLED, LOST, BROKEN = StopReason.SHUTDOWN, StopReason.CANCELLED, StopReason.LOST, StopReason.BROKEN


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
    retries_used: int = 0  # automatic retries in this series (reset by a person's rerun)
    retry_at: datetime | None = None  # RETRYING: when its next attempt is due

    @property
    def output(self) -> Any:
        if self.outputs is None or self.selected_index is None:
            return None
        return self.outputs[self.selected_index]


@dataclass(eq=False)
class RunDriver:
    engine: Engine
    run_id: int
    stop_reason: StopReason | None = None
    dirty: bool = False
    steps: dict[str, StepState] = field(default_factory=dict)
    tasks: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    contexts: dict[str, StepContext] = field(default_factory=dict)
    dependents: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # its definition's (shared)
    inputs: dict[str, Any] = field(default_factory=dict)
    _signal: asyncio.Future[None] | None = None  # resolved by outside changes to wake the loop
    _running_at_stop: list[str] = field(default_factory=list)
    broken: BaseException | None = None
    draining: bool = False  # the engine is stopping: in-flight steps may finish, no new step starts
    _halt: asyncio.Event = field(default_factory=asyncio.Event)  # ends waits for pending retries
    owner: str = ""  # the engine's id when it claimed the run (an engine that lost its lease takes a new one)
    _sync_functions: dict[str, Callable[..., Any] | None] = field(default_factory=dict)
    claimed: transitions.ClaimedRun | None = None  # what its claim read: the driver starts without a read
    finished: bool = False  # the commit of its last step's completion finished the run (`completes_run`)

    def __post_init__(self) -> None:
        self.owner = self.owner or self.engine.owner

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
        self._halt.set()  # a pending retry stays in the database: the next engine fires it
        self._signal_loop()

    def stop(self, reason: StopReason) -> None:
        """Stop in-flight work: `cancelled` (already written by the operation), `shutdown`, or `lost`
        (another process failed or took the run). Lost steps are told to stop but not cancelled: a
        result they still return is then recorded as a late result instead of vanishing (their
        timeout still bounds them)."""
        if self.stop_reason is None:
            self.stop_reason = reason
            self._running_at_stop = [k for k, s in self.steps.items() if s.status == StepStatus.RUNNING]
        self._halt.set()
        for ctx in self.contexts.values():
            ctx.cancelled.set()
        if reason != LOST:
            for task in self.tasks.values():
                task.cancel()
        self._signal_loop()

    @property
    def stopping(self) -> bool:
        return self.stop_reason is not None or self.draining

    # --- the run ---------------------------------------------------------------------------------

    async def drive(self) -> None:
        try:
            self.defn, self.inputs = await self._load()
            for _ in range(FINISH_ATTEMPTS):
                await self._loop()
                if await self._finish():
                    break
                await asyncio.sleep(0.02)  # someone changed a step between our decision and its commit
                await self._refresh()
            else:
                raise RuntimeError("the run's steps kept changing while it was being finished")
        except asyncio.CancelledError:
            # The engine is going away while we drive: nothing may stay RUNNING.
            await asyncio.shield(self._fail_quietly(f"interrupted: the engine stopped ({self.owner})"))
            raise
        except Exception as exc:
            log.exception("run %s: driver error", self.run_id)
            await asyncio.shield(self._fail_quietly(f"engine error: {type(exc).__name__}: {exc}"))

    async def _fail_quietly(self, reason: str) -> None:
        """Fail the run; if even that cannot be written, leave it to the sweep (it stops beating)."""
        try:
            await write(lambda: self._fail(reason), f"run {self.run_id}: failing it")
        except Exception:
            log.exception("run %s: could not record its failure; the sweep will fail it", self.run_id)

    async def _load(self) -> tuple[WorkflowDef, dict[str, Any]]:
        if self.claimed is not None:
            stored, inputs, steps = self.claimed.definition, self.claimed.inputs, self.claimed.steps
            self.claimed = None
        else:
            rows = await fetch("SELECT definition, inputs FROM runs WHERE id = ?", (self.run_id,), engine=True)
            stored, inputs, steps = rows[0]["definition"], rows[0]["inputs"], await self._read_steps()
        defn = _definition(stored) if isinstance(stored, str) else WorkflowDef.from_snapshot(stored)
        self.dependents = defn.derived(_direct_dependents)
        self._apply(defn, steps)
        return defn, _json(inputs)

    async def _read_steps(self) -> list[tuple[Any, ...]]:
        rows = await fetch(transitions.STEP_ROWS_SQL, (self.run_id,), engine=True)
        return [tuple(r.values()) for r in rows]

    async def _refresh(self) -> None:
        self._apply(self.defn, await self._read_steps())

    def _apply(self, defn: WorkflowDef, rows: Sequence[tuple[Any, ...]]) -> None:
        """The steps as read (`transitions.STEP_ROWS_SQL`), but for those in flight (ours)."""
        by_key = {r[1]: r for r in rows}
        for s in defn.steps:
            if s.key in self.tasks:
                continue
            step_id, _, status, attempt, retries_used, retry_at, outputs, selected_index, error = by_key[s.key]
            self.steps[s.key] = StepState(
                id=step_id,
                defn=s,
                status=StepStatus(status),
                attempt=attempt,
                outputs=_json(outputs) if outputs is not None else None,
                selected_index=selected_index,
                error=error,
                retries_used=retries_used,
                retry_at=_datetime(retry_at),
            )
        self.dirty = False

    def _ready(self, candidates: Sequence[str]) -> list[StepState]:
        if self.draining:
            return []
        ready = []
        for key in dict.fromkeys(candidates):  # a join appears once per need that just finished
            s = self.steps[key]
            if s.status == StepStatus.RETRYING and key not in self.tasks:
                ready.append(s)  # its task waits for the due time, then starts the next attempt
                continue
            if s.status != StepStatus.PENDING or key in self.tasks:
                continue
            if all(self.steps[n].status == StepStatus.COMPLETED for n in s.defn.needs):
                ready.append(s)
        return ready

    def spawn(
        self, s: StepState, started: tuple[int, int] | None = None, chained: step_runner.Chained | None = None
    ) -> asyncio.Task[None]:
        """A task executing step `s` (`started`: its attempt was started already, with a slot taken;
        `chained`: a worker thread is executing it already)."""
        coro = step_runner.execute(self, s, started, chained)
        task = asyncio.create_task(coro, name=f"run{self.run_id}:{s.defn.key}")
        self.tasks[s.defn.key] = task
        return task

    def advance(self, done: str, successor: StepState) -> None:
        """The task that executed step `done` goes on with `successor`, chained to it in its worker thread
        (`step_runner._go_on`). Dependents of `done` that its completion could not start (no step slot
        was free) get their tasks now, as when a step's task ends."""
        self.tasks[successor.defn.key] = self.tasks.pop(done)
        self.contexts.pop(done, None)
        waiting = self._ready(self.dependents[done])
        for s in waiting:
            self.spawn(s)
        if waiting:
            self._signal_loop()  # the loop waits on the tasks it knew: wake it to wait on these too

    async def _loop(self) -> None:
        candidates = list(self.steps)
        while self.stop_reason is None and not self.finished:  # finished: by its last step's commit
            for s in self._ready(candidates):
                self.spawn(s)
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
                    candidates.extend([key, *self.dependents[key]])  # itself: a retry may be pending
            if self.dirty:
                await self._refresh()
                candidates = list(self.steps)
        # Stopped: let the cancelled step tasks write what they must before we decide.
        if self.tasks:
            await asyncio.gather(*self.tasks.values(), return_exceptions=True)
            self.tasks.clear()

    async def _finish(self) -> bool:
        """Write the run's outcome; False when the steps changed meanwhile and driving must go on."""
        if self.finished or self.stop_reason in (CANCELLED, LOST):
            return True  # written already: with its last step, or by the operation that cancelled it
        retrying = [s.defn.key for s in self.steps.values() if s.status == StepStatus.RETRYING]
        stopping = self.draining or self.stop_reason == SHUTDOWN
        if retrying and stopping and not any(s.status == StepStatus.RUNNING for s in self.steps.values()):
            # Nothing is cut off: the run waits in the queue, its retries due where they were.
            why = f"released: {self.engine.stop_reason} with a retry pending for {', '.join(retrying)}"
            released = lambda: transitions.release_run(self.run_id, self.owner, why)  # noqa: E731
            if await write(released, f"run {self.run_id}: release"):
                return True
        if self.stop_reason == SHUTDOWN:
            reason = self.interrupted_reason(self.engine.stop_reason)
            if self.engine.settings.on_orphan == "resume":
                requeued = await write(
                    lambda: transitions.requeue_interrupted(self.run_id, reason, owner=self.owner, count=False),
                    f"run {self.run_id}: re-queueing",
                )
                if requeued:
                    return True
            await self._fail_quietly(reason)
            return True
        if self.stop_reason == BROKEN:
            error = f"{type(self.broken).__name__}: {step_runner.describe(self.broken)}"
            await self._fail_quietly(f"engine error: could not record a step's outcome ({error})")
            return True
        steps = list(self.steps.values())
        if retrying and not self.draining:
            return False  # its wait ended without starting it (someone changed it): look again
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
                await write(
                    lambda: transitions.release_run(self.run_id, self.owner, why), f"run {self.run_id}: release"
                ),
            )
        else:
            stuck = [s.defn.key for s in steps if s.status == StepStatus.PENDING]
            error = f"no step can run: {', '.join(stuck)} wait on steps that cannot complete"
            outcome, done = RunStatus.FAILED, await self._finish_as(RunStatus.FAILED, error)
        if done:
            return True
        rows = await fetch("SELECT status, owner FROM runs WHERE id = ?", (self.run_id,), engine=True)
        still_ours = rows and rows[0]["status"] == RunStatus.RUNNING and rows[0]["owner"] == self.owner
        if still_ours:
            log.info("run %s: steps changed before it could be marked %s; going on", self.run_id, outcome.value)
        return not still_ours

    async def _finish_as(self, to: RunStatus, error: str | None = None) -> bool:
        return await write(
            lambda: transitions.finish_run(self.run_id, self.owner, to, error), f"run {self.run_id}: finishing"
        )

    def interrupted_reason(self, why: str) -> str:
        running = self._running_at_stop or [k for k, s in self.steps.items() if s.status == StepStatus.RUNNING]
        where = f" while step {', '.join(repr(k) for k in running)} was running" if running else ""
        return f"interrupted: {why}{where} ({self.owner})"

    async def _fail(self, reason: str) -> None:
        await transitions.fail_running_run(self.run_id, reason, owner=self.owner)

    # --- step starts ------------------------------------------------------------------------------

    def start_of(self, s: StepState, done: tuple[str, int, int | None] | None = None) -> transitions.StepStart:
        """The start of `s`, recording what it consumes; `done` is a need completing in the same commit. A
        RETRYING step starts its next attempt by the retry policy."""
        d = s.defn
        consumed = {n: {"attempt": self.steps[n].attempt, "index": self.steps[n].selected_index} for n in d.needs}
        if done is not None:
            consumed[done[0]] = {"attempt": done[1], "index": done[2]}
        start = transitions.StepStart(self.run_id, s.id, d.key, s.attempt + 1, d.needs, consumed, self.owner)
        if s.status == StepStatus.RETRYING:
            label = retry.attempt_label(s.retries_used, d.retries)
            return dataclasses.replace(start, from_status=StepStatus.RETRYING, message=f"retry: {label}")
        return start

    async def wait_until(self, due: datetime | None) -> bool:
        """Wait for a pending retry's due time (at once when overdue); False when the run stopped or drained
        meanwhile (the retry stays pending in the database)."""
        # Until the clock the attempt's start is written with says so: the loop's timer runs on the
        # monotonic clock and may wake a little before the wall clock reaches `due`.
        while due is not None and not self._halt.is_set():
            delay = (due - utcnow()).total_seconds()
            if delay <= 0:
                break
            await wait_set(self._halt, delay)
        return not self.stopping

    def successors_to_start(self, s: StepState, number: int, index: int | None) -> list[tuple[StepState, Any]]:
        """Dependents that the completion of `s` makes ready, each with a step slot taken for it and its
        start. Safe to call from the worker thread the step ran in: it only reads the driver's state, and
        the database checks readiness again when the starts commit."""
        if index is None or self.stopping:
            return []
        chosen = []
        key = s.defn.key
        for dependent in self.dependents[key]:
            d = self.steps[dependent]
            if d.status != StepStatus.PENDING or dependent in self.tasks:
                continue
            if all(n == key or self.steps[n].status == StepStatus.COMPLETED for n in d.defn.needs):
                if not self.engine.step_slots.try_take():
                    break
                chosen.append((d, self.start_of(d, done=(key, number, index))))
        return chosen

    def completes_run(self, s: StepState, index: int | None) -> bool:
        """Whether the completion of `s` (selecting `index`) may leave every step of the run COMPLETED, so
        that its commit tries to finish the run too (the database decides: `transitions.Completion`). Safe
        to call from the worker thread the step ran in, as `successors_to_start`. A step seen RUNNING may
        have completed already: in a chain of sync steps, the event loop learns of a completion after the
        thread has gone on with the next step."""
        if index is None or self.stopping or self.dependents[s.defn.key]:
            return False  # a step that others need is never the last to complete
        return all(st.status in _DONE_OR_ENDING for st in self.steps.values() if st is not s)

    def sync_function(self, d: StepDef) -> Callable[..., Any] | None:
        """The function of step `d` when it `completes_in_thread` (a sync python step), else None; looked up
        once per function the run calls (a chain asks for every step it goes on with)."""
        if d.kind != "python" or d.call is None:
            return None
        if d.call not in self._sync_functions:
            settings = self.engine.settings
            in_thread = kinds.completes_in_thread(d, settings)
            self._sync_functions[d.call] = kinds.sync_function(d, settings) if in_thread else None
        return self._sync_functions[d.call]

    def mark_running(self, s: StepState, number: int) -> None:
        s.status, s.attempt, s.outputs, s.selected_index, s.error = StepStatus.RUNNING, number, None, None, None
        s.retry_at = None


def _datetime(value: Any) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value))


@functools.lru_cache(maxsize=64)
def _definition(snapshot: str) -> WorkflowDef:
    """The definition a run stored, by its text: the runs of one definition store the same text, and share
    one (frozen) definition rather than each parsing its own."""
    return WorkflowDef.from_snapshot(json.loads(snapshot))


def _direct_dependents(defn: WorkflowDef) -> Mapping[str, tuple[str, ...]]:
    """For each step, the steps that need it directly, in declared order."""
    dependents: dict[str, list[str]] = {s.key: [] for s in defn.steps}
    for s in defn.steps:
        for need in s.needs:
            dependents[need].append(s.key)
    return {key: tuple(keys) for key, keys in dependents.items()}


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, (str, bytes)) else value
