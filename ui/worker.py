"""`main.py worker`: an engine and the maintenance jobs, without the dashboard.

Several workers (and dashboards, `serve --no-engine`) share one PostgreSQL database: each worker claims
queued runs and executes them while it holds its lease; one process among them all is the leader that
runs the cron schedules, the sweep and the prune. A worker stops on SIGTERM or SIGINT (exit 0), its
in-flight steps given `STEPDECK_SHUTDOWN_GRACE_S` to finish.

For a supervisor: `--health-port` serves `GET /health` on the bind address, 200 while the worker holds
its lease and takes work, 503 otherwise (a JSON body says which worker, how many runs, whether it
leads); the exit code says why the process ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from dataclasses import replace

from engine import logs
from engine.db import connected
from engine.engine import Engine
from engine.heap import freeze_startup_objects
from engine.maintenance import Maintenance
from engine.registry import Registry
from engine.settings import Settings
from models.schema import is_postgres

log = logs.logger(__name__)

EXIT_OK = 0


def with_concurrency(settings: Settings, concurrency: int | None) -> Settings:
    """`--concurrency N`: at most N runs claimed and N steps executing at once in this worker."""
    if concurrency is None:
        return settings
    return replace(settings, max_concurrent_runs=concurrency, max_concurrent_steps=concurrency)


async def run_worker(settings: Settings, workflows: Registry, health_port: int | None = None) -> int:
    """Execute runs until SIGTERM or SIGINT; the database must already be migrated (PostgreSQL) or is
    migrated here (SQLite). `workflows` is loaded here, from the settings' directory."""
    async with connected(settings.db_url, apply_migrations=not is_postgres(settings.db_url)):
        catalog = workflows.load(settings.workflows_dir)
        for error in catalog.errors:
            log.warning("definition not loaded: %s", error)
        engine = Engine(settings, workflows=workflows)
        maintenance = Maintenance(settings, engine.owner, workflows)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        health: asyncio.Server | None = None
        try:
            await engine.start()
            maintenance.start()
            if health_port:
                health = await _serve_health(settings.host, health_port, engine, maintenance)
            log.info("worker %s started: up to %d runs and %d steps at once", engine.owner, *_limits(settings))
            freeze_startup_objects()
            await stop.wait()
        finally:
            log.info("worker %s stopping", engine.owner)
            if health is not None:
                health.close()
            maintenance.stop()
            await maintenance.stop_leading()
            await engine.stop("the worker shut down")
    return EXIT_OK


def _limits(settings: Settings) -> tuple[int, int]:
    return settings.max_concurrent_runs, settings.max_concurrent_steps


async def _serve_health(host: str, port: int, engine: Engine, maintenance: Maintenance) -> asyncio.Server:
    """A minimal HTTP endpoint: any request gets the worker's health."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            healthy = engine.healthy()
            body = json.dumps(
                {
                    "status": "ok" if healthy else "unavailable",
                    "worker": engine.owner,
                    "runs": len(engine.drivers),
                    "leader": maintenance.leadership.is_leader(),
                    "lost_leases": engine.fenced,
                }
            ).encode()
            status = b"200 OK" if healthy else b"503 Service Unavailable"
            writer.write(
                b"HTTP/1.1 " + status + b"\r\nContent-Type: application/json\r\nConnection: close\r\n"
                b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
            )
            await writer.drain()
        writer.close()

    return await asyncio.start_server(answer, host, port)
