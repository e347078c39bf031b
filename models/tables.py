"""Tortoise models of runs, steps, attempts and events. Data only: behaviour lives in `engine/`.

Class docstrings become table comments, and Tortoise's SQLite migrations split statements on
semicolons: keep semicolons and quotes out of them.
"""

from __future__ import annotations

from typing import Any

from tortoise import fields
from tortoise.indexes import Index
from tortoise.models import Model

from models.status import AttemptStatus, RunStatus, StepStatus


def part_of(owner: str, related_name: str) -> fields.ForeignKeyRelation[Any]:
    """A row's key to the row it is part of (`owner`, as "models.Run"): deleting that row deletes this one."""
    return fields.ForeignKeyField(owner, related_name=related_name, on_delete=fields.CASCADE)


class Run(Model):
    """One execution of a workflow with inputs, with a snapshot of the definition it started with."""

    id = fields.BigIntField(primary_key=True)
    workflow = fields.CharField(max_length=200)
    definition: fields.JSONField[Any] = fields.JSONField()
    inputs: fields.JSONField[Any] = fields.JSONField()
    status = fields.CharEnumField(RunStatus, max_length=16, default=RunStatus.QUEUED)
    error = fields.TextField(null=True)
    actor = fields.CharField(max_length=200)
    owner = fields.CharField(max_length=200, null=True)  # engine process (host:pid:boot) running it
    heartbeat_at = fields.DatetimeField(null=True)
    recoveries = fields.IntField(default=0)  # how often it was re-queued after its owner died
    schedule = fields.CharField(max_length=100, null=True)  # the schedule that started it, if one did
    scheduled_for = fields.DatetimeField(null=True)  # the fire time it was started for
    created_at = fields.DatetimeField()
    started_at = fields.DatetimeField(null=True)
    finished_at = fields.DatetimeField(null=True)
    updated_at = fields.DatetimeField()

    steps: fields.ReverseRelation[Step]

    class Meta:
        table = "runs"
        indexes = (
            Index(fields=("status", "heartbeat_at"), name="runs_status_heartbeat"),
            Index(fields=("workflow", "id"), name="runs_workflow_id"),
            Index(fields=("status", "id"), name="runs_status_id"),  # the runs list by status, newest first
            Index(fields=("finished_at",), name="runs_finished_at"),  # the prune
        )


class Step(Model):
    """One node of a run. What it produced lives on its attempts (the current one is `attempt`)."""

    id = fields.BigIntField(primary_key=True)
    run: fields.ForeignKeyRelation[Run] = part_of("models.Run", "steps")
    run_id: int
    key = fields.CharField(max_length=100)
    label = fields.CharField(max_length=200)
    position = fields.IntField()  # declared order
    kind = fields.CharField(max_length=40)
    needs: fields.JSONField[Any] = fields.JSONField()
    status = fields.CharEnumField(StepStatus, max_length=16, default=StepStatus.PENDING)
    attempt = fields.IntField(default=0)  # number of the current attempt, 0 before the first
    stale = fields.BooleanField(default=False)
    stale_reason = fields.TextField(null=True)
    retries = fields.IntField(default=0)  # automatic retries its policy allows
    retries_used = fields.IntField(default=0)  # automatic retries since it was started or reset by a person
    retry_at = fields.DatetimeField(null=True)  # when RETRYING: the due time of its next attempt
    updated_at = fields.DatetimeField()

    class Meta:
        table = "steps"
        unique_together = (("run", "key"),)
        indexes = (Index(fields=("status", "retry_at"), name="steps_status_retry_at"),)


class Attempt(Model):
    """One execution of a step. It owns everything the execution produced and is never reused by a retry."""

    id = fields.BigIntField(primary_key=True)
    run: fields.ForeignKeyRelation[Run] = part_of("models.Run", "attempts")
    run_id: int
    step: fields.ForeignKeyRelation[Step] = part_of("models.Step", "attempts")
    step_id: int
    number = fields.IntField()
    status = fields.CharEnumField(AttemptStatus, max_length=16, default=AttemptStatus.RUNNING)
    outputs: fields.JSONField[Any] = fields.JSONField(null=True)  # one per alternative
    selected_index = fields.IntField(null=True)
    partial_output = fields.TextField(null=True)  # what an interrupted execution had produced
    error = fields.TextField(null=True)
    error_detail = fields.TextField(null=True)  # traceback
    consumed: fields.JSONField[Any] = fields.JSONField()  # upstream key -> {attempt, index}
    logs: fields.JSONField[Any] = fields.JSONField()
    # When each line of `logs` was written, in epoch milliseconds (null on attempts made before times were kept)
    log_times: fields.JSONField[Any] = fields.JSONField(null=True)
    progress = fields.FloatField(null=True)
    progress_message = fields.TextField(null=True)
    llm: fields.JSONField[Any] = fields.JSONField(null=True)  # LLM steps: provider, limit, usage, calls
    owner = fields.CharField(max_length=200, null=True)
    started_at = fields.DatetimeField()
    finished_at = fields.DatetimeField(null=True)

    class Meta:
        table = "attempts"
        unique_together = (("step", "number"),)
        indexes = (Index(fields=("run_id", "id"), name="attempts_run_id"),)


