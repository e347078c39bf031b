"""Threads for synchronous step functions.

`ThreadPoolExecutor` joins its threads at interpreter exit, so a step function that was abandoned
(timed out, cancelled) would hold a shutting-down server hostage. These workers are daemons:
an abandoned function is told through its context and left behind, never waited for.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any

IDLE_EXIT_S = 60.0


class DaemonPool(Executor):
    """A growing pool of daemon threads: one is added whenever no worker is idle."""

    def __init__(self, name: str = "step") -> None:
        self._name = name
        self._jobs: queue.SimpleQueue[tuple[Future[Any], Callable[..., Any], tuple[Any, ...]] | None] = (
            queue.SimpleQueue()
        )
        self._lock = threading.Lock()
        self._idle = 0
        self._count = 0
        self._shutdown = False

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        if kwargs:
            raise TypeError("DaemonPool.submit takes positional arguments only")
        future: Future[Any] = Future()
        with self._lock:
            if self._shutdown:
                raise RuntimeError("the step thread pool is shut down")
            if self._idle == 0:
                self._count += 1
                threading.Thread(target=self._work, name=f"{self._name}-{self._count}", daemon=True).start()
            else:
                self._idle -= 1
        self._jobs.put((future, fn, args))
        return future

    def _work(self) -> None:
        while True:
            try:
                job = self._jobs.get(timeout=IDLE_EXIT_S)
            except queue.Empty:
                with self._lock:
                    # Only leave if no job was promised to an idle worker meanwhile.
                    if self._idle > 0:
                        self._idle -= 1
                        return
                continue
            if job is None:
                return
            future, fn, args = job
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn(*args))
                except BaseException as exc:
                    future.set_exception(exc)
            with self._lock:
                self._idle += 1

    def shutdown(self, wait: bool = False, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._shutdown = True
            for _ in range(self._idle):
                self._jobs.put(None)
            self._idle = 0
