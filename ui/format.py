"""How times and durations read on the pages."""

from __future__ import annotations

from datetime import datetime


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def ago(moment: datetime | None, now: datetime) -> str:
    """ "3 min ago", "2 h ago", "5 d ago"; the absolute time is shown on hover."""
    if moment is None:
        return "not started"
    seconds = max(0.0, (now - moment).total_seconds())
    if seconds < 45:
        return "just now"
    for unit, size in (("d", 86_400), ("h", 3_600), ("min", 60)):
        if seconds >= size:
            return f"{int(seconds // size)} {unit} ago"
    return "just now"
