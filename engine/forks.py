"""Step functions that fork. The child is a copy of the whole server: it holds the listening socket (a
restart then fails with "address already in use") and, once the step function returns, would carry on
as a second engine. So in a forked child every listening socket is closed at once, and the child exits
as soon as it comes back into the engine's code."""

from __future__ import annotations

import os
import socket

_owner_pid: int | None = None


def install() -> None:
    """Arm the guards for this process (idempotent)."""
    global _owner_pid
    if _owner_pid is None:
        os.register_at_fork(after_in_child=_close_listening_sockets)
    _owner_pid = os.getpid()


def leave_if_forked() -> None:
    """In a child forked by a step function, exit now: it must not run engine code."""
    if _owner_pid is not None and os.getpid() != _owner_pid:
        os._exit(0)


def _close_listening_sockets() -> None:
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:  # not Linux: the child keeps the socket until it exits (at its return to our code)
        return
    for name in names:
        fd = int(name)
        try:
            sock = socket.socket(fileno=fd)
        except OSError:
            continue  # not a socket (or the descriptor of the listing itself, closed by now)
        try:
            listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
        except OSError:
            listening = 0
        finally:
            sock.detach()
        if listening:
            os.close(fd)
