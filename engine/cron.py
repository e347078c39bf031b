"""Standard 5-field cron expressions on APScheduler 3's CronTrigger, and the fire times they give.

Two differences from crontab are corrected here, so expressions mean what they mean in crontab:
- APScheduler 3 numbers weekdays from Monday = 0, where crontab has Sunday = 0 (and 7); its
  `from_crontab` passes the numbers through, so `0 9 * * 1` would fire on Tuesdays. Numeric
  weekdays are translated to names.
- With both a day of month and a day of week, crontab fires on either (`0 9 1 * 1`: the 1st, and
  every Monday); APScheduler on both. Such an expression becomes two triggers, either of which fires.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.combining import OrTrigger
from apscheduler.triggers.cron import CronTrigger

from models.errors import StepdeckError

_DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
MAX_SLOTS = 10_000  # a bound on how many past fire times are ever enumerated


class CronError(StepdeckError, ValueError):
    """An expression or time zone that cannot be used; the message says why."""


def local_timezone() -> str:
    """The server's time zone name (the default of schedules)."""
    import tzlocal

    try:
        return str(tzlocal.get_localzone_name() or "UTC")
    except Exception:  # an unusual system configuration: UTC rather than no schedules at all
        return "UTC"


def check_timezone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise CronError(f"unknown time zone {name!r} (an IANA name such as Europe/Berlin or UTC)") from None


def _weekday(field: str) -> str:
    """A crontab day-of-week field with its numbers as names (Sunday is 0 and 7 in crontab)."""
    parts = []
    for part in field.split(","):
        base, _, step_text = part.partition("/")
        if not any(ch.isdigit() for ch in base) and not step_text:
            parts.append(part)  # *, names, name ranges: the same in both
            continue
        step = int(step_text) if step_text.isdigit() and int(step_text) > 0 else None
        if step_text and step is None:
            raise CronError(f"bad step {step_text!r} in day of week {field!r}")
        if base == "*":
            low, high = 0, 6
        elif "-" in base:
            a, _, b = base.partition("-")
            if not (a.isdigit() and b.isdigit()):
                raise CronError(f"bad day-of-week range {base!r}: use numbers 0-7 or names sun-sat")
            low, high = int(a), int(b)
        elif base.isdigit():
            low = high = int(base)
            if step:
                high = 6
        else:
            raise CronError(f"bad day of week {base!r}: use numbers 0-7 or names sun-sat")
        if not (0 <= low <= 7 and 0 <= high <= 7 and low <= high):
            raise CronError(f"day of week {base!r} out of range 0-7")
        parts.extend(_DAYS[day % 7] for day in range(low, high + 1, step or 1))
    return ",".join(dict.fromkeys(parts))


def trigger(expr: str, timezone: str) -> BaseTrigger:
    """The trigger of a standard crontab expression in a time zone; CronError if it is not one."""
    fields = expr.split()
    if len(fields) != 5:
        raise CronError(f"expected 5 fields 'minute hour day month weekday', got {len(fields)} in {expr!r}")
    zone = check_timezone(timezone)
    minute, hour, day, month, weekday = fields
    try:
        if day != "*" and weekday != "*":  # crontab: either day matches
            return OrTrigger(
                [
                    CronTrigger(minute=minute, hour=hour, day=day, month=month, timezone=zone),
                    CronTrigger(minute=minute, hour=hour, month=month, day_of_week=_weekday(weekday), timezone=zone),
                ]
            )
        return CronTrigger(minute=minute, hour=hour, day=day, month=month, day_of_week=_weekday(weekday), timezone=zone)
    except CronError:
        raise
    except ValueError as exc:
        raise CronError(f"invalid cron expression {expr!r}: {exc}") from None


def check_cron(expr: str, timezone: str) -> None:
    """Raise CronError unless the expression is valid and ever fires."""
    t = trigger(expr, timezone)
    now = datetime.now(check_timezone(timezone))
    if t.get_next_fire_time(None, now) is None:
        raise CronError(f"{expr!r} never fires")


def fire_times(t: BaseTrigger, after: datetime, until: datetime) -> Iterator[datetime]:
    """Fire times in (after, until], oldest first (at most MAX_SLOTS)."""
    # Steps are taken in UTC: wall-clock arithmetic on a zoned time drops `fold`, so one second after
    # the second 02:30 of a DST fall-back would be an hour earlier, and the same time came back forever.
    previous: datetime | None = None
    current = t.get_next_fire_time(None, after.astimezone(UTC) + timedelta(seconds=1))
    count = 0
    while current is not None and current <= until and count < MAX_SLOTS:
        if current > after:
            yield current
            count += 1
        previous = current
        current = t.get_next_fire_time(previous, previous.astimezone(UTC) + timedelta(seconds=1))


def latest_fire_time(t: BaseTrigger, at: datetime, lookback: timedelta) -> datetime | None:
    """The last fire time at or before `at`, looking back at most `lookback`.

    Looks in growing windows (an hour, a day, a month, a year, then all of `lookback`): a window is
    only widened when it held no fire time, so none of them holds many, however long the lookback.
    """
    for window in (timedelta(hours=1), timedelta(days=1), timedelta(days=32), timedelta(days=366), lookback):
        window = min(window, lookback)
        latest = None
        for when in fire_times(t, at - window - timedelta(seconds=1), at):
            latest = when
        if latest is not None or window >= lookback:
            return latest
    return None
