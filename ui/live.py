"""Live view-models of runs, fed by the engine's hub, that cost what changed, not what exists.

One `RunState` per run that some tab is looking at, shared by all those tabs. A hub change updates
only the step it names: its row's status and the run's counts are applied at once (incrementally),
and what else it implies (stale and cut-off flags, times, the run's error) is re-read for the changed
steps only, in one query per run and batch. Batches go to the tabs every `PUSH_DELAY_S` as one patch.
Card bodies are re-read only by the tabs that have them open. A tab's listener is dropped when its
client disconnects; nothing here can affect a run.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from nicegui import Event, background_tasks
from nicegui.binding import bindable_dataclass

from engine import logs, queries
from engine.context import StepContext
from engine.hub import Change, ChangeKind, Hub
from engine.llm.record import LlmJson
from engine.readmodel import RunJson, StepRow
from engine.registry import Registry
from models.status import STEP_ATTEMPT_ENDED, RunStatus, StepStatus
from ui.theme import status_color

log = logs.logger(__name__)

PUSH_DELAY_S = 0.1  # changes arriving within this window reach the tabs as one patch
# After a push of a run that redrew BUSY_ROWS of its steps or more (they change faster than anyone reads),
# its next one comes BUSY_PUSH_DELAY_S after it at the soonest: its tabs then redraw a few times a second,
# not ten, and cost the machine (and so the runs it shares it with) less. Other runs' changes still show
# within PUSH_DELAY_S.
BUSY_PUSH_DELAY_S = 0.3
BUSY_ROWS = 20
STREAM_TAIL_CHARS = 4000  # a card shows the end of the text a model is streaming (the rest follows at the end)
ACTIVE_RUN = (RunStatus.QUEUED, RunStatus.RUNNING)
ENDED_RUN = (RunStatus.FAILED, RunStatus.CANCELLED)
LLM_KIND = "llm"


@bindable_dataclass
class RunView:
    """The run page's header, bound by its elements."""

    id: int
    workflow: str
    status: str = RunStatus.QUEUED.value
    color: str = "grey-5"
    error: str = ""
    created_at: str = ""
    started_at: str = ""
    finished_at: str = ""
    completed: int = 0
    total: int = 0
    fraction: float = 0.0
    counts_text: str = ""
    needs_choice: bool = False
    choice_text: str = ""
    choice_key: str = ""  # the first step waiting for a choice (the banner jumps to it)
    truncated_text: str = ""  # which steps' outputs were cut off at the token limit
    active: bool = False  # queued or running: Cancel applies
    resumable: bool = False  # failed or cancelled: Resume applies
    rerunnable: bool = False  # not queued/running: Retry / Resume from here apply
    refreshable: bool = False  # stopped with stale steps: "Refresh stale steps" applies


@bindable_dataclass
class StepLive:
    """What an open card shows that changes between re-reads: progress and streamed text."""

    progress: float = 0.0
    progress_message: str = ""
    stream_text: str = ""


@dataclass(slots=True)
class Patch:
    """What changed in a run since the last push: rows to redraw, steps whose bodies are out of date,
    and the changes for the timeline and log lines (as they came: a view converts only what it shows)."""

    rows: list[StepRow] = field(default_factory=list)
    bodies: set[str] = field(default_factory=set)
    events: list[Change] = field(default_factory=list)


Listener = Callable[[Patch], None]


def shown_status(row: StepRow, run_status: str) -> str:
    """A step's status as a page shows it: pending steps of a run that ended will not run, and a
    choice in a run that ended is not asked for."""
    if row.status == StepStatus.PENDING and run_status in ENDED_RUN:
        return "not run"
    if row.status == StepStatus.WAITING and run_status in ENDED_RUN:
        return "not chosen"  # its alternatives wait for a resume, not for a choice now
    return row.status.value


