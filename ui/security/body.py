"""The request body limit: requests carry inputs and choices, never files."""

from __future__ import annotations

from starlette.types import Message, Receive

from models.errors import StepdeckError

MAX_BODY_BYTES = 1024 * 1024


class BodyTooLarge(StepdeckError):
    """Raised while reading a body past MAX_BODY_BYTES."""


class LimitedReceive:
    """A body sent in chunks (no Content-Length) may not grow past the limit either.

    Reading past it raises `BodyTooLarge`, which the app may catch (FastAPI turns any error while
    reading a body into a 400): `exceeded` lets the gate answer 413 all the same.
    """

    def __init__(self, receive: Receive) -> None:
        self.receive = receive
        self.seen = 0
        self.exceeded = False

    async def __call__(self) -> Message:
        message = await self.receive()
        if message["type"] == "http.request":
            self.seen += len(message.get("body", b""))
            if self.seen > MAX_BODY_BYTES:
                self.exceeded = True
                raise BodyTooLarge
        return message


def declared_too_large(length: str | None) -> bool:
    """A Content-Length over the limit: refused before the body is read."""
    return bool(length and length.isdigit() and int(length) > MAX_BODY_BYTES)
