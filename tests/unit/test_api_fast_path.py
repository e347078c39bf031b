"""API requests without a session cookie skip the dashboard's middleware; the others do not."""

from __future__ import annotations

from typing import Any

import pytest
from starlette.types import Receive, Scope, Send

from ui.app import ApiFastPath


class Recorder:
    def __init__(self) -> None:
        self.paths: list[str] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.paths.append(scope["path"])


async def nothing() -> dict[str, Any]:
    return {}


async def ignore(message: Any) -> None:
    return None


@pytest.mark.parametrize(
    ("scope_type", "path", "cookie", "to_api"),
    [
        ("http", "/api/runs", None, True),
        ("http", "/api/runs", b"session=abc", False),  # a signed-in browser: its session is read
        ("http", "/api/runs", b"theme=dark", True),
        ("http", "/runs/1", None, False),
        ("http", "/apix", None, False),
        ("websocket", "/api/runs", None, False),
        ("lifespan", "", None, False),
    ],
)
async def test_requests_are_routed_by_path_and_session_cookie(
    scope_type: str, path: str, cookie: bytes | None, to_api: bool
) -> None:
    dashboard, api = Recorder(), Recorder()
    headers = [(b"cookie", cookie)] if cookie else []
    await ApiFastPath(dashboard, api)({"type": scope_type, "path": path, "headers": headers}, nothing, ignore)
    assert (api.paths, dashboard.paths) == (([path], []) if to_api else ([], [path]))
