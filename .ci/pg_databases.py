"""CI: make or remove the PostgreSQL databases of one test run on the server at STEPDECK_TEST_PG_SERVER.

`create NAME` makes the database the tests connect to while they create their own; `drop PREFIX NAME`
removes NAME and every database whose name starts with PREFIX (those a killed test process left).
"""

from __future__ import annotations

import asyncio
import os
import sys

import asyncpg

SERVER = os.environ.get("STEPDECK_TEST_PG_SERVER", "postgresql://postgres@127.0.0.1:5432/test")


async def main(argv: list[str]) -> None:
    conn = await asyncpg.connect(SERVER)
    try:
        if argv[0] == "create":
            await conn.execute(f'CREATE DATABASE "{argv[1]}"')
        elif argv[0] == "drop":
            prefix, name = argv[1], argv[2]
            rows = await conn.fetch("SELECT datname FROM pg_database WHERE starts_with(datname, $1)", prefix)
            for db in [name, *(r["datname"] for r in rows)]:
                await conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        else:
            raise SystemExit(f"usage: {sys.argv[0]} create NAME | drop PREFIX NAME")
    finally:
        await conn.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
