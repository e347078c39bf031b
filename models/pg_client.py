"""Tortoise's asyncpg backend, connecting with the URL's libpq parameters (`sslmode`, `sslrootcert`,
`target_session_attrs`…) as the engine's own connections do: asyncpg reads them from a DSN as libpq does,
while Tortoise's URL parsing passes them to asyncpg as keywords it does not take (and casts `ssl` to a
boolean, so that `ssl=disable` would turn it on)."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
from tortoise.backends.asyncpg.client import AsyncpgDBClient


class DsnClient(AsyncpgDBClient):
    """`AsyncpgDBClient` given the DSN as the credential `dsn` (`models.db.tortoise_config`)."""

    async def create_pool(self, **kwargs: Any) -> asyncpg.Pool:
        dsn: str = kwargs.pop("dsn")
        if kwargs.get("database") is None:  # Tortoise asks for a connection to no database in particular
            dsn = urlunsplit(urlsplit(dsn)._replace(path=""))
        return await asyncpg.create_pool(dsn, **kwargs)


client_class = DsnClient
