"""The schema: the ``NNN_name.sql`` migrations shipped with the package, applied in order under one
advisory lock, and which of them a database still lacks.
"""

from __future__ import annotations

import re
from pathlib import Path

import asyncpg

from agi.ops import resources

_MIGRATION_LOCK = 0x636F6E73  # 'cons': one migrator at a time, across hosts

def migrations_dir() -> Path:
    """The migrations shipped with this install (:func:`agi.ops.resources.migrations_dir`)."""
    return resources.migrations_dir()


_MIGRATION_NAME = re.compile(r"(\d{3})_[a-z0-9_]+\.sql")


async def apply_migrations(conn: asyncpg.Connection, directory: Path | None = None) -> list[str]:
    """Apply pending ``NNN_name.sql`` files in order, each in a transaction.

    An advisory lock serialises concurrent migrators (several servers starting at
    once); re-running is a no-op. Returns the names applied.
    """
    directory = directory or migrations_dir()
    files = sorted(p for p in directory.iterdir() if _MIGRATION_NAME.fullmatch(p.name))
    numbers = [p.name[:3] for p in files]
    clashes = sorted({n for n in numbers if numbers.count(n) > 1})
    if clashes:
        # versions are tracked by number: a second file with the same number would be
        # skipped silently on databases that already have the first
        raise ValueError(f"two migrations share a number: {', '.join(clashes)} in {directory}")
    applied: list[str] = []
    await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK)
    try:
        # only the owner may create it; the least-privilege server role just reads it
        if await conn.fetchval("SELECT to_regclass('schema_migration')") is None:
            await conn.execute(
                """CREATE TABLE IF NOT EXISTS schema_migration (
                       version    integer PRIMARY KEY,
                       name       text NOT NULL,
                       applied_at timestamptz NOT NULL DEFAULT clock_timestamp())"""
            )
        done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migration")}
        for path in files:
            version = int(path.name[:3])
            if version in done:
                continue
            async with conn.transaction():
                await conn.execute(path.read_text())
                await conn.execute(
                    "INSERT INTO schema_migration (version, name) VALUES ($1, $2)",
                    version,
                    path.name,
                )
            applied.append(path.name)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK)
    return applied


async def pending_migrations(conn: asyncpg.Connection, directory: Path | None = None) -> list[str]:
    directory = directory or migrations_dir()
    files = sorted(p.name for p in directory.iterdir() if _MIGRATION_NAME.fullmatch(p.name))
    try:
        done = {r["name"] for r in await conn.fetch("SELECT name FROM schema_migration")}
    except asyncpg.UndefinedTableError:
        return files
    return [f for f in files if f not in done]




async def migrate(url: str, *, timeout: float = 10.0) -> list[str]:
    """Apply pending migrations on a connection of their own (see :func:`apply_migrations`)."""
    conn = await asyncpg.connect(url, timeout=timeout)
    try:
        return await apply_migrations(conn)
    finally:
        await conn.close()

