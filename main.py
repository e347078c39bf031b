"""Stepdeck: run multi-step workflows in the background, watch and steer them from a browser.

    uv run main.py                 # serve the dashboard and API on http://127.0.0.1:8080
    uv run main.py worker          # execute runs, no dashboard (several of them on PostgreSQL)
    uv run main.py run WORKFLOW -i key=value ...
    uv run main.py check | sweep | migrate

Composition root: parses the command line, builds settings, wires the parts. Nothing else.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import threading
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

from engine.llm.redact import install_log_redaction
from engine.settings import ENV_NAMES, Settings, SettingsError, from_env
from models.errors import DatabaseUnavailable

# NiceGUI keeps the HTML of the last 1,000 Markdown contents it rendered (an lru_cache sized when it is
# imported): step outputs of up to 100,000 characters each would stay in memory. Set before it is imported.
os.environ.setdefault("MARKDOWN_CONTENT_CACHE_SIZE", "64")

COMMANDS = ("serve", "worker", "run", "check", "sweep", "migrate", "users", "tokens")
T = TypeVar("T")


def run_to_completion(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to the end, also when a loop is already running here (NiceGUI's test fixture)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    result: list[T] = []
    thread = threading.Thread(target=lambda: result.append(asyncio.run(coro)), name="stepdeck-migrate")
    thread.start()
    thread.join()
    if not result:
        raise RuntimeError("startup step failed; see the log above")
    return result[0]


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", dest="db_url", default=None, help=f"database URL ({ENV_NAMES['db_url']})")
    parser.add_argument(
        "--workflows", dest="workflows_dir", type=Path, default=None, help=f"definitions ({ENV_NAMES['workflows_dir']})"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="main.py",
        description="Stepdeck: durable multi-step workflows with a live dashboard.",
        epilog="With no command, `serve` runs. Settings come from STEPDECK_* variables; flags win.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    serve = commands.add_parser("serve", help="serve the dashboard and JSON API (the default)")
    _common(serve)
    serve.add_argument("--host", default=None, help=f"address to bind ({ENV_NAMES['host']}, default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=None, help=f"port ({ENV_NAMES['port']}, default 8080)")
    serve.add_argument(
        "--no-engine",
        action="store_true",
        help="serve the dashboard and API only; runs are executed by another process on the same database",
    )
    worker = commands.add_parser(
        "worker",
        help="execute runs without the dashboard (beside `serve --no-engine`, several of them on PostgreSQL)",
        description="Exit codes: 0 stopped by SIGTERM or SIGINT, 1 the database cannot be used, "
        "2 bad usage or a database schema this version does not expect (run `migrate`).",
    )
    _common(worker)
    worker.add_argument(
        "--concurrency", type=int, default=None, help="runs claimed and steps executed at once (STEPDECK_MAX_RUNS, …)"
    )
    worker.add_argument(
        "--health-port",
        type=int,
        default=None,
        help="serve GET /health on this port (STEPDECK_HOST): 200 while the worker holds its lease, else 503",
    )
    run = commands.add_parser(
        "run",
        help="run a workflow headless, printing progress; exit 0 only if it completes",
        description="Exit codes: 0 completed, 1 failed or cancelled, 2 bad usage or inputs, "
        "3 waiting for a person to pick an alternative (how to continue is printed), "
        "130 interrupted with Ctrl-C (the run is recorded as failed).",
    )
    _common(run)
    run.add_argument("workflow", help="name of the workflow")
    run.add_argument("-i", "--input", dest="inputs", action="append", default=[], metavar="KEY=VALUE")
    check = commands.add_parser("check", help="audit the database for impossible states (exit 1 if any)")
    _common(check)
    sweep = commands.add_parser(
        "sweep",
        help="fail runs whose engine died or stopped heartbeating (safe beside a running server; for cron)",
    )
    _common(sweep)
    migrate = commands.add_parser("migrate", help="apply database migrations (also done at startup on SQLite)")
    _common(migrate)
    from ui import accounts

    accounts.add_parsers(commands, _common)
    return parser


def settings_from(args: argparse.Namespace) -> Settings:
    overrides = {k: getattr(args, k, None) for k in ("db_url", "workflows_dir", "host", "port")}
    return from_env().with_overrides(**overrides)


def serve(settings: Settings, *, engine: bool = True) -> None:
    from nicegui import ui

    from engine.engine import Engine
    from engine.heap import freeze_startup_objects
    from engine.registry import Registry
    from models.db import migrate
    from models.schema import is_postgres
    from ui.app import mount
    from ui.security import session_secret

    # Must finish before the server accepts requests: NiceGUI starts async startup handlers in the
    # background, so migrations run here, on their own loop, with their connections closed after.
    # On PostgreSQL, where several processes share the database, `migrate` is a step of its own: a
    # server only checks that the schema is the one its code expects.
    if is_postgres(settings.db_url):
        refuse_schema_mismatch(settings)
    else:
        run_to_completion(migrate(settings.db_url))
    secret = run_to_completion(session_secret(settings))  # the same for every dashboard on this database
    problem = run_to_completion(_bind_problem(settings))
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        raise SystemExit(2)
    workflows = Registry()  # this server's definitions: its engine's, its scheduler's, its dashboard's
    catalog = workflows.load(settings.workflows_dir)
    for error in catalog.errors:
        logging.getLogger("stepdeck").warning("definition not loaded: %s", error)
    mount(settings, workflows, Engine(settings, workflows=workflows) if engine else None)
    freeze_startup_objects()
    ui.run(
        host=settings.host,
        port=settings.port,
        title="Stepdeck",
        reload=False,
        show=False,
        show_welcome_message=True,
        fastapi_docs=True,
        # A tab whose connection drops (a laptop lid, a flaky LAN) catches up from NiceGUI's message
        # history when it reconnects within this window, without reloading; the run is never affected.
        reconnect_timeout=30,
        message_history_length=10_000,
        # Event streams end themselves on shutdown; this bounds any other long request.
        timeout_graceful_shutdown=5,
        storage_secret=secret,
        # The client's address (audit, sign-in lockout) comes from the socket; X-Forwarded-For only from a
        # proxy named in STEPDECK_TRUSTED_PROXIES (uvicorn would otherwise believe any local process).
        proxy_headers=bool(settings.trusted_proxies.strip()),
        forwarded_allow_ips=settings.trusted_proxies.strip() or None,
    )


def refuse_schema_mismatch(settings: Settings) -> None:
    """On PostgreSQL: exit 2 unless the schema is exactly the one this code expects (`migrate` is a step of
    its own there, never run by several starting processes at once)."""
    from models.db import tortoise_config
    from models.schema import schema_mismatch

    missing, unknown = run_to_completion(schema_mismatch(tortoise_config(settings.db_url)))
    if missing:
        print(
            f"error: the database schema is not up to date (missing {', '.join(missing)});"
            " run `uv run main.py migrate` first",
            file=sys.stderr,
        )
        raise SystemExit(2)
    if unknown:
        print(
            f"error: the database was migrated by a newer version of Stepdeck ({', '.join(unknown)}); run that version",
            file=sys.stderr,
        )
        raise SystemExit(2)


def worker(settings: Settings, concurrency: int | None, health_port: int | None) -> int:
    from engine.registry import Registry
    from models.schema import is_postgres
    from ui import worker as worker_role

    if concurrency is not None and concurrency < 1:
        print(f"error: --concurrency must be at least 1, got {concurrency}", file=sys.stderr)
        return 2
    if is_postgres(settings.db_url):
        refuse_schema_mismatch(settings)
    settings = worker_role.with_concurrency(settings, concurrency)
    return asyncio.run(worker_role.run_worker(settings, Registry(), health_port))


async def _bind_problem(settings: Settings) -> str | None:
    from engine.db import connected
    from ui.security import bind_problem, is_loopback

    if is_loopback(settings.host):
        return None  # the answer without the database: opening it costs a third of a second
    async with connected(settings.db_url):
        return await bind_problem(settings)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in (*COMMANDS, "-h", "--help"):
        argv = ["serve", *argv]
    args = build_parser().parse_args(argv)
    from engine import logs

    logs.configure()  # stepdeck.* lines end with their run, step, attempt and worker
    install_log_redaction()  # no log line shows a URL's user info or query values (signatures, tokens)
    try:
        settings = settings_from(args)
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        return _dispatch(args, settings)
    except DatabaseUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def _dispatch(args: argparse.Namespace, settings: Settings) -> int:
    if args.command == "serve":
        serve(settings, engine=not args.no_engine)
        return 0

    if args.command == "worker":
        return worker(settings, args.concurrency, args.health_port)

    from engine.registry import Registry
    from ui import cli

    if args.command == "run":
        try:
            return asyncio.run(cli.run_headless(settings, Registry(), args.workflow, args.inputs))
        except KeyboardInterrupt:
            # The engine has already failed the run as interrupted (its reason says so).
            print("\ninterrupted: the run was stopped and recorded as failed", file=sys.stderr)
            return cli.EXIT_INTERRUPTED
    if args.command in ("users", "tokens"):
        from ui import accounts

        return asyncio.run(accounts.run(settings, args))
    if args.command == "check":
        return asyncio.run(cli.check(settings))
    if args.command == "sweep":
        return asyncio.run(cli.sweep(settings))
    return asyncio.run(cli.migrate_command(settings))


if __name__ in {"__main__", "__mp_main__"}:
    if os.environ.get("NICEGUI_USER_SIMULATION"):
        serve(from_env())  # NiceGUI's `user` test fixture runs this file inside its own loop
    else:
        sys.exit(main())
