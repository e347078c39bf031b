"""Events written by other processes, on PostgreSQL: LISTEN/NOTIFY wakes a reader of the events table.

The events table is the truth; a notification only says "look". After a commit that wrote events, a
process sends one `NOTIFY` (coalesced: one in flight at a time, and one more if commits came meanwhile),
off the write path, on a connection of its own. Every process listens on one connection; when woken (or
every `POLL_S`, in case a notification was lost, or more often while the listening connection is down)
it reads the event rows after its cursor and hands those of other processes to `deliver`.

The cursor is commit-ordered: `(tx, id)`, where `tx` is the id of the transaction that wrote the row.
Serial ids are not in commit order, but a transaction older than the oldest one still in flight
(`pg_snapshot_xmin(pg_current_snapshot())`) can add no more rows: rows below that horizon are final and
the cursor moves past them. Rows above it (committed while an older transaction was still open) are
delivered at once and remembered until they are final, so each row is delivered once and none is skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import asyncpg

from engine import logs
from engine.hub import ChangeJson
from engine.waits import wait_set

log = logs.logger(__name__)

CHANNEL = "stepdeck_events"
POLL_S = 2.0  # a look at the table however quiet the channel: a sender may have died between commit and notify
POLL_UNLISTENED_S = 0.5  # while the listening connection is down
RECONNECT_S = 1.0
BATCH = 2000

# The horizon of the rows that can no longer be preceded by a row of a transaction still in flight.
HORIZON = "pg_snapshot_xmin(pg_current_snapshot())"
_COLUMNS = "id, run_id, step_key, attempt, kind, from_status, to_status, actor, message, created_at, tx, origin"
NEWER_SQL = (
    f"SELECT {_COLUMNS}, tx < {HORIZON} AS final FROM events WHERE (tx, id) > ($1::xid8, $2::bigint)"
    " ORDER BY tx, id LIMIT $3"
)
START_SQL = f"SELECT tx, id FROM events WHERE tx < {HORIZON} ORDER BY tx DESC, id DESC LIMIT 1"

Deliver = Callable[[list[dict[str, Any]]], None]  # engine.db.base.DeliverEvents, DeliverLive

# Ephemeral notices (progress, log lines, streamed text) are no rows: they travel in the notifications
# themselves, batched every LIVE_INTERVAL_S into payloads under PostgreSQL's 8,000-byte limit.
LIVE_CHANNEL = "stepdeck_live"
LIVE_INTERVAL_S = 0.1
MAX_PAYLOAD = 7_800  # bytes of one notification's JSON
MAX_LIVE_BYTES_S = 256_000  # sent per second at most; what comes beyond is dropped (the rows keep it all)


def application_name(instance: str) -> str:
    """The application name of this process's connections: event rows record it (`events.origin`)."""
    return f"stepdeck:{instance}"


def new_instance() -> str:
    return secrets.token_hex(6)


class _Sender:
    """A sender on a connection of its own, opened when first needed; its task sends while work is pending."""

    application = "stepdeck"

    def __init__(self, dsn: str, instance: str) -> None:
        self._dsn = dsn
        self._instance = instance
        self._conn: asyncpg.Connection | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    async def _connection(self) -> asyncpg.Connection:
        if self._conn is None or self._conn.is_closed():
            self._conn = await asyncpg.connect(
                self._dsn, statement_cache_size=0, server_settings={"application_name": self.application}
            )
        return self._conn

    def _sending(self) -> bool:
        return self._task is not None and not self._task.done()

    async def close(self) -> None:
        """Send what is pending (5 s at most), then close the connection: also one the task opened meanwhile."""
        self._closed = True
        if self._task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(self._task), 5)
            if not self._task.done():
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await self._task
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), 5)
            if not conn.is_closed():
                conn.terminate()


class Notifier(_Sender):
    """Sends `NOTIFY` after commits that wrote events: at most one in flight, coalescing the rest."""

    application = "stepdeck-notify"

    def __init__(self, dsn: str, instance: str) -> None:
        super().__init__(dsn, instance)
        self._again = False

    def committed(self) -> None:
        """Events were committed: tell the other processes (soon, never on the committing path)."""
        if self._closed:
            return
        if self._sending():
            self._again = True
            return
        self._task = asyncio.get_running_loop().create_task(self._send(), name="stepdeck-notify-events")

    async def _send(self) -> None:
        self._again = True
        while self._again:
            self._again = False
            try:
                conn = await self._connection()
                await conn.execute(f"NOTIFY {CHANNEL}, '{self._instance}'")
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                # The others find the rows by their poll; nothing is lost, only later.
                log.warning("could not notify the other processes of new events (%s); they will poll", exc)
                return