class LlmUsage(Model):
    """Tokens one alternative of an LLM attempt used against its limit, one row each, for monitoring."""

    id = fields.BigIntField(primary_key=True)
    run: fields.ForeignKeyRelation[Run] = part_of("models.Run", "llm_usage")
    run_id: int
    attempt: fields.ForeignKeyRelation[Attempt] = part_of("models.Attempt", "llm_usage")
    attempt_id: int
    workflow = fields.CharField(max_length=200)
    step_key = fields.CharField(max_length=100)
    alternative = fields.IntField()
    provider = fields.CharField(max_length=40)
    model = fields.CharField(max_length=200)
    max_tokens = fields.IntField()
    prompt_tokens = fields.IntField()
    completion_tokens = fields.IntField()  # over the first call and its continuations
    peak_call_tokens = fields.IntField()  # the most of one call: what max_tokens bounds
    finish_reason = fields.CharField(max_length=40, null=True)
    truncated = fields.BooleanField()
    continuations = fields.IntField(default=0)
    outcome = fields.CharField(max_length=16)  # the attempt status when recorded
    created_at = fields.DatetimeField()
    estimated = fields.BooleanField(default=False)  # counts estimated from the text: the server reported none
    cost = fields.FloatField(null=True)  # USD from the price file; null when the model has no price

    class Meta:
        table = "llm_usage"
        unique_together = (("attempt", "alternative"),)
        indexes = (
            Index(fields=("workflow", "step_key", "created_at"), name="llm_usage_step_time"),
            Index(fields=("created_at",), name="llm_usage_time"),
            Index(fields=("run_id",), name="llm_usage_run_id"),  # deleting a run
        )


class Event(Model):
    """Append-only record of a transition or a human action. Its id orders the timeline of the run."""

    id = fields.BigIntField(primary_key=True)
    run: fields.ForeignKeyRelation[Run] = part_of("models.Run", "events")
    run_id: int
    step_key = fields.CharField(max_length=100, null=True)
    attempt = fields.IntField(null=True)
    kind = fields.CharField(max_length=40)
    from_status = fields.CharField(max_length=16, null=True)
    to_status = fields.CharField(max_length=16, null=True)
    actor = fields.CharField(max_length=200, null=True)
    message = fields.TextField(null=True)
    created_at = fields.DatetimeField()

    class Meta:
        table = "events"
        indexes = (Index(fields=("run_id", "id"), name="events_run_id"),)


class User(Model):
    """A person who signs in. Viewers read, operators also act on runs."""

    id = fields.BigIntField(primary_key=True)
    name = fields.CharField(max_length=64, unique=True)
    password_hash = fields.CharField(max_length=255)  # argon2id
    role = fields.CharField(max_length=16)
    disabled = fields.BooleanField(default=False)
    created_at = fields.DatetimeField()
    updated_at = fields.DatetimeField()

    class Meta:
        table = "users"


class ApiToken(Model):
    """A bearer token of a user for scripts, kept only as a hash."""

    id = fields.BigIntField(primary_key=True)
    user: fields.ForeignKeyRelation[User] = part_of("models.User", "tokens")
    user_id: int
    name = fields.CharField(max_length=100)
    prefix = fields.CharField(max_length=16)  # the first characters, to recognise a token in lists
    token_hash = fields.CharField(max_length=64, unique=True)  # sha256 of the token
    created_at = fields.DatetimeField()
    last_used_at = fields.DatetimeField(null=True)
    revoked_at = fields.DatetimeField(null=True)

    class Meta:
        table = "api_tokens"


class AuditEntry(Model):
    """Who did what outside any one run, such as signing in or using a token."""

    id = fields.BigIntField(primary_key=True)
    at = fields.DatetimeField()
    actor = fields.CharField(max_length=200)
    action = fields.CharField(max_length=40)
    detail = fields.TextField(null=True)
    address = fields.CharField(max_length=100, null=True)

    class Meta:
        table = "audit"
        indexes = (Index(fields=("at",), name="audit_at"),)


class ScheduleState(Model):
    """A schedule of a workflow as the server knows it: since when, and whether a person paused it."""

    id = fields.BigIntField(primary_key=True)
    workflow = fields.CharField(max_length=200)
    name = fields.CharField(max_length=100)
    paused = fields.BooleanField(default=False)
    paused_by = fields.CharField(max_length=200, null=True)
    first_seen_at = fields.DatetimeField()  # firings before this were never due
    updated_at = fields.DatetimeField()

    class Meta:
        table = "schedule_states"
        unique_together = (("workflow", "name"),)


