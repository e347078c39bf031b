"""One leader among the processes sharing a database: the one that runs the cron schedules, the sweep and
the prune.

Leadership is a row of `leases` (name `leader`) with an expiry on the database clock: the holder renews
it every heartbeat; another process takes it only once it has run out. The holder acts only while its
own monotonic clock says the lease still holds (less a margin), so a leader that was frozen or cut off
stops acting before another can take over. Double work stays harmless all the same: the sweep's
transitions are guarded, and each fire time of a schedule is unique in `schedule_fires`.

On SQLite (one process owns the file) every process is its own leader, as before.
"""

from __future__ import annotations

import time

from engine import leases, logs
from engine.settings import Settings
from engine.store import Stmt, fetch, run_batch
from models.schema import is_postgres

log = logs.logger(__name__)

LEADER = "leader"

_TAKE_SQL = (
    "INSERT INTO leases (name, holder, lease_until, acquired_at) VALUES (?, ?, now() + make_interval(secs => ?), now())"
    " ON CONFLICT (name) DO UPDATE SET holder = EXCLUDED.holder, lease_until = EXCLUDED.lease_until,"
    " acquired_at = CASE WHEN leases.holder = EXCLUDED.holder THEN leases.acquired_at ELSE EXCLUDED.acquired_at END"
    " WHERE leases.holder = EXCLUDED.holder OR leases.lease_until <= now()"
    " RETURNING holder"
)


class Leadership:
    """Whether this process is the leader; `renew` is called every heartbeat."""

    def __init__(self, settings: Settings, holder: str) -> None:
        self.holder = holder
        self.shared = is_postgres(settings.db_url)
        self.ttl_s = settings.stale_after_s
        self.interval_s = settings.heartbeat_interval_s
        self.lease = leases.LocalDeadline(self.ttl_s, leases.fencing_margin_s(self.ttl_s, self.interval_s))

    def is_leader(self) -> bool:
        return not self.shared or self.lease.holds()

    async def renew(self) -> bool:
        """Take or keep the lease; True when this call made this process the leader (it was not before)."""
        if not self.shared:
            return False
        was = self.is_leader()
        sent = time.monotonic()
        result = await run_batch([Stmt(_TAKE_SQL, (LEADER, self.holder, self.ttl_s))])
        if result.rows[0]:
            self.lease.renewed(sent)
            if not was:
                log.info("%s is the leader now (cron schedules, sweep, prune)", self.holder)
            return not was
        if was:
            log.warning("%s is no longer the leader: another process holds the lease", self.holder)
        self.lease.lapse()
        return False

    async def release(self) -> None:
        """Give the lease up (a clean stop), so that another process takes over at its next heartbeat."""
        if self.shared and self.lease.holds():
            self.lease.lapse()
            await run_batch([Stmt("DELETE FROM leases WHERE name = ? AND holder = ?", (LEADER, self.holder))])

    async def current(self) -> str | None:
        """The holder of a live leader lease (this process on SQLite)."""
        if not self.shared:
            return self.holder
        rows = await fetch("SELECT holder FROM leases WHERE name = ? AND lease_until > now()", (LEADER,))
        return str(rows[0]["holder"]) if rows else None