class RunState:
    """A run's header view, its step rows in order, and counts kept incrementally."""

    def __init__(
        self,
        header: RunJson,
        rows: list[StepRow],
        executing: dict[tuple[int, str], StepContext],
        workflows: Registry,
    ) -> None:
        self.header = header
        self.workflows = workflows  # the app's definitions: the run's inputs in their declared order
        self.executing = executing  # the steps executing in this process (`Hub.executing`)
        self.view = RunView(id=header["id"], workflow=header["workflow"])
        self.rows: dict[str, StepRow] = {r.key: r for r in rows}
        self.order = [r.key for r in rows]
        self.position = {key: i for i, key in enumerate(self.order)}
        self.counts: Counter[StepStatus] = Counter(r.status for r in rows)
        self.stale = {r.key for r in rows if r.stale}
        self.truncated = {r.key for r in rows if r.truncated}
        self.live: dict[str, StepLive] = {}
        self.streams: dict[str, tuple[int, dict[int, str]]] = {}  # key -> (attempt, text per alternative)
        self.progress: dict[str, tuple[float, str]] = {}
        self.listeners: set[Listener] = set()
        self.dirty: set[str] = set()  # steps to re-read at the next push
        self.header_dirty = False
        self.pending = Patch()
        self.calm_at = 0.0  # the loop's time before which no push is made for it (after a busy one)
        # The steps that changed during each re-read in flight: a read row of one may be older than what the
        # change showed, so it is not applied but read again at the next push.
        self._reads: list[set[str]] = []
        self._apply_header(header)
        self._recount()
        for (run_id, key), ctx in list(executing.items()):  # steps streaming right now in this process
            if run_id == self.view.id and key in self.rows:
                self.streams[key] = (ctx.attempt, ctx.streams())

    # --- what the tabs read -----------------------------------------------------------------------

    def step_live(self, key: str) -> StepLive:
        """The bindable live part of one step (made when a tab opens its card)."""
        sv = self.live.get(key)
        if sv is None:
            fraction, message = self.progress.get(key, (0.0, ""))
            sv = self.live[key] = StepLive(progress=fraction, progress_message=message)
            self._show_stream(key)
        return sv

    def row_json(self, row: StepRow) -> list[Any]:
        """A step row as the run page's component takes it (a short list keeps 2,000 rows small)."""
        flags = [*(["stale"] if row.stale else []), *(["cut off"] if row.truncated else [])]
        return [
            row.key,
            row.label,
            shown_status(row, self.view.status),
            status_color(row.status, row.stale, row.truncated),
            " · ".join(flags),
            row.attempt,
            row.started_at,
            row.finished_at,
        ]

    # --- changes ------------------------------------------------------------------------------------

    def _apply_header(self, header: RunJson) -> None:
        v = self.view
        v.status, v.color, v.error = header["status"], status_color(header["status"]), header["error"] or ""
        v.created_at, v.started_at = header["created_at"] or "", header["started_at"] or ""
        v.finished_at = header["finished_at"] or ""

    def apply_rows(self, rows: Iterable[StepRow]) -> None:
        """Fresh reads of some steps."""
        for row in rows:
            old = self.rows.get(row.key)
            if old is None:
                continue
            self.counts[old.status] -= 1
            self.counts[row.status] += 1
            self.rows[row.key] = row
            (self.stale.add if row.stale else self.stale.discard)(row.key)
            (self.truncated.add if row.truncated else self.truncated.discard)(row.key)
            self.pending.rows.append(row)

    def apply_step_status(
        self, key: str, status: StepStatus, attempt: int | None, at: str | None = None, was: str | None = None
    ) -> None:
        """A status from the hub (`was`: the one it left). Its row follows from the change where the change
        is the attempt's start or end, written in the same commit (the event's time is the attempt's): a step
        starting or leaving RUNNING, or going back to PENDING. The step is re-read at the next push otherwise
        (one that leaves a pending retry or a choice ended its attempt before), and for an LLM step, whose
        cut-off flag its attempt's record holds."""
        row = self.rows.get(key)
        if row is None:
            return
        for changed in self._reads:
            changed.add(key)
        self.counts[row.status] -= 1
        self.counts[status] += 1
        row.status = status
        if attempt is not None:
            row.attempt = attempt
        if status != StepStatus.COMPLETED:
            row.stale = False
            self.stale.discard(key)
        if status in (StepStatus.PENDING, StepStatus.RUNNING):
            row.truncated = False
            self.truncated.discard(key)
            row.finished_at = None
        when = _epoch_s(at)
        if status == StepStatus.PENDING:
            row.started_at = None
        elif row.kind == LLM_KIND or when is None:
            self.dirty.add(key)
        elif status == StepStatus.RUNNING:
            row.started_at = when
        elif was == StepStatus.RUNNING and status in STEP_ATTEMPT_ENDED:
            row.finished_at = when
        elif was != StepStatus.RUNNING:
            self.dirty.add(key)
        self.pending.rows.append(row)
        self.pending.bodies.add(key)  # an open card shows the step's new state

    def apply_run_status(self, status: str) -> None:
        was_ended = self.view.status in ENDED_RUN
        self.view.status, self.view.color = status, status_color(status)
        self.header_dirty = True
        if was_ended != (status in ENDED_RUN):  # pending steps read "not run" only while the run has ended
            self.pending.rows.extend(r for r in self.rows.values() if r.status == StepStatus.PENDING)

    def apply_progress(self, key: str, fraction: float, message: str) -> None:
        self.progress[key] = (fraction, message)
        sv = self.live.get(key)
        if sv is not None:
            sv.progress, sv.progress_message = fraction, message

    def apply_tokens(self, key: str, change: Change) -> None:
        """Streamed text from the hub; a gap (this view started mid-stream) is filled from the step itself."""
        if key not in self.rows or change.tokens is None:
            return
        attempt, index = change.attempt or 0, change.tokens.alternative
        offset, text = change.tokens.offset, change.tokens.text
        known_attempt, texts = self.streams.get(key, (attempt, {}))
        if known_attempt != attempt:
            texts = {}
        current = texts.get(index, "")
        if offset > len(current):
            ctx = self.executing.get((self.view.id, key))
            current = ctx.stream_text(index) if ctx is not None and ctx.attempt == attempt else current
            texts[index] = current if len(current) >= offset + len(text) else current + text
        else:
            texts[index] = current[:offset] + text
        self.streams[key] = (attempt, texts)
        self._show_stream(key)

    def _show_stream(self, key: str) -> None:
        sv = self.live.get(key)
        if sv is None:
            return
        _, texts = self.streams.get(key, (0, {}))
        if len(texts) <= 1:
            text = next(iter(texts.values()), "")
        else:
            text = "\n\n".join(
                f"[alternative {i + 1}] {t[-STREAM_TAIL_CHARS // len(texts) :]}" for i, t in sorted(texts.items())
            )
        sv.stream_text = text if len(text) <= STREAM_TAIL_CHARS else "…" + text[-STREAM_TAIL_CHARS:]

    def _recount(self) -> None:
        """The header's counts from the kept counters: O(statuses), not O(steps)."""
        v = self.view
        counts = {status.value: n for status, n in self.counts.items() if n > 0}
        v.total, v.completed = len(self.rows), counts.get(StepStatus.COMPLETED, 0)
        v.fraction = v.completed / v.total if v.total else 0.0
        parts = [f"{n} {status}" for status, n in sorted(counts.items())]
        v.counts_text = ", ".join(parts + ([f"{len(self.stale)} stale"] if self.stale else []))
        waiting: list[str] = []
        if counts.get(StepStatus.WAITING) and v.status not in ENDED_RUN:
            waiting = [k for k, r in self.rows.items() if r.status == StepStatus.WAITING]  # in declared order
        v.needs_choice = bool(waiting)
        v.choice_key = waiting[0] if waiting else ""
        v.choice_text = f"A choice is needed: {', '.join(self.rows[k].label for k in waiting)}" if waiting else ""
        cut = sorted(self.truncated, key=self.position.__getitem__)
        v.truncated_text = f"Cut off at the token limit: {', '.join(self.rows[k].label for k in cut)}" if cut else ""
        v.active = v.status in ACTIVE_RUN
        v.resumable = v.status in ENDED_RUN
        v.rerunnable = not v.active
        v.refreshable = v.rerunnable and bool(self.stale)

    async def catch_up(self) -> int:
        """Re-read what the changes since the last push imply, then hand the patch to every tab; returns the
        number of step rows it redrew."""
        run_id = self.view.id
        if self.dirty:
            keys, self.dirty = sorted(self.dirty), set()
            changed: set[str] = set()
            self._reads.append(changed)
            try:
                rows = await queries.step_rows(run_id, keys)
            finally:
                self._reads.remove(changed)
            self.dirty |= changed
            self.apply_rows(r for r in rows if r.key not in self.dirty)
            self.pending.bodies.update(keys)
        if self.header_dirty:
            self.header_dirty = False
            self.header = {**self.header, **await queries.run_header(run_id, self.workflows)}
            self._apply_header(self.header)
        self._recount()
        patch, self.pending = self.pending, Patch()
        if not (patch.rows or patch.bodies or patch.events):
            return 0
        # One row per step, its latest: a step's status from the hub, then its re-read, are two row objects.
        latest = {r.key: r for r in patch.rows}
        patch.rows = list(latest.values())
        for listener in list(self.listeners):
            try:
                listener(patch)
            except Exception:
                log.exception("a view of run %s failed to take a change", run_id)
        return len(patch.rows)


