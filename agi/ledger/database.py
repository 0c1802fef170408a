"""Opening the database a command uses, from any working directory, and CommandError.

``DATABASE_URL`` when set; otherwise the embedded PostgreSQL in the data home. Only the
commands that may create it (``serve``, ``migrate``, the writers) pass ``create``/``migrate``;
the read-only ones fail with one line naming where they looked (issue 13). Shared by
:mod:`agi.cli.main` and the command modules of :mod:`agi.cli`, so neither imports the other.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import AsyncIterator, Iterator
from typing import Any

import asyncpg
import structlog

from agi.ops.config import Settings

__all__ = ["CommandError", "database_url", "masked_url", "no_database_message", "open_database",
           "open_pool"]

log = structlog.get_logger("agi.cli.main")

class CommandError(Exception):
    """A user-facing failure: printed as one line, exit code 2."""


def no_database_message(settings: Settings) -> str:
    """The one line a read-only command prints when the data home holds no database."""
    return (
        f"no consent-ivr database in {settings.data_dir} (looked for "
        f"{settings.data_dir / 'postgres'}); point CONSENT_IVR_DATA_DIR at the data home "
        "`consent-ivr serve` uses (or set DATABASE_URL), or create one with `consent-ivr migrate`"
    )


@contextlib.contextmanager
def database_url(settings: Settings, *, create: bool = False) -> Iterator[str]:
    """``DATABASE_URL``, the running service's database, or the embedded one in the data home.

    Without ``DATABASE_URL``: when ``serve`` runs on this data home (its ``runtime.json``),
    its database; otherwise the embedded PostgreSQL in ``<data_dir>/postgres``, which only
    ``create=True`` (serve, migrate, the commands that write) may initialise — a read-only
    command that found no database would otherwise answer from a new, empty one.
    The embedded server runs as long as the command that started it: a command that
    finds it already running (``status`` while ``serve`` runs) uses it and leaves it be.
    """
    if settings.database_url:
        yield settings.database_url
        return
    from agi.ops.datahome import embedded_initialised, live_runtime

    runtime = live_runtime(settings.data_dir)
    if runtime is not None and runtime.pid != os.getpid():
        yield runtime.database_url
        return
    fresh = not embedded_initialised(settings.data_dir)
    if fresh and not create:
        raise CommandError(no_database_message(settings))
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
    from agi.ops.pgembed import EmbeddedPostgres, EmbeddedPostgresError

    pg = EmbeddedPostgres(settings.data_dir / "postgres")
    started_here = pg.running_port() is None
    try:
        url = pg.start()
    except EmbeddedPostgresError as exc:
        raise CommandError(f"could not start the embedded PostgreSQL: {exc}") from exc
    if fresh:
        log.info("database_initialised", data_dir=str(pg.data_dir))
    log.info("embedded_postgres_running", data_dir=str(pg.data_dir), started=started_here)
    try:
        yield url
    finally:
        if started_here:
            with contextlib.suppress(EmbeddedPostgresError):
                pg.stop()


def masked_url(url: str) -> str:
    """``url`` without its password, for messages."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


@contextlib.asynccontextmanager
async def open_pool(settings: Settings, *, migrate: bool = False) -> AsyncIterator[Any]:
    async with open_database(settings, migrate=migrate) as (pool, _url):
        yield pool


@contextlib.asynccontextmanager
async def open_database(
    settings: Settings, *, migrate: bool = False
) -> AsyncIterator[tuple[Any, str]]:
    """A pool on the database (:func:`database_url`), and its URL.

    ``migrate=True`` is for the commands that write: they may create the database and
    bring its schema up to date. Without it the database must already hold the ledger.
    """

    from agi.ledger.database import connect_pool
    from agi.ledger.ledger import DB_UNAVAILABLE
    from agi.ledger.migrations import migrate as migrate_db

    with database_url(settings, create=migrate) as url:
        try:
            pool = await connect_pool(
                url, min_size=1, max_size=settings.db_pool_max, timeout=settings.db_timeout
            )
        except (*DB_UNAVAILABLE, asyncpg.PostgresError) as exc:
            raise CommandError(f"cannot connect to the database: {exc}") from exc
        try:
            if migrate:
                applied = await migrate_db(url, timeout=settings.db_timeout)
                if applied:
                    log.info("migrations_applied", migrations=applied)
            elif await pool.fetchval("SELECT to_regclass('schema_migration')") is None:
                raise CommandError(
                    f"the database at {masked_url(url)} holds no consent-ivr ledger; point "
                    "DATABASE_URL (or CONSENT_IVR_DATA_DIR) at the one `consent-ivr serve` "
                    "uses, or create it with `consent-ivr migrate`"
                )
            yield pool, url
        finally:
            await pool.close()


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Pool ``reset``: nothing to undo, so no round trip on every release.

    asyncpg's default sends ``SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *;
    RESET ALL`` each time a connection goes back to the pool — three releases a call,
    ~4 % of the server's CPU per call and as many statements for PostgreSQL. It still
    rolls back a transaction left open before calling this. Nothing of ours leaves
    session state on a pooled connection: no LISTEN, no SET, cursors only inside
    transactions, and the one session-level lock (migrations) is taken on a connection
    of its own (:func:`migrate`).
    """

async def connect_pool(
    url: str, *, min_size: int = 2, max_size: int = 10, timeout: float = 3.0
) -> asyncpg.Pool:
    """A pool whose every statement is bounded by ``timeout`` seconds."""
    pool = await asyncpg.create_pool(
        url,
        min_size=min_size,
        max_size=max_size,
        timeout=timeout,
        command_timeout=timeout,
        server_settings={"application_name": "consent-ivr"},
        reset=_keep_session,
    )
    assert pool is not None
    return pool


