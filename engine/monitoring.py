"""Token usage of LLM steps against their limits, for the monitoring page.

`token_report` reads the `llm_usage` rows of a time window with one plain SELECT (a time filter and
a row cap) and aggregates in Python, so SQLite and PostgreSQL give the same numbers. The policy
helpers (`percentile`, `nice_limit`, `suggest_limit`, `histogram`) are pure.
"""

from __future__ import annotations

import asyncio
import math
import weakref
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, NamedTuple

from engine import db
from engine.db.base import Database
from engine.store import fetch

MAX_ROWS = 200_000  # newest rows of the window read at most; the report says when it was capped
RECENT_RUNS = 50  # runs shown in tokens-per-run
HISTOGRAM_BINS = 20
CLOSE_FRACTION = 0.8  # p95 of tokens/limit at or above this flags a step as close to its limit
THREAD_ABOVE_ROWS = 5_000  # aggregate bigger windows in a thread, off the event loop

_COLUMNS = (
    "run_id, workflow, step_key, provider, max_tokens, prompt_tokens, completion_tokens, peak_call_tokens,"
    " truncated, created_at, estimated, cost"
)


@dataclass(frozen=True, slots=True)
class Bin:
    """Rows whose peak call used `start` ≤ tokens < `end` (the last bin includes `end`)."""

    start: int
    end: int
    count: int


@dataclass(frozen=True, slots=True)
class StepUsage:
    """One step of one workflow over the window; token figures are `peak_call_tokens` unless named."""

    workflow: str
    step_key: str
    rows: int
    limit: int  # max_tokens of the newest row: the limit in force now
    p50_tokens: int
    p95_tokens: int
    max_tokens_seen: int
    p95_fraction: float  # p95 of peak/max_tokens per row (each row against the limit it ran with)
    truncated: int
    truncation_rate: float
    prompt_tokens: int
    completion_tokens: int
    histogram: tuple[Bin, ...]
    close_to_limit: bool
    suggested_limit: int | None  # only for steps close to their limit, and only above the current limit


@dataclass(frozen=True, slots=True)
class DayUsage:
    """The rows of one UTC day: how many, the share truncated (`rate` is None on a day without rows), their tokens."""

    day: date
    rows: int
    truncated: int
    rate: float | None
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True, slots=True)
class Cost:
    """LLM cost of a day or a workflow: usd None when no row had a price; estimated when any count was."""

    key: str  # the day (ISO) or the workflow
    usd: float | None
    estimated: bool
    rows: int


@dataclass(frozen=True, slots=True)
class RunTokens:
    run_id: int
    workflow: str
    prompt_tokens: int
    completion_tokens: int
    first_at: datetime


@dataclass(frozen=True, slots=True)
class TokenReport:
    """Everything the monitoring page draws, computed once per refresh."""

    days: int
    since: datetime
    now: datetime
    rows: int
    capped: bool  # the window held more than MAX_ROWS rows: only the newest were read
    providers: tuple[str, ...]
    steps: tuple[StepUsage, ...]
    usage_by_day: tuple[DayUsage, ...]
    usage_by_workflow: dict[str, tuple[DayUsage, ...]]
    tokens_by_run: tuple[RunTokens, ...]  # the newest RECENT_RUNS runs, oldest first
    prompt_tokens: int
    completion_tokens: int
    estimated_rows: int = 0  # rows whose counts were estimated (the server reported none)
    cost_by_day: tuple[Cost, ...] = ()
    cost_by_workflow: tuple[Cost, ...] = ()
    cost: Cost | None = None  # the whole window

    @property
    def empty(self) -> bool:
        return self.rows == 0


