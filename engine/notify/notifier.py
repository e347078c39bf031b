"""Delivers the outbox: fans each notification out into one delivery per target that wants it, sends the
due deliveries, and retries failures with backoff for up to a day.

At least once: a notification row commits with the transition that caused it; a delivery is marked
delivered only after its target answered 2xx (a crash in between sends it again, with the same
`X-Stepdeck-Delivery` id). A delivery is leased while it is sent, so that several processes on one
database never send it at the same time. A target that fails or hangs costs its own timeout and is
retried later; it never holds up the engine or the other targets.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from datetime import datetime, timedelta
from typing import Any, TypedDict

import httpx

from engine import logs
from engine.hub import Change, ChangeKind, Hub
from engine.notify import payload, sender
from engine.notify.targets import Target, env_targets, scrub, targets_for, workflow_targets
from engine.records import utcnow
from engine.settings import Settings
from engine.store import Stmt, fetch, run_batch, run_batches
from engine.waits import wait_set
from models.status import DeliveryStatus, RunStatus

log = logs.logger(__name__)

PENDING, DELIVERED, FAILED = DeliveryStatus.PENDING, DeliveryStatus.DELIVERED, DeliveryStatus.FAILED
LEASE_S = 120.0  # longer than any one send (its timeout), so a lease only lapses when its process died
MAX_BACKOFF_S = 3600.0
BATCH = 200
COALESCE_S = 0.05  # after a wake-up, let the transitions committing with it land: one round for a burst
WAKE_ON = frozenset({RunStatus.WAITING, RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED})


def backoff_s(first_s: float, attempts: int) -> float:
    """The wait after the `attempts`-th failed try: doubling from `first_s`, at most an hour."""
    return float(min(MAX_BACKOFF_S, first_s * 2 ** min(attempts - 1, 30)))


class Notifier:
    """The delivery loop of one process (started with its engine)."""

    def __init__(self, settings: Settings, owner: str, hub: Hub) -> None:
        self.settings = settings
        self.owner = owner
        self.hub = hub
        self.targets = env_targets(settings)
        self._wake = asyncio.Event()
        self._sending: set[int] = set()  # deliveries leased by this process and not yet recorded

    def _on_change(self, change: Change) -> None:
        if (change.kind == ChangeKind.RUN and change.to_status in WAKE_ON) or change.truncated:
            self._wake.set()

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        remove_listener = self.hub.add_listener(self._on_change)  # here: a task cancelled before it ran leaves none
        try:
            async with httpx.AsyncClient(follow_redirects=False) as client:
                woken, delivered_at = False, 0.0
                while True:
                    if woken:
                        await asyncio.sleep(COALESCE_S)
                    self._wake.clear()
                    try:
                        made = await self.fan_out()
                        # Deliveries fall due by our fan-out, or by time and other processes (every poll interval).
                        if made or time.monotonic() - delivered_at >= self.settings.poll_interval_s:
                            delivered_at = time.monotonic()
                            await self.deliver_due(client)
                    except Exception:
                        log.exception("notifications: a round failed; retrying")
                    woken = await wait_set(self._wake, self.settings.poll_interval_s)
        finally:
            remove_listener()
            if self._sending:  # stopped mid-send: the next engine may send them at once, not after the lease
                with contextlib.suppress(Exception):
                    await asyncio.shield(self._release(sorted(self._sending)))

    async def _release(self, ids: list[int]) -> None:
        marks = ", ".join("?" for _ in ids)
        sql = f"UPDATE deliveries SET lease_until = NULL WHERE status = ? AND id IN ({marks})"
        await run_batch([Stmt(sql, (PENDING, *ids))])

    # --- fan-out --------------------------------------------------------------------------------------

    async def fan_out(self) -> int:
        """One delivery per target that wants each new notification; returns how many were made."""
        rows = await fetch(
            "SELECT n.id, n.run_id, n.event, n.created_at, r.definition FROM notifications n"
            " JOIN runs r ON r.id = n.run_id WHERE n.fanned_out = FALSE ORDER BY n.id LIMIT ?",
            (BATCH,),
            engine=True,
        )
        if not rows:
            return 0
        now = utcnow()
        batches: list[list[Stmt]] = []
        made, unwanted = 0, []
        for row in rows:
            targets = targets_for(row["event"], [*self.targets, *self._workflow_targets(row["definition"])])
            if not targets:
                unwanted.append(row["id"])
                continue
            stmts = [
                Stmt(
                    "UPDATE notifications SET fanned_out = TRUE WHERE id = ? AND fanned_out = FALSE",
                    (row["id"],),
                    guard=True,
                )
            ]
            stmts.append(
                Stmt(
                    "INSERT INTO deliveries (notification_id, run_id, event, target_key, target_label, channel,"
                    " status, attempts, next_at, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, 0, ?, ?, ?)",
                    many=[
                        (row["id"], row["run_id"], row["event"], t.key, t.label, t.channel, PENDING, now, now, now)
                        for t in targets
                    ],
                )
            )
            made += len(targets)
            batches.append(stmts)
        if unwanted:  # no target wants them: done, in one statement
            marks = ", ".join("?" for _ in unwanted)
            batches.append([Stmt(f"UPDATE notifications SET fanned_out = TRUE WHERE id IN ({marks})", unwanted)])
        await run_batches(batches)  # each alone: one fanned out by another process meanwhile changes nothing
        if made:
            self.hub.deliveries.emit()
        return made

    @staticmethod
    def _workflow_targets(definition: Any) -> list[Target]:
        data = json.loads(definition) if isinstance(definition, (str, bytes)) else definition
        return workflow_targets(data.get("notify", ()))

    # --- delivery -------------------------------------------------------------------------------------

    async def deliver_due(self, client: httpx.AsyncClient) -> int:
        """Send every due delivery not leased by a live sender; returns how many were tried."""
        now = utcnow()
        rows = await fetch(
            "SELECT d.id, d.notification_id, d.target_key, d.attempts, d.created_at, d.lease_until FROM deliveries d"
            " WHERE d.status = ? AND d.next_at <= ? ORDER BY d.next_at, d.id LIMIT ?",
            (PENDING, now, BATCH),
            engine=True,
        )
        rows = [r for r in rows if (lease := _dt(r["lease_until"])) is None or lease < now]
        claimed = await self._lease([r["id"] for r in rows], now)
        tries = [self._deliver(client, r) for r in rows if r["id"] in claimed]
        await asyncio.gather(*tries)
        if tries:
            self.hub.deliveries.emit()
        return len(tries)

    async def _lease(self, ids: list[int], now: datetime) -> set[int]:
        if not ids:
            return set()
        until = now + timedelta(seconds=LEASE_S)
        stmt = (
            "UPDATE deliveries SET lease_until = ? WHERE id = ? AND status = ?"
            " AND (lease_until IS NULL OR lease_until < ?)"
        )
        results = await run_batches([[Stmt(stmt, (until, i, PENDING, now), guard=True)] for i in ids])
        return {i for i, r in zip(ids, results, strict=True) if not isinstance(r, Exception) and r.ok}

    async def _deliver(self, client: httpx.AsyncClient, row: dict[str, Any]) -> None:
        self._sending.add(row["id"])
        await self._send_and_record(client, row)
        self._sending.discard(row["id"])  # not when cancelled: `run` releases what is left

    async def _send_and_record(self, client: httpx.AsyncClient, row: dict[str, Any]) -> None:
        data, targets = await self._message(row["notification_id"])
        target = next((t for t in targets if t.key == row["target_key"]), None)
        if data is None or target is None:
            result = sender.Sent(False, None, "the target is no longer configured")
        else:
            secret = self.settings.webhook_secret.reveal()
            result = await sender.send(client, target, data, row["id"], secret, self.settings.notify_timeout_s)
        await self._record(row, result, targets)

    async def _message(self, notification_id: int) -> tuple[dict[str, Any] | None, list[Target]]:
        rows = await fetch(
            "SELECT n.*, r.workflow, r.definition, s.label AS step_label FROM notifications n"
            " JOIN runs r ON r.id = n.run_id LEFT JOIN steps s ON s.run_id = n.run_id AND s.key = n.step_key"
            " WHERE n.id = ?",
            (notification_id,),
            engine=True,
        )
        if not rows:
            return None, list(self.targets)
        row = dict(rows[0])
        created = _dt(row["created_at"])
        row["created_at"] = created.isoformat() if created else None
        return payload.body(row, self.base_url), [*self.targets, *self._workflow_targets(row["definition"])]

    @property
    def base_url(self) -> str:
        s = self.settings
        return s.public_url or f"http://{s.host}:{s.port}"

    async def _record(self, row: dict[str, Any], result: sender.Sent, targets: list[Target]) -> None:
        now = utcnow()
        attempts = row["attempts"] + 1
        error = scrub(result.error, targets)[:2000] if result.error else None
        if result.ok:
            status, next_at = DELIVERED, now
        else:
            next_at = now + timedelta(seconds=backoff_s(self.settings.notify_retry_s, attempts))
            created = _dt(row["created_at"]) or now
            gave_up = (next_at - created).total_seconds() > self.settings.notify_give_up_s
            status = FAILED if gave_up or error == "the target is no longer configured" else PENDING
            log.warning("notification delivery %s failed (try %s): %s", row["id"], attempts, error)
        await run_batch(
            [
                Stmt(
                    "UPDATE deliveries SET status = ?, attempts = ?, next_at = ?, lease_until = NULL, last_error = ?,"
                    " response_code = ?, delivered_at = ?, updated_at = ? WHERE id = ? AND status = ?",
                    (
                        status,
                        attempts,
                        next_at,
                        None if result.ok else error,
                        result.response_code,
                        now if result.ok else None,
                        now,
                        row["id"],
                        PENDING,
                    ),
                )
            ]
        )


def _dt(value: Any) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value))


class DeliveryJson(TypedDict):
    """One delivery as the API and the Monitoring page show it (`list_deliveries`)."""

    id: int
    notification_id: int
    run_id: int
    event: str  # engine/notify/kinds.py: run.failed, run.waiting, ...
    target: str  # scheme and host only: the URL carries tokens
    channel: str  # webhook | apprise
    status: DeliveryStatus
    attempts: int
    last_error: str | None
    response_code: int | None
    created_at: str | None
    next_at: str | None  # when a pending delivery is tried next
    delivered_at: str | None


async def list_deliveries(limit: int = 100, status: DeliveryStatus | None = None) -> list[DeliveryJson]:
    """Deliveries, newest first: event, run, target (scheme and host only), status, tries, last error."""
    where, params = ("WHERE status = ?", [status]) if status else ("", [])
    rows = await fetch(
        "SELECT id, notification_id, run_id, event, target_label, channel, status, attempts, next_at, last_error,"
        f" response_code, created_at, delivered_at, updated_at FROM deliveries {where} ORDER BY id DESC LIMIT ?",
        (*params, max(1, min(limit, 500))),
    )
    return [
        {
            "id": r["id"],
            "notification_id": r["notification_id"],
            "run_id": r["run_id"],
            "event": r["event"],
            "target": r["target_label"],
            "channel": r["channel"],
            "status": DeliveryStatus(r["status"]),
            "attempts": r["attempts"],
            "last_error": r["last_error"],
            "response_code": r["response_code"],
            "created_at": _iso(r["created_at"]),
            "next_at": _iso(r["next_at"]) if r["status"] == PENDING else None,
            "delivered_at": _iso(r["delivered_at"]),
        }
        for r in rows
    ]


def _iso(value: Any) -> str | None:
    dt = _dt(value)
    return dt.isoformat() if dt else None
