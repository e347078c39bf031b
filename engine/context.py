"""The context a step function receives (ARCHITECTURE.md, "Stable interfaces": the Python step contract)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypedDict, Unpack

from engine.hub import Change, ChangeKind, Hub, TokenDelta
from engine.readmodel import log_time_iso
from models.errors import StepdeckError

MAX_LOG_LINES = 1000
PROGRESS_MIN_INTERVAL_S = 0.1  # viewers get at most ~10 progress notices a second per step
TOKENS_MIN_INTERVAL_S = 0.1  # streamed text reaches viewers in batches, however fast the model is


class WaitForPerson(StepdeckError):
    """The step cannot do its work until a person acts (a budget is reached): its attempt ends without
    output and the step waits; "Resume from here" runs it again. The message says why, for people."""


class Notice(TypedDict, total=False):
    """What an ephemeral notice of a step's attempt carries (the fields of `Change` it sets)."""

    fraction: float
    message: str | None
    at: str | None
    line: str
    tokens: TokenDelta


@dataclass(eq=False)
class StepContext:
    """What a step function sees. Safe to use from the thread a sync step function runs in."""

    run_id: int
    step_key: str
    attempt: int
    alternatives: int
    inputs: Mapping[str, Any]
    outputs: Mapping[str, Any]
    hub: Hub = field(repr=False)  # where its progress, log lines and streamed text are published
    logs: list[str] = field(default_factory=list)
    # When each line of `logs` was written (epoch milliseconds, UTC), index for index.
    log_times: list[int] = field(default_factory=list)
    fraction: float | None = None
    message: str | None = None
    # Set when the run is cancelled or the step timed out: a sync function should check it and stop.
    cancelled: threading.Event = field(default_factory=threading.Event)
    abandoned: bool = False  # it ignored its cancellation and was left running (async steps)
    _last_progress_at: float = 0.0
    # LLM steps: what the model has streamed so far, per alternative, and its record (usage, calls).
    llm: Any = None
    _streams: dict[int, list[str]] = field(default_factory=dict)
    _lengths: dict[int, int] = field(default_factory=dict)
    _unsent: dict[int, tuple[int, list[str]]] = field(default_factory=dict)  # index -> (offset, chunks)
    _last_tokens_at: float = 0.0
    _flush_timer: asyncio.TimerHandle | None = None

    def progress(self, fraction: float, message: str = "") -> None:
        """Report progress (0..1) with a short message; shown live on the step card."""
        self.fraction = min(max(float(fraction), 0.0), 1.0)
        self.message = str(message)[:500]
        now = time.monotonic()
        if now - self._last_progress_at >= PROGRESS_MIN_INTERVAL_S or self.fraction >= 1.0:
            self._last_progress_at = now
            self._publish(ChangeKind.PROGRESS, fraction=self.fraction, message=self.message)

    def log(self, message: str) -> None:
        """Append a log line to the attempt (kept with it, with the time it was written) and show it live."""
        line = str(message)[:10_000]
        at_ms = time.time_ns() // 1_000_000
        # Paired index for index; a reader on another thread may find one list a line ahead of the
        # other, and readers pair them by index (`readmodel.line_times`).
        if len(self.logs) < MAX_LOG_LINES:
            self.log_times.append(at_ms)
            self.logs.append(line)
        elif len(self.logs) == MAX_LOG_LINES:
            self.log_times.append(at_ms)
            self.logs.append(f"… further log lines dropped (limit {MAX_LOG_LINES})")
        self._publish(ChangeKind.LOG, at=log_time_iso(at_ms), line=line)

    def _publish(self, kind: ChangeKind, **notice: Unpack[Notice]) -> None:
        """Tell viewers of this step's attempt what happened: progress, a log line or streamed text."""
        self.hub.publish(Change(self.run_id, kind, step_key=self.step_key, attempt=self.attempt, **notice))

    @property
    def is_cancelled(self) -> bool:
        return self.cancelled.is_set()

    # --- streamed text (LLM steps; called on the event loop) -------------------------------------

    def delta(self, index: int, text: str) -> None:
        """Append streamed text of alternative `index`; viewers get it in batches (TOKENS_MIN_INTERVAL_S)."""
        chunks = self._streams.setdefault(index, [])
        _, unsent = self._unsent.setdefault(index, (self.stream_length(index), []))
        chunks.append(text)
        unsent.append(text)
        self._lengths[index] = self._lengths.get(index, 0) + len(text)
        wait = self._last_tokens_at + TOKENS_MIN_INTERVAL_S - time.monotonic()
        if wait <= 0:
            self.flush_stream()
        elif self._flush_timer is None:
            self._flush_timer = asyncio.get_running_loop().call_later(wait, self.flush_stream)

    def truncate_stream(self, index: int, length: int = 0) -> None:
        """Drop streamed text of `index` beyond `length` (a call that is retried starts over)."""
        if self.stream_length(index) <= length:
            return
        text = self.stream_text(index)[:length]
        self._streams[index] = [text] if text else []
        self._lengths[index] = len(text)
        self._unsent.pop(index, None)
        self._publish(ChangeKind.TOKENS, tokens=TokenDelta(index, length, "", reset=True))

    def flush_stream(self) -> None:
        """Send viewers what they have not seen yet."""
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        self._last_tokens_at = time.monotonic()
        unsent, self._unsent = self._unsent, {}
        for index, (offset, chunks) in unsent.items():
            self._publish(ChangeKind.TOKENS, tokens=TokenDelta(index, offset, "".join(chunks)))

    def stream_length(self, index: int) -> int:
        return self._lengths.get(index, 0)

    def stream_text(self, index: int) -> str:
        chunks = self._streams.get(index)
        if not chunks:
            return ""
        if len(chunks) > 1:
            self._streams[index] = chunks = ["".join(chunks)]
        return chunks[0]

    def streams(self) -> dict[int, str]:
        """Streamed text so far per alternative."""
        return {i: self.stream_text(i) for i in sorted(self._streams)}

    def partial_text(self) -> str | None:
        """What was streamed, as one text to keep on an attempt that did not complete (None if nothing)."""
        streams = {i: t for i, t in self.streams().items() if t}
        if not streams:
            return None
        if self.alternatives == 1:
            return streams.get(0)
        return "\n\n".join(f"### Alternative {i + 1}\n\n{text}" for i, text in streams.items())
