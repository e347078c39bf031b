"""Terminal commands: headless `run`, `check`, `sweep`, `migrate` (`main.py` parses and wires)."""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import json
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any, TextIO

from engine import feed, operations, orphans, queries
from engine.audit import audit
from engine.db import connected
from engine.engine import Engine, make_owner_id
from engine.errors import OperationError
from engine.heap import freeze_startup_objects
from engine.hub import Change, ChangeKind
from engine.readmodel import RunDetail, duration_s
from engine.records import utcnow
from engine.registry import Registry
from engine.settings import Settings
from models.db import migrate
from models.status import RunStatus, StepStatus

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_WAITING, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
SETTLED = {RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED, RunStatus.WAITING}


def parse_assignments(pairs: Sequence[str]) -> dict[str, str]:
    """`-i key=value` pairs as a dict; a pair without '=' is a usage error."""
    values: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"expected key=value, got {pair!r}")
        values[key.strip()] = value
    return values


def _clip(text: Any, limit: int = 300, *, one_line: bool = True) -> str:
    s = text if isinstance(text, str) else json.dumps(text, ensure_ascii=False, indent=None if one_line else 2)
    if one_line:
        s = " ".join(s.split())
    return s if len(s) <= limit else s[: limit - 1] + "…"


class ProgressPrinter:
    """Prints a run's changes as lines on a terminal."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.started = time.monotonic()

    def line(self, text: str) -> None:
        print(f"[{time.monotonic() - self.started:6.1f}s] {text}", file=self.out, flush=True)

    def show(self, change: Change) -> None:
        c = change
        if c.kind == ChangeKind.STEP:
            attempt = f" (attempt {c.attempt})" if c.attempt else ""
            why = f": {c.message}" if c.message else ""
            self.line(f"{c.step_key}{attempt}: {c.to_status}{why}")
        elif c.kind == ChangeKind.PROGRESS:
            self.line(f"{c.step_key}: {round(100 * (c.fraction or 0))}% {c.message or ''}")
        elif c.kind == ChangeKind.LOG:
            self.line(f"{c.step_key} | {c.line}")
        elif c.kind == ChangeKind.RUN:
            why = f": {c.message}" if c.message and c.to_status == RunStatus.FAILED else ""
            self.line(f"run {c.run_id}: {c.to_status}{why}")
        elif c.kind in (ChangeKind.LATE_RESULT, ChangeKind.STALE):
            self.line(f"{c.step_key}: {c.message}")


async def _follow_local(run_id: int, sub: Any, printer: ProgressPrinter) -> str:
    """Print changes until the run settles; returns its status."""
    while True:
        change = await sub.get(timeout_s=1.0)
        if change is not None:
            printer.show(change)
            if change.kind == ChangeKind.RUN and change.to_status in SETTLED:
                return str(change.to_status)
            continue
        status = (await queries.run_detail(run_id)).status
        if status in SETTLED:
            return status.value


async def _follow_remote(run_id: int, printer: ProgressPrinter, after: int, stale_after_s: float) -> str:
    """Another process drives the run: print its events from the table until it settles, or until
    its engine stops beating (then the sweep will fail the run; waiting longer helps nobody)."""
    last = after
    while True:
        for event in await queries.events_after(run_id, last):
            last = event["id"]
            printer.show(Change.from_event(event))
            if event["kind"] == "run" and event["to_status"] in SETTLED:
                return str(event["to_status"])
        run = await queries.run_detail(run_id)
        beat = run.heartbeat_at
        if run.status == RunStatus.RUNNING and beat is not None:
            age_s = (utcnow() - beat).total_seconds()
            if age_s > stale_after_s:
                printer.line(f"the engine driving run {run_id} stopped responding ({age_s:.0f} s without heartbeat)")
                return RunStatus.FAILED.value
        await asyncio.sleep(0.3)


async def _ask_choice(run: RunDetail, out: TextIO) -> tuple[str, int] | None:
    """Show the alternatives of the first waiting step and ask which to select (a terminal only).

    The question is asked in a daemon thread so Ctrl-C still reaches the event loop."""
    step = next(s for s in run.steps if s.status == StepStatus.WAITING)
    count = len(step.alternatives)
    print(f"\nStep {step.key!r} ({step.label}) produced {count} alternatives:", file=out)
    for i, alt in enumerate(step.alternatives):
        print(f"  [{i}] {_clip(alt)}", file=out)
    while True:
        answer = await _read_line(f"Select 0-{count - 1} (Enter leaves the run waiting): ")
        if answer is None or not answer.strip():
            return None
        if answer.strip().isdigit() and int(answer) < count:
            return step.key, int(answer)
        print(f"please answer a number from 0 to {count - 1}", file=out)


async def _read_line(prompt: str) -> str | None:
    """input() without blocking the loop; None at end of input (Ctrl-D)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[str | None] = loop.create_future()

    def read() -> None:
        try:
            line: str | None = input(prompt)
        except EOFError:
            line = None

        def deliver() -> None:
            if not future.done():
                future.set_result(line)

        loop.call_soon_threadsafe(deliver)

    threading.Thread(target=read, name="stepdeck-prompt", daemon=True).start()
    return await future


