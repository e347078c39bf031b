"""The engine of one process: claims queued runs, drives them, keeps their heartbeats.

Queued runs are claimed through the guarded QUEUED → RUNNING transition, so several engines (or a
headless `main.py run` beside a server) never drive the same run twice. The engine learns of new
work from the hub (runs queued in this process) and by polling (runs queued elsewhere).

On a database shared by several processes (PostgreSQL) the engine is a registered worker with a lease
(`engine/leases.py`): it claims with `FOR UPDATE SKIP LOCKED`, renews its lease every heartbeat, and
when it cannot renew in time it stops its runs without writing (self-fencing) and registers anew.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
import time
from collections.abc import Callable

from engine import forks, kinds, leases, logs, orphans, records, transitions
from engine.db import current
from engine.driver import RunDriver
from engine.hub import Change, ChangeKind, Hub
from engine.llm import providers
from engine.llm.model_check import log_model_warnings
from engine.llm.openai_compat import import_client
from engine.notify.notifier import Notifier
from engine.registry import Registry
from engine.settings import Settings
from engine.slots import StepSlots
from engine.step_runner import StopReason
from engine.store import fetch
from engine.threads import DaemonPool
from engine.waits import wait_set
from models.schema import is_postgres
from models.status import RunStatus

log = logs.logger(__name__)

CLAIM_WAIT_S = 15.0  # how long a stop lets the claim in flight finish (cancelled mid-claim, a run would be lost)
INTERRUPT_WAIT_S = 10.0  # how long a stop waits for the runs it interrupted to record it


def make_owner_id(*, headless: bool = False) -> str:
    """host:pid:boot — the boot part tells a restarted process from the one before it."""
    return f"{socket.gethostname()}:{os.getpid()}:{orphans.HEADLESS_BOOT if headless else ''}{secrets.token_hex(4)}"


class Engine:
    """Executes runs in the background of this process (a server, a worker, a headless run)."""

    def __init__(
        self,
        settings: Settings,
        *,
        workflows: Registry | None = None,
        owner: str | None = None,
        claim_queued: bool = True,
    ) -> None:
        self.settings = settings
        # The definitions of its process, whose models it checks at start (runs carry their own snapshot).
        self.workflows = workflows if workflows is not None else Registry()
        self.shared = is_postgres(settings.db_url)  # several processes: a worker with a lease
        self.owner = owner or (leases.new_worker_id() if self.shared else make_owner_id())
        self.claim_queued = claim_queued
        interval_s, ttl_s = settings.heartbeat_interval_s, settings.stale_after_s
        self.lease = leases.LocalDeadline(ttl_s, leases.fencing_margin_s(ttl_s, interval_s))
        self.registered = False
        self.fenced = 0  # how often this process lost its lease and stopped its runs
        self.threads = DaemonPool()
        self.hand_overs: kinds.HandOvers | None = None  # how its threads hand sync steps' outcomes to the loop
        self.providers = providers.Providers()  # the model clients of its LLM steps, closed when it stops
        self.step_slots = StepSlots(settings.max_concurrent_steps)
        self.drivers: dict[int, RunDriver] = {}
        self._driver_tasks: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._loops: list[asyncio.Task[None]] = []
        self._dispatcher: asyncio.Task[None] | None = None
        self._remove_listener: Callable[[], None] | None = None
        self._stopping = False
        # Runs claimed as they are created (`claim_new`) and not yet driven: room kept for them.
        self._new_claims = 0
        self._new_claims_settled = asyncio.Event()
        self._new_claims_settled.set()
        # Whether the last look at the queue found it empty, with no run queued since (`claim_new`).
        self._queue_empty = False
        self._queued_seen = 0  # runs seen queued (hub) that are not ours: a look that saw fewer missed some
        self.stop_reason = "the server shut down"
        self.notifier: Notifier | None = None
        self._hub: Hub | None = None
        logs.install()  # its lines carry the worker, the run, the step and the attempt

    async def start(self, *, recover: bool = True) -> None:
        """Recover orphans (runs of dead owners), then start claiming and heartbeating."""
        hub = self._hub = current().hub
        hub.bind_loop(asyncio.get_running_loop())
        self.hand_overs = kinds.HandOvers(asyncio.get_running_loop(), current())
        forks.install()
        if providers.provider_name(self.settings) != providers.SIMULATED:
            # The model client takes about a second to import: not on the event loop at the first LLM step.
            self._loops.append(asyncio.create_task(import_client(), name="stepdeck-import"))
            # Models the definitions name that the endpoint does not list: a warning in the log, never a refusal.
            check = log_model_warnings(self.settings, self.workflows.definitions.values(), self.providers)
            self._loops.append(asyncio.create_task(check, name="stepdeck-model-check"))
        if self.shared:
            await self._register()
        if recover:
            await orphans.recover_orphans(self.settings, self.owner)
        self._remove_listener = hub.add_listener(self._on_change)
        if self.claim_queued:
            if not self.shared:
                hub.claim_new = self.claim_new
            self._dispatcher = asyncio.create_task(
                self._dispatch_loop(), name="stepdeck-dispatch", context=logs.context_with(worker=self.owner)
            )
        self._loops.append(
            asyncio.create_task(
                self._heartbeat_loop(), name="stepdeck-heartbeat", context=logs.context_with(worker=self.owner)
            )
        )
        if self.shared:
            self._loops.append(
                asyncio.create_task(
                    self._lease_loop(), name="stepdeck-lease", context=logs.context_with(worker=self.owner)
                )
            )
        # Notifications are delivered by the engines (servers, workers), from the outbox every engine writes.
        self.notifier = Notifier(self.settings, self.owner, hub)
        self._loops.append(
            asyncio.create_task(
                self.notifier.run(), name="stepdeck-notify", context=logs.context_with(worker=self.owner)
            )
        )

    @property
    def hub(self) -> Hub:
        """The hub of the database this engine runs on (taken when it starts)."""
        if self._hub is None:
            raise RuntimeError("the engine has not started")
        return self._hub

    def longest_stop_s(self) -> float:
        """How long `stop` waits at most, by its own bounds (the grace period, a claim, the interruption)."""
        return self.settings.shutdown_grace_s + CLAIM_WAIT_S + INTERRUPT_WAIT_S

    async def stop(self, why: str = "the server shut down", grace_s: float | None = None) -> None:
        """Stop claiming; give in-flight steps `grace_s` (default: the setting) to finish, then
        interrupt the rest (failed as interrupted, or re-queued under `resume`). Never leaves a run
        running."""
        self._stopping = True
        self.stop_reason = why
        self._wake.set()
        if self._hub is not None and self._hub.claim_new == self.claim_new:
            self._hub.claim_new = None
        # The dispatcher is not cancelled mid-claim (the claim would commit unseen, leaving a run
        # owned by nobody alive): it notices `_stopping` and returns after the claim in flight. Runs
        # being created claimed already are waited for too: their drivers are drained below.
        if self._dispatcher is not None:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(self._dispatcher), timeout=CLAIM_WAIT_S)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._new_claims_settled.wait(), timeout=CLAIM_WAIT_S)
        grace_s = self.settings.shutdown_grace_s if grace_s is None else grace_s
        for driver in list(self.drivers.values()):
            driver.drain()
        if self._driver_tasks and grace_s > 0:
            await asyncio.wait(self._driver_tasks, timeout=grace_s)
        for driver in list(self.drivers.values()):
            driver.stop(StopReason.SHUTDOWN)
        if self._driver_tasks:
            await asyncio.wait(self._driver_tasks, timeout=INTERRUPT_WAIT_S)
        for task in list(self._driver_tasks):
            task.cancel()
        # Heartbeats went on through the grace period: a draining run is alive, not an orphan.
        for task in self._loops:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*self._loops, *self._driver_tasks, return_exceptions=True)
        if self._dispatcher is not None and not self._dispatcher.done():
            self._dispatcher.cancel()
        if self._remove_listener:
            self._remove_listener()
        self.threads.shutdown()
        if self.shared and self.registered:
            self.registered = False
            try:
                await leases.retire(self.owner)
            except Exception:
                log.exception("could not end the lease of worker %s; it runs out by itself", self.owner)
        await self.providers.close()  # the model clients' connections belong to this loop

    def wake(self) -> None:
        self._wake.set()

    def healthy(self) -> bool:
        """Able to take work: not stopping, and (where there are leases) holding a live one."""
        return not self._stopping and (not self.shared or (self.registered and self.lease.holds()))

    async def adopt(self, run_id: int) -> bool:
        """Claim one queued run and drive it (headless runs); False if another engine has it."""
        for claimed in await transitions.claim_runs([run_id], self.owner):
            self._spawn(run_id, claimed)
            return True
        return False

    def claim_new(self) -> transitions.NewRunClaim | None:
        """A claim for a run about to be created in this process, when this engine has room for it now and
        no queued run waits before it (the last look found the queue empty, and none was queued since):
        the run is then written RUNNING in the commit that creates it, and driven at once, with no claim
        of its own to commit and no read for its driver. None: the run is queued, as by another process."""
        if self._stopping or not self._queue_empty or current().check_file():
            return None
        if len(self.drivers) + self._new_claims >= self.settings.max_concurrent_runs:
            return None
        self._new_claims += 1
        self._new_claims_settled.clear()
        return _NewRunClaim(self)

    def _settle_new_claim(self) -> None:
        self._new_claims -= 1
        if not self._new_claims:
            self._new_claims_settled.set()

    def _drive_new(self, claimed: transitions.ClaimedRun) -> None:
        """A run claimed as it was created: driven now; drained at once when this engine stops meanwhile
        (the driver releases it to the queue, as a claim made while stopping is)."""
        self._spawn(claimed.id, claimed)
        if self._stopping:
            self.drivers[claimed.id].drain()

    async def wait_idle(self) -> None:
        """Wait until this engine drives no run (tests, headless runs)."""
        while self._driver_tasks:
            await asyncio.wait(set(self._driver_tasks))

    # --- internals ---------------------------------------------------------------------------------

    def _on_change(self, change: Change) -> None:
        driver = self.drivers.get(change.run_id)
        queued = change.kind == ChangeKind.RUN and change.to_status == RunStatus.QUEUED
        if queued and (driver is None or change.from_status is not None):  # not one created ours (`claim_new`)
            self._queue_empty = False
            self._queued_seen += 1
            self._wake.set()
        if driver is None:
            return
        if change.kind == ChangeKind.RUN and change.to_status == RunStatus.CANCELLED:
            driver.stop(StopReason.CANCELLED)
        elif change.kind == ChangeKind.ACTION:
            driver.notice_outside_change()

    def _spawn(self, run_id: int, claimed: transitions.ClaimedRun | None = None) -> None:
        driver = RunDriver(self, run_id, claimed=claimed)
        self.drivers[run_id] = driver
        # The run's lines (its driver's, its steps', their threads') say which run and which worker.
        fields = logs.context_with(run_id=run_id, worker=self.owner)
        task = asyncio.create_task(driver.drive(), name=f"stepdeck-run-{run_id}", context=fields)
        self._driver_tasks.add(task)

        def done(t: asyncio.Task[None]) -> None:
            self._driver_tasks.discard(t)
            if self.drivers.get(run_id) is driver:
                del self.drivers[run_id]
            if not self._queue_empty:
                self._wake.set()  # a slot is free for a queued run

        task.add_done_callback(done)

    async def _claim_some(self) -> None:
        free = self.settings.max_concurrent_runs - len(self.drivers) - self._new_claims
        if free <= 0 or current().check_file():
            self._queue_empty = False  # not looked at: runs may be queued
            return
        if self.shared:
            if not self.healthy():
                return  # no live lease: nothing may be claimed (the database would refuse it too)
            for run_id in await transitions.claim_queued_runs(self.owner, free, skip=list(self.drivers)):
                if self._stopping:
                    await transitions.release_run(run_id, self.owner, f"released: {self.stop_reason}")
                else:
                    self._spawn(run_id)
            return
        seen = self._queued_seen
        rows = await fetch(
            "SELECT id FROM runs WHERE status = ? ORDER BY id LIMIT ?", (RunStatus.QUEUED, free), engine=True
        )
        # Not one that a driver of ours still winds down (taken away, then re-queued).
        ids = [row["id"] for row in rows if row["id"] not in self.drivers]
        if not ids or self._stopping:
            self._queue_empty = not rows and seen == self._queued_seen
            return
        claimed_runs = await transitions.claim_runs(ids, self.owner)
        # Every queued run was claimed (the look saw fewer than it could take), and none was queued since.
        self._queue_empty = len(rows) < free and len(claimed_runs) == len(ids) and seen == self._queued_seen
        for claimed in claimed_runs:
            if not self._stopping:
                self._spawn(claimed.id, claimed)
                continue
            try:
                await transitions.release_run(claimed.id, self.owner, f"released: {self.stop_reason}")
            except Exception:  # the others are released all the same; this one is left to recovery
                log.exception("run %s: could not be released as the engine stops", claimed.id)

    async def _dispatch_loop(self) -> None:
        while not self._stopping:
            self._wake.clear()
            try:
                await self._claim_some()
            except Exception:
                log.exception("claiming queued runs failed; retrying")
            await wait_set(self._wake, self.settings.poll_interval_s)

    async def _heartbeat_loop(self) -> None:
        while not self._stopping:
            await asyncio.sleep(self.settings.heartbeat_interval_s)
            try:
                if current().check_file():  # reported (once, loudly) even when nothing runs
                    continue  # the beat could not be written; the reason was logged
                await records.beat(self.owner, [i for i, d in self.drivers.items() if d.owner == self.owner])
                await self._drop_lost_runs()
            except Exception:
                log.exception("heartbeat failed; retrying")

    async def _register(self) -> None:
        sent = time.monotonic()
        await leases.register(self.owner, self.settings.stale_after_s)
        self.lease.renewed(sent)
        self.registered = True
        log.info("worker %s registered (lease %g s, renewed every %g s)", self.owner, *self._lease_times())

    def _lease_times(self) -> tuple[float, float]:
        return self.settings.stale_after_s, self.settings.heartbeat_interval_s

    async def _lease_loop(self) -> None:
        """Renew the lease every heartbeat; stop every run before it ends when it cannot be renewed."""
        ttl_s, interval_s = self._lease_times()
        while not self._stopping:
            await asyncio.sleep(interval_s)
            if not self.registered:
                # A new id: the runs of the old one are recovered by others, never taken back.
                self.owner = leases.new_worker_id()
                try:
                    await asyncio.wait_for(self._register(), timeout=interval_s)
                    self._wake.set()
                except Exception as exc:
                    log.warning("could not register as a worker (%s: %s); retrying", type(exc).__name__, exc)
                continue
            sent = time.monotonic()
            held: bool | None = None
            try:
                held = await asyncio.wait_for(leases.renew(self.owner, ttl_s), timeout=interval_s)
            except Exception as exc:
                log.warning("could not renew the lease of worker %s (%s: %s)", self.owner, type(exc).__name__, exc)
            if held:
                self.lease.renewed(sent)
            elif held is False:
                self._fence("its lease had run out (the process was stopped or cut off for too long)")
            elif not self.lease.holds():
                self._fence(f"it could not renew its lease in time (it lasts {ttl_s:g} s)")

    def _fence(self, why: str) -> None:
        """Stop every run of this engine without writing anything: another process recovers them."""
        self.registered = False
        self.lease.lapse()
        self.fenced += 1
        log.error(
            "worker %s stops its %d run(s) without writing: %s; it registers again under a new id",
            self.owner,
            len(self.drivers),
            why,
        )
        for driver in list(self.drivers.values()):
            driver.stop(StopReason.LOST)

    async def _drop_lost_runs(self) -> None:
        """Stop driving runs that another process cancelled or took over (no status is written)."""
        if not self.drivers:
            return
        ids = list(self.drivers)
        marks = ", ".join("?" for _ in ids)
        rows = await fetch(f"SELECT id, status, owner FROM runs WHERE id IN ({marks})", ids, engine=True)
        for row in rows:
            driver = self.drivers.get(row["id"])
            if driver and (row["status"] != RunStatus.RUNNING or row["owner"] != driver.owner):
                driver.stop(StopReason.CANCELLED if row["status"] == RunStatus.CANCELLED else StopReason.LOST)


class _NewRunClaim:
    """`Engine.claim_new`'s claim: the room it keeps is given back once, when the run is driven or when its
    creation is over (a creation whose caller stopped waiting may still commit: its run is driven then)."""

    def __init__(self, engine: Engine) -> None:
        self.owner = engine.owner
        self._engine = engine
        self._held = True

    def adopt(self, claimed: transitions.ClaimedRun) -> None:
        self.release()
        self._engine._drive_new(claimed)

    def release(self) -> None:
        if self._held:
            self._held = False
            self._engine._settle_new_claim()
