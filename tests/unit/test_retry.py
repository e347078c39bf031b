"""engine/retry.py: the retry policy as pure functions (delays, limits, which failures)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from engine.retry import FailureKind, RetryPolicy, attempt_label, delay_s, max_tokens_for, plan_retry

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def test_delays_grow_by_the_backoff_up_to_the_cap() -> None:
    policy = RetryPolicy(retries=10, delay_s=10, backoff=2, max_delay_s=60)
    assert [delay_s(policy, n) for n in range(5)] == [10, 20, 40, 60, 60]
    assert delay_s(RetryPolicy(retries=3, delay_s=5, backoff=1), 2) == 5
    assert delay_s(RetryPolicy(retries=10_000, delay_s=1, backoff=100, max_delay_s=30), 5000) == 30  # no overflow


def test_a_retry_is_planned_while_retries_are_left() -> None:
    policy = RetryPolicy(retries=2, delay_s=3, backoff=2)
    first = plan_retry(policy, 0, FailureKind.ERROR, NOW)
    assert first is not None
    assert (first.due_at, first.retries_used, first.next_attempt) == (NOW + timedelta(seconds=3), 1, 2)
    assert "attempt 2 of 3" in first.message(FailureKind.ERROR)
    second = plan_retry(policy, 1, FailureKind.TIMEOUT, NOW)
    assert second is not None and second.due_at == NOW + timedelta(seconds=6) and second.next_attempt == 3
    assert plan_retry(policy, 2, FailureKind.ERROR, NOW) is None  # spent
    assert plan_retry(RetryPolicy(), 0, FailureKind.ERROR, NOW) is None  # retries: 0 by default


def test_only_the_listed_failures_are_retried() -> None:
    policy = RetryPolicy(retries=1)  # default retry_on: error, timeout
    assert plan_retry(policy, 0, FailureKind.TRUNCATED, NOW) is None
    truncation_only = RetryPolicy(retries=1, on=("truncated",))
    assert plan_retry(truncation_only, 0, FailureKind.ERROR, NOW) is None
    assert plan_retry(truncation_only, 0, FailureKind.TRUNCATED, NOW) is not None


def test_max_tokens_rises_by_the_factor_per_retry_within_the_limit() -> None:
    policy = RetryPolicy(retries=3, on=("truncated",), max_tokens_factor=2)
    assert [max_tokens_for(1000, policy, n, 5000) for n in range(4)] == [1000, 2000, 4000, 5000]
    assert max_tokens_for(1000, RetryPolicy(retries=3), 2, 5000) == 1000


def test_attempt_label() -> None:
    assert attempt_label(1, 2) == "attempt 2 of 3"
    assert attempt_label(0, 0) == ""
