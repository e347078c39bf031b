"""Token usage against limits: the pure policy helpers, the aggregation, and `token_report` on a real SQLite file."""

from __future__ import annotations

import asyncio
import itertools
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from engine import records, transitions
from engine.db import close_database, open_database
from engine.monitoring import (
    RECENT_RUNS,
    Bin,
    UsageRow,
    build_report,
    histogram,
    is_close_to_limit,
    nice_limit,
    percentile,
    shared_token_report,
    suggest_limit,
    token_report,
)
from engine.store import Stmt, fetch, run_batch
from tests.conftest import holding_lease
from tests.dbtemplate import migrated_copy

NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
OWNER = "test-host:1:boot"


def test_percentile_is_nearest_rank() -> None:
    assert percentile([], 95) == 0
    assert percentile([7], 95) == 7
    values = list(range(100, 0, -1))  # 1..100, unsorted
    assert percentile(values, 50) == 50
    assert percentile(values, 95) == 95
    assert percentile(values, 100) == 100
    assert percentile([1, 2, 3, 1000], 95) == 1000  # with few values the p95 is the top one


@pytest.mark.parametrize(
    ("tokens", "nice"),
    [(0, 256), (1, 256), (256, 256), (257, 512), (1500, 1536), (4096, 4096), (4097, 5120), (11850, 12288)],
)
def test_nice_limit_rounds_up_to_256_then_1024(tokens: float, nice: int) -> None:
    assert nice_limit(tokens) == nice


def test_close_to_limit_at_80_percent_or_any_truncation() -> None:
    assert not is_close_to_limit(0.79, 0)
    assert is_close_to_limit(0.8, 0)
    assert is_close_to_limit(0.1, 1)


def test_suggest_limit() -> None:
    # Truncated at 50: the peak says nothing about the wanted length, so at least double, rounded up.
    assert suggest_limit(50, 50, 50, truncated=3) == 256
    assert suggest_limit(1024, 1024, 1024, truncated=1) == 2048
    # Not truncated: 1.5 x p95 (1350) or 1.25 x max (1187.5), whichever is larger, made nice.
    assert suggest_limit(1000, 900, 950, truncated=0) == 1536
    assert suggest_limit(1000, 800, 1200, truncated=0) == 1536  # 1.25 x 1200 = 1500 wins
    assert suggest_limit(8000, 7900, 7950, truncated=0) == 12288  # above 4096: multiples of 1024
    # The limit was raised since the outputs that came close: nothing to suggest.
    assert suggest_limit(4096, 900, 950, truncated=0) is None


def test_histogram_covers_zero_to_upper_and_counts_every_value() -> None:
    bins = histogram([0, 1, 2, 25, 48, 50, 50, 50], upper=50, bins=20)
    assert bins[0].start == 0
    assert bins[-1].end == 50  # the limit closes the last bin
    assert all(a.end == b.start for a, b in itertools.pairwise(bins))
    assert sum(b.count for b in bins) == 8
    assert bins[-1] == Bin(48, 50, 4)  # values at the limit land in the last bin
    # One token per bin when the limit is small; a value above `upper` counts in the last bin.
    assert histogram([3, 9], upper=5, bins=20) == (Bin(0, 1, 0), Bin(1, 2, 0), Bin(2, 3, 0), Bin(3, 4, 1), Bin(4, 5, 1))


def _row(
    run_id: int,
    peak: int,
    *,
    workflow: str = "w",
    step: str = "s",
    limit: int = 100,
    truncated: bool = False,
    at: datetime = NOW,
) -> UsageRow:
    return UsageRow(run_id, workflow, step, "simulated", limit, 10, peak, peak, truncated, at)


def test_build_report_aggregates_per_step_day_and_run() -> None:
    yesterday = NOW - timedelta(days=1)
    rows = [  # newest first, as read
        _row(3, 50, step="short", limit=50, truncated=True),
        _row(3, 200, step="long", limit=1000),
        _row(2, 50, step="short", limit=50, truncated=True, at=yesterday),
        _row(2, 300, step="long", limit=1000, at=yesterday),
        _row(1, 40, step="short", limit=50, workflow="other", at=NOW - timedelta(days=3)),
    ]
    report = build_report(rows, 7, NOW - timedelta(days=7), NOW, capped=False)
    assert report.rows == 5
    assert report.providers == ("simulated",)
    assert (report.prompt_tokens, report.completion_tokens) == (50, 640)
    steps = {(s.workflow, s.step_key): s for s in report.steps}
    assert list(steps) == [("other", "short"), ("w", "long"), ("w", "short")]
    short = steps[("w", "short")]
    assert (short.rows, short.limit, short.p95_tokens, short.truncated, short.truncation_rate) == (2, 50, 50, 2, 1.0)
    assert short.close_to_limit
    assert short.suggested_limit == 256
    long = steps[("w", "long")]
    assert (long.p50_tokens, long.p95_tokens, long.max_tokens_seen, long.p95_fraction) == (200, 300, 300, 0.3)
    assert not long.close_to_limit
    assert long.suggested_limit is None
    assert sum(b.count for b in long.histogram) == 2
    # Every day from the first with data to today; a day without rows has no rate (a gap, not 0 %).
    assert [(d.day, d.rows, d.truncated, d.rate) for d in report.usage_by_day] == [
        (date(2026, 3, 7), 1, 0, 0.0),
        (date(2026, 3, 8), 0, 0, None),
        (date(2026, 3, 9), 2, 1, 0.5),
        (date(2026, 3, 10), 2, 1, 0.5),
    ]
    assert [d.rows for d in report.usage_by_workflow["other"]] == [1, 0, 0, 0]
    assert [(d.day.day, d.completion_tokens) for d in report.usage_by_day] == [(7, 40), (8, 0), (9, 350), (10, 250)]
    assert [(r.run_id, r.workflow, r.completion_tokens) for r in report.tokens_by_run] == [
        (1, "other", 40),
        (2, "w", 350),
        (3, "w", 250),
    ]