def _how_to_continue(run: RunDetail, settings: Settings, out: TextIO) -> None:
    waiting = [s for s in run.steps if s.status == StepStatus.WAITING]
    for step in waiting:
        count = len(step.alternatives)
        print(f"\nRun {run.id} is waiting for a choice at step {step.key!r} ({count} alternatives):", file=out)
        for i, alt in enumerate(step.alternatives):
            print(f"  [{i}] {_clip(alt, 160)}", file=out)
    key = waiting[0].key
    base = f"http://{settings.host}:{settings.port}"
    print(
        f"\nTo continue, pick one in the dashboard ({base}/runs/{run.id}) or with the API while the server runs:\n"
        f"  curl -X POST {base}/api/runs/{run.id}/steps/{key}/select "
        "-H 'Content-Type: application/json' -d '{\"index\": 0}'",
        file=out,
    )


def _summary(run: RunDetail, out: TextIO) -> None:
    if run.status == RunStatus.COMPLETED:
        has_dependents = {n for s in run.steps for n in s.needs}
        for step in run.steps:
            if step.key not in has_dependents:
                print(f"\n{step.label} ({step.key}):\n{_clip(step.output, 4000, one_line=False)}", file=out)
    took = duration_s(run.started_at, run.finished_at)
    duration = f" in {took:.1f} s" if took is not None else ""
    error = f": {run.error}" if run.error else ""
    print(f"\nrun {run.id} {run.status.value}{duration}{error}", file=out)


async def run_headless(
    settings: Settings, workflows: Registry, workflow: str, pairs: Sequence[str], out: TextIO = sys.stdout
) -> int:
    """Start a run and drive it in this process; exit code 0 only when it completes."""
    try:
        inputs = parse_assignments(pairs)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    async with connected(settings.db_url) as database:
        await feed.start()  # a cancel or a choice made on a dashboard reaches this run at once (PostgreSQL)
        catalog = workflows.load(settings.workflows_dir)
        for error in catalog.errors:
            print(f"warning: {error}", file=sys.stderr)
        engine = Engine(settings, workflows=workflows, owner=make_owner_id(headless=True), claim_queued=False)
        await engine.start(recover=False)
        freeze_startup_objects()
        try:
            try:
                defn = workflows.get(workflow)
                run_id = await operations.start_run(defn, inputs, f"cli:{getpass.getuser()}", from_strings=True)
            except OperationError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return EXIT_USAGE
            printer = ProgressPrinter(out)
            printer.line(f"run {run_id} of {workflow!r} queued")
            while True:
                seen = await queries.events_after(run_id, 0, limit=100_000)
                sub = database.hub.subscribe(run_id)
                try:
                    if await engine.adopt(run_id):
                        status = await _follow_local(run_id, sub, printer)
                        await engine.wait_idle()
                    else:
                        printer.line(f"run {run_id} was claimed by another engine (a server?); following it")
                        after = seen[-1]["id"] if seen else 0
                        status = await _follow_remote(run_id, printer, after, settings.stale_after_s)
                finally:
                    sub.close()
                run = await queries.run_detail(run_id, workflows)
                if status != RunStatus.WAITING:
                    break
                if not sys.stdin.isatty():
                    _how_to_continue(run, settings, out)
                    return EXIT_WAITING
                choice = await _ask_choice(run, out)
                if choice is None:
                    _how_to_continue(run, settings, out)
                    return EXIT_WAITING
                try:
                    await operations.select(run_id, choice[0], choice[1], f"cli:{getpass.getuser()}")
                except OperationError as exc:
                    print(f"error: {exc}", file=sys.stderr)
            _summary(run, out)
            return EXIT_OK if run.status == RunStatus.COMPLETED else EXIT_FAILED
        finally:
            with contextlib.suppress(Exception):
                await engine.stop("the headless run was interrupted", grace_s=0)


async def check(settings: Settings, out: TextIO = sys.stdout) -> int:
    """Audit the database for impossible states; non-zero exit if any is found."""
    async with connected(settings.db_url, must_exist=True):
        findings, counts = await audit()
    looked = ", ".join(f"{n} {table}" for table, n in counts.items())
    for finding in findings:
        print(f"PROBLEM {finding}", file=out)
    if findings:
        print(f"{len(findings)} problem(s) found ({looked} checked)", file=out)
        return EXIT_FAILED
    print(f"no problems found ({looked} checked)", file=out)
    return EXIT_OK


async def sweep(settings: Settings, out: TextIO = sys.stdout) -> int:
    """Fail runs whose engine is gone (dead process or heartbeat older than stale_after_s)."""
    async with connected(settings.db_url, must_exist=True):
        failed = await orphans.recover_orphans(settings, me=f"sweep:{getpass.getuser()}")
    for verdict in failed:
        done = "re-queued" if verdict.action == "requeue" else "failed"
        print(f"run {verdict.run_id}: {done}, {verdict.reason}", file=out)
    requeued = sum(1 for v in failed if v.action == "requeue")
    print(
        f"sweep: {len(failed) - requeued} orphaned run(s) failed, {requeued} re-queued "
        f"(policy {settings.on_orphan}, stale after {settings.stale_after_s:g} s)",
        file=out,
    )
    return EXIT_OK


async def migrate_command(settings: Settings, out: TextIO = sys.stdout) -> int:
    applied = await migrate(settings.db_url)
    print(f"applied: {', '.join(applied)}" if applied else "database is up to date", file=out)
    return EXIT_OK
