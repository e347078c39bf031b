"""Crontab expressions on APScheduler's CronTrigger (engine/cron.py): what they fire on, and what they refuse."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest

from engine.cron import MAX_SLOTS, CronError, check_cron, check_timezone, fire_times, latest_fire_time, trigger

MONDAY = datetime(2024, 1, 1, tzinfo=UTC)  # 2024-01-01 was a Monday


def days(expr: str, weeks: int = 2, timezone: str = "UTC") -> list[str]:
    """The weekday names of the fire times of `expr` over `weeks` weeks from a Monday."""
    t = trigger(expr, timezone)
    return [when.strftime("%a") for when in fire_times(t, MONDAY, MONDAY + timedelta(weeks=weeks))]


@pytest.mark.parametrize(
    ("expr", "fired"),
    [
        ("0 9 * * 0", ["Sun"]),
        ("0 9 * * 7", ["Sun"]),  # crontab knows Sunday as 7 too
        ("0 9 * * 1", ["Mon"]),  # APScheduler's own numbering would make this a Tuesday
        ("0 9 * * 1-5", ["Mon", "Tue", "Wed", "Thu", "Fri"]),
        ("0 9 * * 5-7", ["Fri", "Sat", "Sun"]),
        ("0 9 * * */2", ["Tue", "Thu", "Sat", "Sun"]),  # 0,2,4,6
        ("0 9 * * 0,6", ["Sat", "Sun"]),
        ("0 9 * * mon-fri", ["Mon", "Tue", "Wed", "Thu", "Fri"]),
        ("0 9 * * sun", ["Sun"]),
    ],
)
def test_weekdays_mean_what_they_mean_in_crontab(expr: str, fired: list[str]) -> None:
    seen = days(expr)
    assert sorted(set(seen)) == sorted(fired)
    assert len(seen) == 2 * len(fired)  # once a day, on those days only


def test_sunday_job_fires_on_a_sunday_at_its_time() -> None:
    first = trigger("0 9 * * 0", "UTC").get_next_fire_time(None, MONDAY)
    assert first == datetime(2024, 1, 7, 9, 0, tzinfo=UTC)
    assert first.strftime("%A") == "Sunday"


def test_minute_and_hour_steps() -> None:
    t = trigger("*/15 * * * *", "UTC")
    assert [w.minute for w in fire_times(t, MONDAY, MONDAY + timedelta(hours=1))] == [15, 30, 45, 0]
    t = trigger("0 */2 * * *", "UTC")
    assert [w.hour for w in fire_times(t, MONDAY, MONDAY + timedelta(hours=7))] == [2, 4, 6]


def test_fire_times_are_in_the_schedules_time_zone() -> None:
    t = trigger("0 9 * * *", "Europe/Berlin")
    winter = next(fire_times(t, MONDAY, MONDAY + timedelta(days=1)))
    assert winter.astimezone(UTC) == datetime(2024, 1, 1, 8, 0, tzinfo=UTC)
    july = datetime(2024, 7, 1, tzinfo=UTC)
    summer = next(fire_times(t, july, july + timedelta(days=1)))
    assert summer.astimezone(UTC) == datetime(2024, 7, 1, 7, 0, tzinfo=UTC)


def test_fire_times_exclude_the_start_and_include_the_end() -> None:
    t = trigger("0 * * * *", "UTC")
    got = list(fire_times(t, datetime(2024, 1, 1, 10, tzinfo=UTC), datetime(2024, 1, 1, 13, tzinfo=UTC)))
    assert [w.hour for w in got] == [11, 12, 13]
    assert list(fire_times(t, datetime(2024, 1, 1, 10, 1, tzinfo=UTC), datetime(2024, 1, 1, 10, 59, tzinfo=UTC))) == []


def test_fire_times_stop_at_the_bound() -> None:
    t = trigger("* * * * *", "UTC")
    assert len(list(fire_times(t, MONDAY, MONDAY + timedelta(days=30)))) == MAX_SLOTS


@pytest.mark.parametrize(
    ("zone", "after"), [("Europe/Berlin", "2024-10-26 23:00"), ("America/New_York", "2024-11-03 03:00")]
)
def test_fire_times_go_on_through_a_dst_fall_back(zone: str, after: str) -> None:
    # The hour that repeats: each fire time once, in order (a bug made the second 02:00 repeat until MAX_SLOTS).
    start = datetime.fromisoformat(after).replace(tzinfo=UTC)
    got = [w.astimezone(UTC) for w in fire_times(trigger("0 * * * *", zone), start, start + timedelta(hours=4))]
    assert got == [start + timedelta(hours=h) for h in (1, 2, 3, 4)]
    daily = [w.astimezone(UTC) for w in fire_times(trigger("30 2 * * *", zone), start, start + timedelta(days=2))]
    assert 2 <= len(daily) <= 3  # APScheduler fires a daily 02:30 in both of that night's 02:30s
    assert all(a < b for a, b in itertools.pairwise(daily))


def test_latest_fire_time_looks_back_only_so_far() -> None:
    t = trigger("0 * * * *", "UTC")
    at = datetime(2024, 1, 1, 10, 4, 59, tzinfo=UTC)
    assert latest_fire_time(t, at, timedelta(minutes=5)) == datetime(2024, 1, 1, 10, 0, tzinfo=UTC)
    assert latest_fire_time(t, at, timedelta(minutes=4)) is None
    assert latest_fire_time(t, datetime(2024, 1, 1, 10, tzinfo=UTC), timedelta(0)) == datetime(
        2024, 1, 1, 10, tzinfo=UTC
    )


@pytest.mark.parametrize(
    ("expr", "says"),
    [
        ("* * * *", "expected 5 fields"),
        ("* * * * * *", "expected 5 fields"),
        ("61 * * * *", "invalid cron expression '61 * * * *'"),
        ("0 24 * * *", "invalid cron expression"),
        ("0 0 32 * *", "invalid cron expression"),
        ("0 0 * 13 *", "invalid cron expression"),
        ("* * * * 8", "out of range 0-7"),
        ("* * * * 5-2", "out of range 0-7"),
        ("* * * * 1/x", "bad step"),
        ("* * * * mon-8", "bad day-of-week range"),
        ("0 0 30 2 *", "never fires"),
        ("every day", "expected 5 fields"),
    ],
)
def test_invalid_expressions_are_refused_with_the_reason(expr: str, says: str) -> None:
    with pytest.raises(CronError, match=says.replace("*", r"\*")):
        check_cron(expr, "UTC")


def test_unknown_time_zone_is_refused() -> None:
    with pytest.raises(CronError, match="unknown time zone 'Mars/Olympus'"):
        check_timezone("Mars/Olympus")
    with pytest.raises(CronError, match="unknown time zone"):
        trigger("0 9 * * *", "Europe/Nowhere")
    assert str(check_timezone("Europe/Berlin")) == "Europe/Berlin"


def test_a_day_of_month_and_a_weekday_fire_on_either_as_in_crontab() -> None:
    start, end = datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 2, 1, 10, tzinfo=UTC)
    days = [w.day for w in fire_times(trigger("0 9 1 * 1", "UTC"), start, end)]
    assert days == [1, 8, 15, 22, 29, 1]  # the 1st, and every Monday (2024-01-01 is both)
