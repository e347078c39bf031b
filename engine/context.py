"""The context a step function receives (DESIGN.md, "Python step contract")."""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from engine.hub import Change, hub

MAX_LOG_LINES = 1000
PROGRESS_MIN_INTERVAL_S = 0.1  # viewers get at most ~10 progress notices a second per step


@dataclass(eq=False)
class StepContext:
    """What a step function sees. Safe to use from the thread a sync step function runs in."""

    run_id: int
    step_key: str
    attempt: int
    alternatives: int
    inputs: Mapping[str, Any]
    outputs: Mapping[str, Any]
    logs: list[str] = field(default_factory=list)
    fraction: float | None = None
    message: str | None = None
    # Set when the run is cancelled or the step timed out: a sync function should check it and stop.
    cancelled: threading.Event = field(default_factory=threading.Event)
    _last_progress_at: float = 0.0

    def progress(self, fraction: float, message: str = "") -> None:
        """Report progress (0..1) with a short message; shown live on the step card."""
        self.fraction = min(max(float(fraction), 0.0), 1.0)
        self.message = str(message)[:500]
        now = time.monotonic()
        if now - self._last_progress_at >= PROGRESS_MIN_INTERVAL_S or self.fraction >= 1.0:
            self._last_progress_at = now
            data = {"attempt": self.attempt, "fraction": self.fraction, "message": self.message}
            hub.publish(Change(self.run_id, "progress", step_key=self.step_key, data=data))

    def log(self, message: str) -> None:
        """Append a log line to the attempt (kept with it) and show it live."""
        line = str(message)[:10_000]
        if len(self.logs) < MAX_LOG_LINES:
            self.logs.append(line)
        elif len(self.logs) == MAX_LOG_LINES:
            self.logs.append(f"… further log lines dropped (limit {MAX_LOG_LINES})")
        hub.publish(Change(self.run_id, "log", step_key=self.step_key, data={"attempt": self.attempt, "line": line}))

    @property
    def is_cancelled(self) -> bool:
        return self.cancelled.is_set()
