"""Typed rows of the read side, shared by the live views and the pages.

`StepRow` is what a run page shows of a step without opening it: one per step, kept current from
the hub's changes and re-read (for the changed steps only) when a change implies more than a status.
"""

from __future__ import annotations

from dataclasses import dataclass

from models.status import StepStatus


@dataclass(slots=True)
class StepRow:
    key: str
    label: str
    kind: str
    status: StepStatus
    attempt: int
    stale: bool = False
    truncated: bool = False  # an output of the current attempt was cut off at the token limit
    started_at: float | None = None  # epoch seconds of the current attempt
    finished_at: float | None = None

    @property
    def needs_attention(self) -> bool:
        return self.status in (StepStatus.FAILED, StepStatus.WAITING) or self.stale or self.truncated
