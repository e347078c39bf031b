"""The retry policy of a step: whether a failed attempt is retried automatically, and after how long.

Pure functions over the step's definition (`retries`, `retry_delay_s`, `retry_backoff`,
`retry_max_delay_s`, `retry_on`, `retry_max_tokens_factor`); the transition that writes a pending
retry is `transitions.fail_step(..., retry=...)`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

ACTOR = "retry policy"  # the actor of the events a retry writes


class FailureKind(StrEnum):
    ERROR = "error"  # the step raised
    TIMEOUT = "timeout"  # it ran past its timeout_s
    TRUNCATED = "truncated"  # an LLM output was cut off at max_tokens


RETRY_ON_DEFAULT = (FailureKind.ERROR.value, FailureKind.TIMEOUT.value)
MAX_RETRIES = 100
MAX_DELAY_S = 7 * 24 * 3600.0
MAX_TOKENS_FACTOR = 16.0


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    retries: int = 0
    delay_s: float = 10.0
    backoff: float = 2.0
    max_delay_s: float = 600.0
    on: tuple[str, ...] = RETRY_ON_DEFAULT
    max_tokens_factor: float = 1.0


# What a definition that says nothing of retries gets: no retry. Its fields, by the names a definition
# gives them (a step's, or a workflow's for its steps), are the defaults `definitions.parse_retry` starts from.
DEFAULT_POLICY = RetryPolicy()
DEFAULTS = {
    "retries": DEFAULT_POLICY.retries,
    "retry_delay_s": DEFAULT_POLICY.delay_s,
    "retry_backoff": DEFAULT_POLICY.backoff,
    "retry_max_delay_s": DEFAULT_POLICY.max_delay_s,
    "retry_on": DEFAULT_POLICY.on,
    "retry_max_tokens_factor": DEFAULT_POLICY.max_tokens_factor,
}


@dataclass(frozen=True, slots=True)
class PendingRetry:
    """What `fail_step` writes for a failure the policy retries: the due time, and which attempt it starts."""

    due_at: datetime
    delay_s: float
    retries_used: int  # after this retry is counted
    retries: int

    @property
    def next_attempt(self) -> int:
        """The number of the coming attempt within this series (1 is the first execution)."""
        return self.retries_used + 1

    def message(self, kind: FailureKind) -> str:
        return (
            f"retrying in {self.delay_s:g} s after {_WHAT[kind]}"
            f" (attempt {self.next_attempt} of {self.retries + 1}, due {self.due_at:%H:%M:%S} UTC)"
        )


_WHAT = {FailureKind.ERROR: "an error", FailureKind.TIMEOUT: "a timeout", FailureKind.TRUNCATED: "a cut-off output"}


def delay_s(policy: RetryPolicy, retries_used: int) -> float:
    """The delay before retry number `retries_used + 1`: the base delay times the backoff per earlier retry,
    at most `max_delay_s`."""
    try:
        raw = policy.delay_s * policy.backoff**retries_used
    except OverflowError:
        raw = policy.max_delay_s
    return max(0.0, min(raw, policy.max_delay_s))


def plan_retry(policy: RetryPolicy, retries_used: int, kind: FailureKind, now: datetime) -> PendingRetry | None:
    """The retry of an attempt that failed with `kind`, or None when the policy does not retry it (not listed
    in `retry_on`, or its retries are spent). `retries_used`: automatic retries already made in this series."""
    if kind.value not in policy.on or retries_used >= policy.retries:
        return None
    wait = delay_s(policy, retries_used)
    return PendingRetry(now + timedelta(seconds=wait), wait, retries_used + 1, policy.retries)


def max_tokens_for(base: int, policy: RetryPolicy, retries_used: int, limit: int) -> int:
    """`max_tokens` of an attempt after `retries_used` retries: raised by the factor per retry, at most `limit`."""
    if policy.max_tokens_factor == 1.0 or retries_used == 0:
        return base
    return int(min(limit, base * policy.max_tokens_factor**retries_used))


def attempt_label(retries_used: int, retries: int) -> str:
    """ "attempt 2 of 3" for a step with a retry policy; "" without one."""
    return f"attempt {retries_used + 1} of {retries + 1}" if retries else ""