def test_build_report_keeps_the_newest_runs_and_the_newest_limit() -> None:
    rows = [_row(run_id, 10, limit=500 if run_id == 80 else 100) for run_id in range(80, 0, -1)]
    report = build_report(rows, 30, NOW - timedelta(days=30), NOW, capped=True)
    assert [r.run_id for r in report.tokens_by_run] == list(range(80 - RECENT_RUNS + 1, 81))
    assert report.steps[0].limit == 500  # the newest row's limit is the one in force
    assert report.capped
    assert build_report([], 30, NOW, NOW, capped=False).empty


# --- token_report on a real SQLite file, rows written by the engine's own transitions --------------


async def _llm_run(workflow: str, steps: dict[str, tuple[int, list[tuple[int, bool]]]]) -> int:
    """A run whose steps each completed one LLM attempt: step -> (max_tokens, [(peak, truncated) per alternative])."""
    run_id = (
        await transitions.create_run(
            transitions.NewRun(workflow, {}, {}, [transitions.NewStep(k, k, "llm", []) for k in steps], "test")
        )
    ).id
    assert await transitions.claim_run(run_id, await holding_lease(OWNER))
    ids = {r["key"]: r["id"] for r in await fetch("SELECT id, key FROM steps WHERE run_id = ?", (run_id,))}
    for key, (max_tokens, alternatives) in steps.items():
        attempt_id = await transitions.start_step(transitions.StepStart(run_id, ids[key], key, 1, [], {}, OWNER))
        assert attempt_id is not None
        llm = {
            "provider": "simulated",
            "model": "simulated",
            "max_tokens": max_tokens,
            "alternatives": [
                {
                    "index": i,
                    "prompt_tokens": 10,
                    "completion_tokens": peak,
                    "peak_call_tokens": peak,
                    "finish_reason": "length" if truncated else "stop",
                    "truncated": truncated,
                    "continuations": 0,
                    "calls": 1,
                }
                for i, (peak, truncated) in enumerate(alternatives)
            ],
        }
        ref = records.AttemptRef(run_id, ids[key], key, attempt_id, 1)
        completion = transitions.Completion(ref, ["x"] * len(alternatives), 0, [], None, None, llm=llm)
        assert (await transitions.complete_step_and_start(completion, ())).done
    return run_id


async def test_token_report_reads_the_window_from_the_database(db: str) -> None:
    assert (await token_report(30)).empty

    old = await _llm_run("article", {"outline": (50, [(50, True)])})
    recent = await _llm_run(
        "article", {"outline": (50, [(50, True), (30, False)]), "body": (2000, [(400, False), (350, False)])}
    )
    await _llm_run("other", {"summary": (256, [(250, False)])})
    # The first run is 10 days old: outside a 7-day window, inside a 30-day one.
    long_ago = datetime.now(UTC) - timedelta(days=10)
    await run_batch([Stmt("UPDATE llm_usage SET created_at = ? WHERE run_id = ?", (long_ago, old))])

    week = await token_report(7)
    assert week.rows == 5
    assert week.providers == ("simulated",)
    steps = {(s.workflow, s.step_key): s for s in week.steps}
    outline, body, summary = steps[("article", "outline")], steps[("article", "body")], steps[("other", "summary")]
    assert (outline.rows, outline.limit, outline.truncated, outline.truncation_rate) == (2, 50, 1, 0.5)
    assert outline.close_to_limit
    assert outline.suggested_limit == 256
    assert (body.p95_tokens, body.max_tokens_seen, body.close_to_limit, body.suggested_limit) == (400, 400, False, None)
    assert summary.close_to_limit  # 250 of 256 is past 80 %, though nothing was cut
    assert summary.suggested_limit == 512  # 1.5 x 250 = 375, made nice
    assert recent in [r.run_id for r in week.tokens_by_run]
    assert old not in [r.run_id for r in week.tokens_by_run]
    assert week.usage_by_day[-1].day == datetime.now(UTC).date()
    assert week.usage_by_day[-1].completion_tokens == 50 + 30 + 400 + 350 + 250

    month = await token_report(30)
    assert month.rows == 6
    assert next(s for s in month.steps if s.step_key == "outline").truncated == 2
    assert len(month.usage_by_day) == 11  # ten days ago through today
    # `now` moves the window: seen from 20 days ahead, nothing is left.
    assert (await token_report(7, now=datetime.now(UTC) + timedelta(days=20))).empty


async def test_reports_asked_for_at_once_are_one_report_of_the_open_database(db: str, tmp_path: Path) -> None:
    first, second = await asyncio.gather(shared_token_report(30), shared_token_report(30))
    assert first is second  # one read of the table, shared
    assert first.empty
    await _llm_run("article", {"outline": (50, [(50, True)])})
    later = await shared_token_report(30)
    assert later is not first and later.rows == 1  # asked after the first ended: read again
    # Another database opened in its place: its report, never one computed from the database before.
    await close_database()
    await open_database(f"sqlite://{migrated_copy(tmp_path / 'other.db')}")
    assert (await shared_token_report(30)).empty