class UsageRow(NamedTuple):
    """The columns of one `llm_usage` row the report needs, parsed (a tuple: cheap to build by the 100,000)."""

    run_id: int
    workflow: str
    step_key: str
    provider: str
    max_tokens: int
    prompt_tokens: int
    completion_tokens: int
    peak_call_tokens: int
    truncated: bool
    created_at: datetime
    estimated: bool = False
    cost: float | None = None


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile: the smallest value with at least q % of the values at or below it (0 if none)."""
    if not values:
        return 0
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def nice_limit(tokens: float) -> int:
    """The smallest multiple of 256 (up to 4096) or of 1024 (above) that is ≥ `tokens`; at least 256."""
    step = 256 if tokens <= 4096 else 1024
    return max(256, math.ceil(tokens / step) * step)


def is_close_to_limit(p95_fraction: float, truncated: int) -> bool:
    """A step runs close to its limit when its p95 uses ≥ 80 % of it, or when any output was truncated."""
    return p95_fraction >= CLOSE_FRACTION or truncated > 0


def suggest_limit(limit: int, p95_tokens: float, max_tokens_seen: float, truncated: int) -> int | None:
    """A new max_tokens for a step close to its limit, or None when the current one already covers it.

    Rule: `nice_limit(max(1.5 * p95, 1.25 * max, 2 * limit if any output was truncated))`. A
    truncated output hides how long it wanted to be, so its peak says little: the limit at least
    doubles. None when the result is not above the current limit (the limit was already raised).
    """
    wanted = max(1.5 * p95_tokens, 1.25 * max_tokens_seen, 2.0 * limit if truncated else 0.0)
    suggested = nice_limit(wanted)
    return suggested if suggested > limit else None


def histogram(values: Iterable[int], upper: int, bins: int = HISTOGRAM_BINS) -> tuple[Bin, ...]:
    """Counts of `values` in equal integer bins over [0, upper]; values above `upper` count in the last bin."""
    upper = max(1, upper)
    width = max(1, math.ceil(upper / bins))
    n = max(1, math.ceil(upper / width))
    counts = [0] * n
    for value in values:
        counts[min(max(0, value) // width, n - 1)] += 1
    return tuple(Bin(i * width, min((i + 1) * width, upper), c) for i, c in enumerate(counts))


def _utc(value: Any) -> datetime:
    dt = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


def parse_row(row: dict[str, Any]) -> UsageRow:
    """A fetched row with SQLite's strings and integers turned into datetimes and booleans."""
    return UsageRow(
        int(row["run_id"]),
        str(row["workflow"]),
        str(row["step_key"]),
        str(row["provider"]),
        int(row["max_tokens"]),
        int(row["prompt_tokens"] or 0),
        int(row["completion_tokens"] or 0),
        int(row["peak_call_tokens"] or 0),
        bool(row["truncated"]),
        _utc(row["created_at"]),
        bool(row.get("estimated")),
        float(row["cost"]) if row.get("cost") is not None else None,
    )


def step_usage(workflow: str, step_key: str, rows: Sequence[UsageRow]) -> StepUsage:
    """The figures of one step; `rows` are newest first."""
    peaks = [r.peak_call_tokens for r in rows]
    limit = rows[0].max_tokens
    truncated = sum(r.truncated for r in rows)
    p95 = int(percentile(peaks, 95))
    top = max(peaks)
    fraction = percentile([r.peak_call_tokens / max(1, r.max_tokens) for r in rows], 95)
    close = is_close_to_limit(fraction, truncated)
    return StepUsage(
        workflow=workflow,
        step_key=step_key,
        rows=len(rows),
        limit=limit,
        p50_tokens=int(percentile(peaks, 50)),
        p95_tokens=p95,
        max_tokens_seen=top,
        p95_fraction=fraction,
        truncated=truncated,
        truncation_rate=truncated / len(rows),
        prompt_tokens=sum(r.prompt_tokens for r in rows),
        completion_tokens=sum(r.completion_tokens for r in rows),
        histogram=histogram(peaks, max(limit, top)),
        close_to_limit=close,
        suggested_limit=suggest_limit(limit, p95, top, truncated) if close else None,
    )


def _days(first: date, last: date) -> list[date]:
    return [first + timedelta(days=i) for i in range((last - first).days + 1)]


def _day_usage(rows: Iterable[UsageRow], days: Sequence[date]) -> tuple[DayUsage, ...]:
    counts: dict[date, list[int]] = defaultdict(lambda: [0, 0, 0, 0])  # rows, truncated, prompt, completion
    for r in rows:
        c = counts[r.created_at.date()]
        c[0] += 1
        c[1] += r.truncated
        c[2] += r.prompt_tokens
        c[3] += r.completion_tokens

    def usage(d: date) -> DayUsage:
        n, truncated, prompt, completion = counts.get(d, (0, 0, 0, 0))
        return DayUsage(d, n, truncated, truncated / n if n else None, prompt, completion)

    return tuple(usage(d) for d in days)


def cost_of(key: str, rows: Sequence[UsageRow]) -> Cost:
    """The summed cost of rows (the priced ones), estimated when any row's counts were."""
    priced = [r.cost for r in rows if r.cost is not None]
    return Cost(key, sum(priced) if priced else None, any(r.estimated for r in rows), len(rows))


