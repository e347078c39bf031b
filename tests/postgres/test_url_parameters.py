"""A PostgreSQL URL's libpq parameters (`sslmode`, a setting such as `lock_timeout`…) reach every connection the process
opens, Tortoise's (migrations, accounts) and the engine's, as libpq would apply them; Tortoise's pool
parameters stay Tortoise's. A managed server's URL (`?sslmode=require`) must start Stepdeck, not break it."""

from __future__ import annotations

import pytest
from tortoise.connection import connections

from engine.db import connected
from engine.store import fetch
from models.errors import DatabaseUnavailable
from tests import pgdb

SETTINGS = (
    "SELECT current_setting('lock_timeout') AS lock_timeout, COALESCE(ssl, FALSE) AS ssl"
    " FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
)


async def test_libpq_parameters_reach_tortoise_and_the_engine() -> None:
    url = await pgdb.create()
    try:
        async with connected(f"{url}?sslmode=disable&lock_timeout=4321&maxsize=3"):
            engine_side = await fetch(SETTINGS)
            tortoise_side = await connections.get("default").execute_query_dict(SETTINGS)
        assert engine_side == tortoise_side == [{"lock_timeout": "4321ms", "ssl": False}]
    finally:
        await pgdb.drop_url(url)


async def test_sslmode_require_is_honoured_or_refused_with_the_reason() -> None:
    url = await pgdb.create()
    try:
        on = (await pgdb_sql(url, "SHOW ssl"))[0]["ssl"] == "on"
        if on:
            async with connected(f"{url}?sslmode=require"):
                assert (await fetch(SETTINGS))[0]["ssl"] is True
        else:  # a server without TLS: the start stops, saying so (never a plain connection instead)
            with pytest.raises(DatabaseUnavailable, match="SSL"):
                async with connected(f"{url}?sslmode=require"):
                    pass
    finally:
        await pgdb.drop_url(url)


async def pgdb_sql(url: str, query: str) -> list[dict[str, str]]:
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        return [dict(r) for r in await conn.fetch(query)]
    finally:
        await conn.close()