class ScheduleFire(Model):
    """One fire time of a schedule: started (with its run), missed, or skipped. Unique per fire time,
    so a double firing (two processes, a restart at the wrong moment) starts one run."""

    id = fields.BigIntField(primary_key=True)
    workflow = fields.CharField(max_length=200)
    schedule = fields.CharField(max_length=100)
    fire_time = fields.DatetimeField()
    outcome = fields.CharField(max_length=16)  # started | missed | paused
    run: fields.ForeignKeyNullableRelation[Run] = fields.ForeignKeyField(
        "models.Run", related_name="fires", null=True, on_delete=fields.SET_NULL
    )
    run_id: int | None
    detail = fields.TextField(null=True)
    created_at = fields.DatetimeField()

    class Meta:
        table = "schedule_fires"
        unique_together = (("workflow", "schedule", "fire_time"),)
        indexes = (Index(fields=("run_id",), name="schedule_fires_run_id"),)  # deleting a run


class Notification(Model):
    """The outbox: one row per notifiable event, written in the commit of the transition that caused it.
    The notifier fans it out into one delivery per target that wants it."""

    id = fields.BigIntField(primary_key=True)
    run: fields.ForeignKeyRelation[Run] = part_of("models.Run", "notifications")
    run_id: int
    event = fields.CharField(max_length=40)  # run.failed, run.waiting, step.truncated, budget.reached ...
    step_key = fields.CharField(max_length=100, null=True)
    detail = fields.TextField(null=True)
    run_status = fields.CharField(max_length=16)  # as the transition left them
    error = fields.TextField(null=True)
    step_status = fields.CharField(max_length=16, null=True)
    fanned_out = fields.BooleanField(default=False)
    created_at = fields.DatetimeField()

    class Meta:
        table = "notifications"
        indexes = (
            Index(fields=("fanned_out", "id"), name="notifications_fan_out"),
            Index(fields=("run_id",), name="notifications_run_id"),
        )


class Delivery(Model):
    """One notification to one target, retried with backoff until delivered or given up. The target is
    kept as a fingerprint and a redacted label, never as its URL (URLs carry tokens)."""

    id = fields.BigIntField(primary_key=True)
    notification: fields.ForeignKeyRelation[Notification] = part_of("models.Notification", "deliveries")
    notification_id: int
    run_id = fields.BigIntField()
    event = fields.CharField(max_length=40)
    target_key = fields.CharField(max_length=64)  # sha256 fingerprint of the target URL
    target_label = fields.CharField(max_length=300)  # scheme and host only
    channel = fields.CharField(max_length=16)  # webhook | apprise
    status = fields.CharField(max_length=16)  # pending | delivered | failed
    attempts = fields.IntField(default=0)
    next_at = fields.DatetimeField()
    lease_until = fields.DatetimeField(null=True)  # a process is sending it until then
    last_error = fields.TextField(null=True)
    response_code = fields.IntField(null=True)
    created_at = fields.DatetimeField()
    delivered_at = fields.DatetimeField(null=True)
    updated_at = fields.DatetimeField()

    class Meta:
        table = "deliveries"
        unique_together = (("notification", "target_key"),)
        indexes = (Index(fields=("status", "next_at"), name="deliveries_due"),)


class Worker(Model):
    """An engine process (a server, a worker, a headless run) on a database shared by several processes.

    Its id is new at every start. It owns runs while its lease holds, renewed on the database clock."""

    id = fields.CharField(max_length=64, primary_key=True)
    host = fields.CharField(max_length=255)  # for people: identity is the id alone
    pid = fields.IntField()
    started_at = fields.DatetimeField()
    version = fields.CharField(max_length=40)
    lease_until = fields.DatetimeField()

    class Meta:
        table = "workers"
        indexes = (Index(fields=("lease_until",), name="workers_lease_until"),)


class Lease(Model):
    """A named lease on the database clock, held by one process at a time.

    The leader's lease names the process that runs cron schedules, the sweep and the prune."""

    name = fields.CharField(max_length=64, primary_key=True)
    holder = fields.CharField(max_length=64)
    lease_until = fields.DatetimeField()
    acquired_at = fields.DatetimeField()

    class Meta:
        table = "leases"


class SignInFailure(Model):
    """A failed sign-in, counted per key (a user name or an address) by every dashboard process alike."""

    id = fields.BigIntField(primary_key=True)
    key = fields.CharField(max_length=300)  # name:<lowercased name> or address:<client address>
    at = fields.DatetimeField()

    class Meta:
        table = "sign_in_failures"
        indexes = (Index(fields=("key", "at"), name="sign_in_failures_key"),)


class SharedSecret(Model):
    """A secret every process of one database shares, such as the one that signs session cookies."""

    name = fields.CharField(max_length=64, primary_key=True)
    value = fields.TextField()
    created_at = fields.DatetimeField()

    class Meta:
        table = "shared_secrets"