def _dumps(notice: Mapping[str, Any]) -> str:
    return json.dumps(notice, ensure_ascii=False, separators=(",", ":"))


def _fitted(notice: Mapping[str, Any], limit: int) -> list[str]:
    """The notice as JSON pieces of at most `limit` bytes each: streamed text split at offsets (it joins up
    again), a long log line or message cut (the attempt keeps it whole)."""
    part = _dumps(notice)
    if len(part.encode()) <= limit:
        return [part]
    text = notice.get("text")
    if isinstance(text, str) and len(text) > 1:
        half = len(text) // 2
        offset = int(notice["offset"])
        first = {**notice, "text": text[:half]}
        rest = {**notice, "text": text[half:], "offset": offset + half, "reset": False}
        return _fitted(first, limit) + _fitted(rest, limit)
    for name in ("line", "message"):
        value = notice.get(name)
        if isinstance(value, str) and len(value) > 1:
            return _fitted({**notice, name: value[: len(value) // 2].removesuffix("…") + "…"}, limit)
    return []  # nothing left to cut: not sent (the attempt keeps it)


def live_payloads(instance: str, notices: Sequence[ChangeJson]) -> list[str]:
    """The notices as notification payloads, in order, each at most MAX_PAYLOAD bytes."""
    head = f'{{"from":{json.dumps(instance)},"notices":['
    room = MAX_PAYLOAD - len(head.encode()) - 2
    payloads: list[str] = []
    parts: list[str] = []
    size = 0
    for notice in notices:
        for part in _fitted(notice, room):
            length = len(part.encode()) + (1 if parts else 0)
            if parts and size + length > room:
                payloads.append(head + ",".join(parts) + "]}")
                parts, size, length = [], 0, length - 1
            parts.append(part)
            size += length
    if parts:
        payloads.append(head + ",".join(parts) + "]}")
    return payloads


class LiveSender(_Sender):
    """Sends this process's ephemeral notices to the others: batched, off the caller's path, bounded."""

    application = "stepdeck-live"

    def __init__(self, dsn: str, instance: str) -> None:
        super().__init__(dsn, instance)
        self._pending: list[ChangeJson] = []
        self._window_start = 0.0
        self._window_bytes = 0
        self.dropped = 0

    def offer(self, notice: ChangeJson) -> bool:
        """Queue a notice (on the event loop); it is sent within LIVE_INTERVAL_S. False once closed."""
        if self._closed:
            return False
        self._pending.append(notice)
        if not self._sending():
            self._task = asyncio.get_running_loop().create_task(self._send(), name="stepdeck-notify-live")
        return True

    async def _send(self) -> None:
        while self._pending:
            await asyncio.sleep(LIVE_INTERVAL_S)
            notices, self._pending = self._pending, []
            try:
                conn = await self._connection()
                for payload in live_payloads(self._instance, notices):
                    if not self._within_budget(len(payload)):
                        self.dropped += 1
                        continue
                    await conn.execute("SELECT pg_notify($1, $2)", LIVE_CHANNEL, payload)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                # Viewers elsewhere see these when they next read the step; nothing is lost from the rows.
                log.warning("could not send live notices to the other processes (%s)", exc)

    def _within_budget(self, size: int) -> bool:
        now = asyncio.get_running_loop().time()
        if now - self._window_start >= 1.0:
            self._window_start, self._window_bytes = now, 0
        self._window_bytes += size
        return self._window_bytes <= MAX_LIVE_BYTES_S


class EventFeed:
    """The event rows of other processes, read after a notification (or a poll) and given to `deliver`."""

    def __init__(self, dsn: str, instance: str, deliver: Deliver, deliver_live: Deliver) -> None:
        self._dsn = dsn
        self._instance = instance
        self._origin = application_name(instance)
        self._deliver = deliver
        self._deliver_live = deliver_live
        self._wake = asyncio.Event()
        self._listen: asyncpg.Connection | None = None
        self._reader: asyncpg.Connection | None = None
        self._cursor: tuple[int, int] = (0, 0)
        self._delivered: set[int] = set()  # rows above the horizon already delivered (or present at start)
        self._task: asyncio.Task[None] | None = None
        self.listening = False

    async def start(self) -> None:
        """Listen, and take the rows already there as known; raises if the database cannot be reached."""
        self._reader = await self._connect("stepdeck-feed")
        rows = await self._reader.fetch(START_SQL)
        if rows:
            self._cursor = (int(rows[0]["tx"]), int(rows[0]["id"]))
        for row in await self._newer():
            if not row["final"]:
                self._delivered.add(row["id"])
            else:
                self._cursor = (int(row["tx"]), int(row["id"]))
        await self._listen_again()
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="stepdeck-event-feed")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        for conn in (self._listen, self._reader):
            if conn is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(conn.close(), 5)
        self._listen = self._reader = None
        self.listening = False

    def wake(self) -> None:
        self._wake.set()

    # --- internals ---------------------------------------------------------------------------------

    async def _connect(self, name: str) -> asyncpg.Connection:
        return await asyncpg.connect(
            self._dsn, statement_cache_size=0, timeout=10, server_settings={"application_name": name}
        )

    async def _listen_again(self) -> None:
        try:
            conn = await self._connect(f"stepdeck-listen:{self._instance}")
            await conn.add_listener(CHANNEL, self._notified)
            await conn.add_listener(LIVE_CHANNEL, self._live)
            conn.add_termination_listener(self._lost)
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.warning("cannot listen for other processes' events (%s); polling every %s s", exc, POLL_UNLISTENED_S)
            return
        self._listen = conn
        self.listening = True
        self._wake.set()  # what was committed while nobody listened

    def _notified(self, conn: Any, pid: int, channel: str, payload: str) -> None:
        if payload != self._instance:  # our own commits are published by this process already
            self._wake.set()

    def _live(self, conn: Any, pid: int, channel: str, payload: str) -> None:
        try:
            data = json.loads(payload)
            if data["from"] == self._instance:
                return
            self._deliver_live(data["notices"])
        except Exception:
            log.exception("a live notice from another process could not be delivered")

    def _lost(self, conn: Any) -> None:
        if conn is self._listen:
            self.listening = False
            log.warning("the connection listening for other processes' events dropped; polling until it is back")
            self._wake.set()

    async def _loop(self) -> None:
        since_reconnect = 0.0
        while True:
            wait_s = POLL_S if self.listening else POLL_UNLISTENED_S
            await wait_set(self._wake, wait_s)
            self._wake.clear()
            if not self.listening:
                since_reconnect += wait_s
                if since_reconnect >= RECONNECT_S:
                    since_reconnect = 0.0
                    if self._listen is not None:
                        self._listen.terminate()
                        self._listen = None
                    await self._listen_again()
            try:
                await self._read()
            except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("reading other processes' events failed (%s); trying again", exc)
                if self._reader is not None:
                    self._reader.terminate()
                self._reader = None
                await asyncio.sleep(POLL_UNLISTENED_S)
                self._wake.set()

    async def _newer(self) -> list[asyncpg.Record]:
        if self._reader is None or self._reader.is_closed():
            self._reader = await self._connect("stepdeck-feed")
        return list(await self._reader.fetch(NEWER_SQL, self._cursor[0], self._cursor[1], BATCH))

    async def _read(self) -> None:
        while True:
            rows = await self._newer()
            fresh: list[dict[str, Any]] = []
            for row in rows:
                event_id, final = row["id"], row["final"]
                if final:  # finals come first (ordered by tx): the cursor moves past them
                    self._cursor = (int(row["tx"]), int(event_id))
                if event_id in self._delivered:
                    if final:
                        self._delivered.discard(event_id)
                    continue
                if not final:
                    self._delivered.add(event_id)
                if row["origin"] != self._origin:
                    fresh.append(dict(row))
            if fresh:
                try:
                    self._deliver(fresh)
                except Exception:
                    log.exception("delivering other processes' events failed")
            if len(rows) < BATCH or all(not r["final"] for r in rows):
                return
