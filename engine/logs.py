"""Logging: one namespace (`stepdeck.*`) and, on each line, what it is about (run, step, attempt, worker).

A module takes its logger with `logger(__name__)` (`stepdeck.engine.engine`, …). What a line is about
comes from a context variable bound where the work starts, so call sites pass nothing: the engine binds
its worker (owner id) for its loops and, for each run it drives, the run, which the run's step tasks and
worker threads inherit; a step kind's execution adds the step and its attempt. Every record carries the
fields as attributes (`run_id`, `step`, `attempt`, `worker`; None when unknown) and as text, `context`
(` | run=12 step=draft attempt=2 worker=host:4242:ab12cd34`, empty when there is none), which the
process's format (`configure`) prints at the end of the line: `grep 'run=12 '` tells one run's story.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
from collections.abc import Iterator, Mapping
from types import MappingProxyType
from typing import Any

NAMESPACE = "stepdeck"
FIELDS = {"run_id": "run", "step": "step", "attempt": "attempt", "worker": "worker"}  # attribute -> label
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s%(context)s"

_NONE: Mapping[str, Any] = MappingProxyType({})
_fields: contextvars.ContextVar[Mapping[str, Any]] = contextvars.ContextVar("stepdeck_log_fields", default=_NONE)


def logger(module: str) -> logging.Logger:
    """The logger of a module, in the stepdeck namespace: `log = logger(__name__)`."""
    return logging.getLogger(f"{NAMESPACE}.{module}")


def _merged(fields: Mapping[str, Any]) -> dict[str, Any]:
    unknown = set(fields) - set(FIELDS)
    if unknown:
        raise ValueError(f"unknown log fields {sorted(unknown)}; known: {', '.join(FIELDS)}")
    return {**_fields.get(), **{k: v for k, v in fields.items() if v is not None}}


def bind(**fields: Any) -> None:
    """Add fields for the rest of the current task (and the tasks and threads it starts from now on)."""
    _fields.set(_merged(fields))


@contextlib.contextmanager
def bound(**fields: Any) -> Iterator[None]:
    """Add fields for the lines logged inside the block."""
    token = _fields.set(_merged(fields))
    try:
        yield
    finally:
        _fields.reset(token)


def context_with(**fields: Any) -> contextvars.Context:
    """A copy of the current context with the fields added: for `asyncio.create_task(..., context=...)`."""
    ctx = contextvars.copy_context()
    ctx.run(bind, **fields)
    return ctx


def current() -> Mapping[str, Any]:
    """The fields bound here."""
    return _fields.get()


def context_text(fields: Mapping[str, Any]) -> str:
    shown = " ".join(f"{label}={fields[name]}" for name, label in FIELDS.items() if fields.get(name) is not None)
    return f" | {shown}" if shown else ""


_installed = False


def install() -> None:
    """Make every log record carry the bound fields (idempotent; other factories may wrap this one)."""
    global _installed
    if _installed:
        return
    _installed = True
    previous = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        fields = _fields.get()
        for name in FIELDS:
            setattr(record, name, fields.get(name))
        record.context = context_text(fields)
        return record

    logging.setLogRecordFactory(factory)


class LineFormat(logging.Formatter):
    """`FORMAT`, also for a record made before `install` (its context is then empty)."""

    def format(self, record: logging.LogRecord) -> str:
        if not hasattr(record, "context"):
            record.context = ""
        return super().format(record)


def configure(level: int = logging.INFO) -> None:
    """The process's logging (a command line's): one line per record, its fields at the end."""
    install()
    handler = logging.StreamHandler()
    handler.setFormatter(LineFormat(FORMAT))
    logging.basicConfig(level=level, handlers=[handler])
    logging.getLogger("tortoise").setLevel(logging.WARNING)
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