def _epoch_s(at: str | None) -> float | None:
    """An event's ISO time in epoch seconds (None without a time)."""
    if at is None:
        return None
    try:
        return datetime.fromisoformat(at).timestamp()
    except ValueError:
        return None


def llm_summary(llm: LlmJson | None) -> str:
    """One line on an LLM attempt: provider, model, tokens against the limit, finish."""
    if not llm:
        return ""
    parts = [llm["provider"]] if llm["model"] in (None, "", llm["provider"]) else [llm["provider"], llm["model"]]
    peak = max((a["peak_call_tokens"] for a in llm["alternatives"]), default=0)
    parts.append(f"{peak:,} / {llm['max_tokens']:,} tokens")
    if len(llm["alternatives"]) > 1:
        parts.append(f"{llm['usage']['completion_tokens']:,} over {len(llm['alternatives'])} alternatives")
    if llm["finish_reason"]:
        parts.append(f"finish: {llm['finish_reason']}")
    return " · ".join(parts)


class LiveRuns:
    """The states of every run some tab is looking at, and an event for the runs list."""

    def __init__(self, workflows: Registry) -> None:
        self.workflows = workflows  # the app's definitions
        self.hub: Hub | None = None  # the hub of the app's database, while the app runs
        self.states: dict[int, RunState] = {}
        self.viewers: Counter[int] = Counter()
        self.runs_changed: Event[int] = Event()  # a run was created or changed status (runs list)
        self._due: set[int] = set()
        self._push: asyncio.Task[None] | None = None
        self._remove: Callable[[], None] | None = None
        # Runs whose state is being read for a first viewer: what changed meanwhile (a step's key, None for
        # the run itself), to be read again once the state is made (`open`).
        self._opening: dict[int, set[str | None]] = {}

    def start(self, hub: Hub) -> None:
        """Follow the changes of `hub` (the app's database's, once it is open)."""
        if self._remove is None:
            self.hub = hub
            self._remove = hub.add_listener(self._on_change)

    def stop(self) -> None:
        """Detach from the hub and forget every view (the app is going away or restarting)."""
        if self._remove is not None:
            self._remove()
            self._remove = None
        if self._push is not None and not self._push.done():
            self._push.cancel()
        self.states.clear()
        self.viewers.clear()
        self._due.clear()
        self._opening.clear()

    async def open(self, run_id: int) -> RunState:
        """The live state of a run for one more viewer (NotFound if there is no such run).

        A change committed while the state is read (the run finishing as its page opens) may be newer than
        what was read, and no state was there to take it: what it names is read again at once."""
        state = self.states.get(run_id)
        if state is None:
            changed = self._opening.setdefault(run_id, set())  # shared with another tab opening it now
            try:
                header = await queries.run_header(run_id, self.workflows)
                rows = await queries.step_rows(run_id)
            finally:
                if self._opening.get(run_id) is changed:  # no change can come from here to the state's making
                    del self._opening[run_id]
            state = self.states.get(run_id)  # another tab may have opened it meanwhile
            if state is None:
                executing = self.hub.executing if self.hub else {}
                state = self.states[run_id] = RunState(header, rows, executing, self.workflows)
                if changed:
                    state.dirty.update(key for key in changed if key is not None)
                    state.header_dirty = True
                    self._push_soon(run_id)
        self.viewers[run_id] += 1
        return state

    def close(self, run_id: int) -> None:
        self.viewers[run_id] -= 1
        if self.viewers[run_id] <= 0:
            del self.viewers[run_id]
            self.states.pop(run_id, None)

    async def refresh(self, run_id: int, keys: Iterable[str] | None = None) -> None:
        """Re-read a viewed run's header and steps now (after an action of a tab, so it shows at once)."""
        state = self.states.get(run_id)
        if state is None:
            return
        state.dirty.update(keys if keys is not None else state.order)
        state.header_dirty = True
        await state.catch_up()

    def _on_change(self, change: Change) -> None:
        if change.kind in (ChangeKind.RUN, ChangeKind.STEP):
            self.runs_changed.emit(change.run_id)  # the runs list shows statuses and step progress
        state = self.states.get(change.run_id)
        if state is None:
            changed = self._opening.get(change.run_id)
            if changed is not None and change.event_id is not None:
                changed.add(change.step_key)
            return
        key = change.step_key
        if change.kind == ChangeKind.STEP and change.to_status and key:
            state.apply_step_status(key, StepStatus(change.to_status), change.attempt, change.at, change.from_status)
        elif change.kind == ChangeKind.RUN and change.to_status:
            state.apply_run_status(change.to_status)
        elif change.kind == ChangeKind.PROGRESS and key:
            state.apply_progress(key, float(change.fraction or 0.0), str(change.message or ""))
            return
        elif change.kind == ChangeKind.TOKENS and key:
            state.apply_tokens(key, change)
            return  # not a timeline entry; the text is bound to the card
        elif key and change.event_id is not None:
            state.dirty.add(key)  # a selection, a stale flag, a rerun: re-read the step
        if change.kind == ChangeKind.RUN and change.event_id is not None:
            state.header_dirty = True
        state.pending.events.append(change)
        self._push_soon(change.run_id)

    def _push_soon(self, run_id: int) -> None:
        """Push what changed in the run to its tabs, with the other runs' changes of the next PUSH_DELAY_S."""
        self._due.add(run_id)
        if self._push is None or self._push.done():
            self._push = background_tasks.create(self._push_due(), name="live-push")

    async def _push_due(self) -> None:
        """Every PUSH_DELAY_S while runs are due: push each one, but a run whose last push was busy (its
        `calm_at` is still to come), which waits for a later round."""
        loop = asyncio.get_running_loop()
        while self._due:
            await asyncio.sleep(PUSH_DELAY_S)
            now = loop.time()
            due = {run_id for run_id in self._due if (s := self.states.get(run_id)) is None or s.calm_at <= now}
            self._due -= due
            for run_id in due:
                state = self.states.get(run_id)
                if state is None:
                    continue
                try:
                    if await state.catch_up() >= BUSY_ROWS:
                        state.calm_at = loop.time() + BUSY_PUSH_DELAY_S
                except Exception:
                    log.exception("refreshing the view of run %s failed", run_id)
