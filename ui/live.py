"""Live view-models of runs, fed by the engine's hub and bound by pages.

One `RunView` per run that some tab is looking at, shared by all those tabs: elements bind to its
fields (NiceGUI bindings push a change to every bound element of every tab), so there is no
polling per tab. A status change is applied at once from the hub's change; what else a change
implies (outputs, alternatives, errors, counts) is re-read from the database, coalesced per run.
Tabs that close only drop their bindings: nothing here can affect a run.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from typing import Any

from nicegui import Event, background_tasks
from nicegui.binding import bindable_dataclass

from engine import queries
from engine.context import executing
from engine.hub import Change, hub
from ui.theme import STATUS_COLORS, status_color

log = logging.getLogger(__name__)

REFRESH_DELAY_S = 0.05  # changes arriving within this window share one re-read
STREAM_TAIL_CHARS = 4000  # a card shows the end of the text a model is streaming (the rest follows at the end)


@bindable_dataclass
class StepView:
    key: str
    label: str
    status: str = "pending"
    color: str = "grey-5"
    attempt: int = 0
    stale: bool = False
    stale_reason: str = ""
    progress: float = 0.0
    progress_message: str = ""
    error: str = ""
    started_at: str = ""
    completed_at: str = ""
    duration_s: float = 0.0
    meta: str = ""  # "attempt 2 · 1.3 s", shown in the card header
    version: int = 0  # bumped whenever what the step's card body shows has changed
    truncated: bool = False  # an output of the current attempt was cut off at the token limit
    flag: str = ""  # "stale", "cut off" or both: one badge in the card header (300 cards, few elements)
    flag_color: str = STATUS_COLORS["stale"]
    llm_text: str = ""  # "simulated · 293 / 1,024 tokens · stop"
    stream_text: str = ""  # the end of what the model has streamed so far (while running)

    def refresh_flag(self) -> None:
        self.flag = " · ".join([*(["stale"] if self.stale else []), *(["cut off"] if self.truncated else [])])
        self.flag_color = STATUS_COLORS["stale" if self.stale else "truncated"]

    def set_duration(self, seconds: float) -> None:
        self.duration_s = seconds
        self.refresh_meta()

    def refresh_meta(self) -> None:
        parts = [f"attempt {self.attempt}"] if self.attempt else []
        if self.started_at and self.status != "pending":
            parts.append(f"{self.duration_s:.1f} s" if self.duration_s < 120 else f"{self.duration_s / 60:.1f} min")
        self.meta = " · ".join(parts)


@bindable_dataclass
class RunView:
    id: int
    workflow: str
    status: str = "queued"
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
    truncated_text: str = ""  # which steps' outputs were cut off at the token limit
    active: bool = False  # queued or running: Cancel applies
    resumable: bool = False  # failed or cancelled: Resume applies
    rerunnable: bool = False  # not queued/running: Retry / Resume from here apply


def _body_signature(step: dict[str, Any]) -> tuple[Any, ...]:
    return (
        step["status"],
        step["attempt"],
        step["selected_index"],
        len(step["alternatives"]),
        step["error"],
        step["stale"],
        step["partial_output"] is not None,
        step["truncated"],
        (step["usage"] or {}).get("total_tokens"),
    )


class RunState:
    """A run's view plus its steps' views and the last detail read (for card bodies)."""

    def __init__(self, detail: dict[str, Any]) -> None:
        self.view = RunView(id=detail["id"], workflow=detail["workflow"])
        self.steps: dict[str, StepView] = {}
        self.order: list[str] = []
        self.detail = detail
        self.signatures: dict[str, tuple[Any, ...]] = {}
        self.streams: dict[str, tuple[int, dict[int, str]]] = {}  # key -> (attempt, text per alternative)
        self.apply(detail)
        for key, ctx in list(executing.items()):  # steps streaming right now in this process
            if key[0] == self.view.id and key[1] in self.steps:
                self.streams[key[1]] = (ctx.attempt, ctx.streams())
                self._show_stream(key[1])

    def step_detail(self, key: str) -> dict[str, Any]:
        return next(s for s in self.detail["steps"] if s["key"] == key)

    def apply(self, detail: dict[str, Any]) -> list[str]:
        """Take a fresh read; returns the keys whose card body changed."""
        self.detail = detail
        v = self.view
        v.status, v.color, v.error = detail["status"], status_color(detail["status"]), detail["error"] or ""
        v.created_at, v.started_at = detail["created_at"] or "", detail["started_at"] or ""
        v.finished_at = detail["finished_at"] or ""
        changed = []
        for step in detail["steps"]:
            sv = self.steps.get(step["key"])
            if sv is None:
                sv = self.steps[step["key"]] = StepView(key=step["key"], label=step["label"])
                self.order.append(step["key"])
            self._apply_step(sv, step)
            signature = _body_signature(step)
            if self.signatures.get(step["key"]) != signature:
                self.signatures[step["key"]] = signature
                sv.version += 1
                changed.append(step["key"])
        self._recount()
        return changed

    @staticmethod
    def _apply_step(sv: StepView, step: dict[str, Any]) -> None:
        sv.status, sv.attempt, sv.stale = step["status"], step["attempt"], step["stale"]
        sv.truncated = step["truncated"]
        sv.refresh_flag()
        sv.color = status_color(step["status"], step["stale"], sv.truncated)
        sv.llm_text = llm_summary(step)
        sv.stale_reason = step["stale_reason"] or ""
        sv.error = step["error"] or ""
        sv.progress = step["progress"] or 0.0
        sv.progress_message = step["progress_message"] or ""
        sv.started_at, sv.completed_at = step["started_at"] or "", step["completed_at"] or ""
        sv.set_duration(step["duration_s"] or 0.0)

    def apply_step_status(self, key: str, status: str) -> None:
        """A status from the hub, before the re-read catches up (this is what makes pills change fast)."""
        sv = self.steps.get(key)
        if sv is None:
            return
        sv.status = status
        if status != "completed":
            sv.stale = False
        if status in ("pending", "running"):
            sv.truncated = False
        sv.refresh_flag()
        sv.color = status_color(status, sv.stale, sv.truncated)
        self._recount()

    def apply_tokens(self, key: str, change: Change) -> None:
        """Streamed text from the hub; a gap (this view started mid-stream) is filled from the step itself."""
        if key not in self.steps or change.tokens is None:
            return
        attempt, index = change.attempt or 0, change.tokens.alternative
        offset, text = change.tokens.offset, change.tokens.text
        known_attempt, texts = self.streams.get(key, (attempt, {}))
        if known_attempt != attempt:
            texts = {}
        current = texts.get(index, "")
        if offset > len(current):
            ctx = executing.get((self.view.id, key))
            current = ctx.stream_text(index) if ctx is not None and ctx.attempt == attempt else current
            texts[index] = current if len(current) >= offset + len(text) else current + text
        else:
            texts[index] = current[:offset] + text
        self.streams[key] = (attempt, texts)
        self._show_stream(key)

    def _show_stream(self, key: str) -> None:
        _, texts = self.streams.get(key, (0, {}))
        if len(texts) <= 1:
            text = next(iter(texts.values()), "")
        else:
            text = "\n\n".join(
                f"[alternative {i + 1}] {t[-STREAM_TAIL_CHARS // len(texts) :]}" for i, t in sorted(texts.items())
            )
        self.steps[key].stream_text = text if len(text) <= STREAM_TAIL_CHARS else "…" + text[-STREAM_TAIL_CHARS:]

    def apply_run_status(self, status: str) -> None:
        self.view.status, self.view.color = status, status_color(status)
        self._recount()

    def _recount(self) -> None:
        v = self.view
        counts = Counter(s.status for s in self.steps.values())
        stale = sum(1 for s in self.steps.values() if s.stale)
        v.total, v.completed = len(self.steps), counts["completed"]
        v.fraction = v.completed / v.total if v.total else 0.0
        parts = [f"{n} {status}" for status, n in sorted(counts.items())]
        v.counts_text = ", ".join(parts + ([f"{stale} stale"] if stale else []))
        waiting = [s.label for s in self.steps.values() if s.status == "waiting"]
        v.needs_choice = bool(waiting)
        v.choice_text = f"A choice is needed: {', '.join(waiting)}" if waiting else ""
        cut = [s.label for s in self.steps.values() if s.truncated]
        v.truncated_text = f"Cut off at the token limit: {', '.join(cut)}" if cut else ""
        v.active = v.status in ("queued", "running")
        v.resumable = v.status in ("failed", "cancelled")
        v.rerunnable = not v.active


def llm_summary(step: dict[str, Any]) -> str:
    """One line on an LLM step's current attempt: provider, model, tokens against the limit, finish."""
    llm = step.get("llm")
    if not llm:
        return ""
    parts = [llm["provider"], llm["model"]]
    peak = max((a["peak_call_tokens"] for a in llm["alternatives"]), default=0)
    parts.append(f"{peak:,} / {llm['max_tokens']:,} tokens")
    if len(llm["alternatives"]) > 1:
        parts.append(f"{llm['usage']['completion_tokens']:,} over {len(llm['alternatives'])} alternatives")
    if llm["finish_reason"]:
        parts.append(f"finish: {llm['finish_reason']}")
    return " · ".join(parts)