def build_report(rows: Sequence[UsageRow], days: int, since: datetime, now: datetime, capped: bool) -> TokenReport:
    """Aggregate parsed rows (newest first) into the report; pure."""
    by_step: dict[tuple[str, str], list[UsageRow]] = defaultdict(list)
    by_workflow: dict[str, list[UsageRow]] = defaultdict(list)
    by_run: dict[int, list[UsageRow]] = defaultdict(list)
    by_day: dict[date, list[UsageRow]] = defaultdict(list)
    for r in rows:
        by_day[r.created_at.date()].append(r)
        by_step[(r.workflow, r.step_key)].append(r)
        by_workflow[r.workflow].append(r)
        by_run[r.run_id].append(r)
    calendar = _days(min(r.created_at for r in rows).date(), now.date()) if rows else []
    recent = sorted(by_run)[-RECENT_RUNS:]
    return TokenReport(
        days=days,
        since=since,
        now=now,
        rows=len(rows),
        capped=capped,
        providers=tuple(sorted({r.provider for r in rows})),
        steps=tuple(step_usage(w, s, by_step[(w, s)]) for w, s in sorted(by_step)),
        usage_by_day=_day_usage(rows, calendar),
        usage_by_workflow={w: _day_usage(by_workflow[w], calendar) for w in sorted(by_workflow)},
        tokens_by_run=tuple(
            RunTokens(
                run_id=run_id,
                workflow=by_run[run_id][0].workflow,
                prompt_tokens=sum(r.prompt_tokens for r in by_run[run_id]),
                completion_tokens=sum(r.completion_tokens for r in by_run[run_id]),
                first_at=min(r.created_at for r in by_run[run_id]),
            )
            for run_id in recent
        ),
        prompt_tokens=sum(r.prompt_tokens for r in rows),
        completion_tokens=sum(r.completion_tokens for r in rows),
        estimated_rows=sum(r.estimated for r in rows),
        cost_by_day=tuple(cost_of(d.isoformat(), by_day.get(d, [])) for d in calendar),
        cost_by_workflow=tuple(cost_of(w, by_workflow[w]) for w in sorted(by_workflow)),
        cost=cost_of("all", rows) if rows else None,
    )


def _aggregate(raw: list[dict[str, Any]], days: int, since: datetime, now: datetime) -> TokenReport:
    return build_report([parse_row(r) for r in raw], days, since, now, capped=len(raw) >= MAX_ROWS)


async def token_report(days: int = 30, now: datetime | None = None) -> TokenReport:
    """Token usage of LLM steps over the last `days` days (at most the newest MAX_ROWS rows)."""
    days = max(1, days)
    now = _utc(now) if now is not None else db.now()
    since = now - timedelta(days=days)
    raw = await fetch(
        f"SELECT {_COLUMNS} FROM llm_usage WHERE created_at >= ? AND created_at <= ?"
        " ORDER BY created_at DESC, id DESC LIMIT ?",
        (since, now, MAX_ROWS),
    )
    if len(raw) > THREAD_ABOVE_ROWS:
        return await asyncio.to_thread(_aggregate, raw, days, since, now)
    return _aggregate(raw, days, since, now)


# Reports being computed, by the database they read (held weakly: a closed database takes its own along).
_in_flight: weakref.WeakKeyDictionary[Database, dict[int, asyncio.Task[TokenReport]]] = weakref.WeakKeyDictionary()


async def shared_token_report(days: int = 30) -> TokenReport:
    """`token_report(days)`, with callers that ask while one is being computed sharing its result.

    Every open monitoring tab refreshes on the same run change: they read the table once, not once each.
    """
    in_flight = _in_flight.setdefault(db.current(), {})
    task = in_flight.get(days)
    if task is None or task.done():
        task = in_flight[days] = asyncio.create_task(token_report(days), name="stepdeck-token-report")
        task.add_done_callback(lambda t: _forget(in_flight, days, t))
    return await asyncio.shield(task)  # a caller that goes away does not cancel the others' result


def _forget(in_flight: dict[int, asyncio.Task[TokenReport]], days: int, task: asyncio.Task[TokenReport]) -> None:
    if in_flight.get(days) is task:
        del in_flight[days]
    if not task.cancelled():
        task.exception()  # retrieved here, so a result nobody awaited any more is not reported as lost