class LiveRuns:
    """The views of every run some tab is looking at, and events for what bindings cannot carry."""

    def __init__(self) -> None:
        self.states: dict[int, RunState] = {}
        self.viewers: Counter[int] = Counter()
        self.step_changed: Event[int, str] = Event()  # (run id, step key): its card body must re-render
        self.run_event: Event[int, dict[str, Any]] = Event()  # (run id, event json): timeline, log lines
        self.runs_changed: Event[int] = Event()  # a run was created or changed status (runs list)
        self._dirty: set[int] = set()
        self._flush: asyncio.Task[None] | None = None
        self._remove: Any = None

    def start(self) -> None:
        if self._remove is None:
            self._remove = hub.add_listener(self._on_change)

    def stop(self) -> None:
        """Detach from the hub and forget every view (the app is going away or restarting)."""
        if self._remove is not None:
            self._remove()
            self._remove = None
        if self._flush is not None and not self._flush.done():
            self._flush.cancel()
        self.states.clear()
        self.viewers.clear()
        self._dirty.clear()

    async def open(self, run_id: int) -> RunState:
        """The live state of a run for one more viewer (NotFound if there is no such run)."""
        state = self.states.get(run_id)
        if state is None:
            state = RunState(await queries.run_detail(run_id))
            self.states[run_id] = state
        self.viewers[run_id] += 1
        return state

    def close(self, run_id: int) -> None:
        self.viewers[run_id] -= 1
        if self.viewers[run_id] <= 0:
            del self.viewers[run_id]
            self.states.pop(run_id, None)

    async def refresh(self, run_id: int) -> None:
        """Re-read a viewed run now (after an action of this tab, so it shows without waiting)."""
        state = self.states.get(run_id)
        if state is None:
            return
        for key in state.apply(await queries.run_detail(run_id)):
            self.step_changed.emit(run_id, key)

    def _on_change(self, change: Change) -> None:
        if change.kind in ("run", "step"):
            self.runs_changed.emit(change.run_id)  # the runs list shows statuses and step progress
        state = self.states.get(change.run_id)
        if state is None:
            return
        status = change.to_status
        if change.kind == "step" and status and change.step_key:
            state.apply_step_status(change.step_key, status)
        elif change.kind == "run" and status:
            state.apply_run_status(status)
        elif change.kind == "progress" and change.step_key in state.steps:
            sv = state.steps[change.step_key]
            sv.progress = float(change.fraction or 0.0)
            sv.progress_message = str(change.message or "")
        elif change.kind == "tokens" and change.step_key:
            state.apply_tokens(change.step_key, change)
            return  # not a timeline entry; the text is bound to the card
        self.run_event.emit(change.run_id, change.to_json())
        if change.event_id is not None:
            self._dirty.add(change.run_id)
            if self._flush is None or self._flush.done():
                self._flush = background_tasks.create(self._refresh_dirty(), name="live-refresh")

    async def _refresh_dirty(self) -> None:
        await asyncio.sleep(REFRESH_DELAY_S)
        while self._dirty:
            run_id = self._dirty.pop()
            try:
                await self.refresh(run_id)
            except Exception:
                log.exception("refreshing the view of run %s failed", run_id)


live = LiveRuns()
