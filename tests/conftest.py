"""Shared fixtures: a real PostgreSQL (``$DATABASE_URL`` or an embedded server).

Every test that touches the database gets its own database, cloned from a migrated
template (``CREATE DATABASE … TEMPLATE``), so tests are isolated and fast. Tests that
stop and start PostgreSQL get a private embedded server (:func:`own_pg`).
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
import shutil
import tempfile
import uuid
import warnings
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
import structlog

from agi.ledger.database import connect_pool
from agi.ledger.ledger import Ledger
from agi.ledger.migrations import apply_migrations
from agi.ops.config import Settings, repo_root
from agi.ops.logs import configure_logging, flush_logs

warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")

from agi.ops.pgembed import EmbeddedPostgres  # noqa: E402

TEMPLATE_DB = "consent_ivr_template"


def _with_db(url: str, dbname: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + dbname))


@pytest.fixture(autouse=True, scope="session")
def _isolated_data_home() -> Iterator[Path]:
    """Point every command (in process or a child) at a throwaway data home.

    Without it a test running ``serve`` would write its runtime file, or a test running
    ``migrate`` its embedded database, into the user's real data home.
    """
    path = Path(tempfile.mkdtemp(prefix="consent-ivr-home-"))
    saved = os.environ.get("CONSENT_IVR_DATA_DIR")
    os.environ["CONSENT_IVR_DATA_DIR"] = str(path)
    try:
        yield path
    finally:
        if saved is None:
            os.environ.pop("CONSENT_IVR_DATA_DIR", None)
        else:
            os.environ["CONSENT_IVR_DATA_DIR"] = saved
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """``main()`` points logging at the test's captured stderr; put it back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    structlog.reset_defaults()
    root.handlers[:] = handlers
    root.setLevel(level)


def _loop_factories() -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
    """Production's loop first (chosen as ``serve`` chooses it), then asyncio's own."""
    factories: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {}
    chosen = Settings(event_loop=os.environ.get("CONSENT_IVR_EVENT_LOOP", "auto")).loop_factory()
    if chosen is not None:
        factories["uvloop"] = chosen
    factories["asyncio"] = asyncio.new_event_loop
    return factories


#: the modules whose tests run on both loops: the socket layer and the calls over it
_BOTH_LOOPS = ("test_channel.py", "conformance", "test_consent_flow.py", "test_security.py")


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
    """Tests run on the loop production runs on: uvloop where installed (see
    ``Settings.loop_factory``); the socket-level ones on asyncio's own loop as well, the
    fallback. ``CONSENT_IVR_EVENT_LOOP=asyncio`` runs everything on asyncio's."""
    factories = _loop_factories()
    if any(part in str(item.path) for part in _BOTH_LOOPS):
        return factories
    first = next(iter(factories))
    return {first: factories[first]}


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    """The production log pipeline (JSON, masking, escaping) into a buffer.

    ``_restore_logging`` puts the previous configuration back afterwards.
    """
    buf = _LogBuffer()
    configure_logging("json", "info", stream=buf)
    yield buf


class _LogBuffer(io.StringIO):
    """A log buffer that holds every line logged so far when read (lines are written a
    loop turn at a time: agi.ops.logs._LineHandler)."""

    def getvalue(self) -> str:
        flush_logs()
        return super().getvalue()


@pytest.fixture(scope="session")
def pg_root_url() -> Iterator[str]:
    """URL of a PostgreSQL server with CREATEDB rights, for the whole session."""
    if os.environ.get("DATABASE_URL"):
        yield os.environ["DATABASE_URL"]
        return
    tmp = Path(tempfile.mkdtemp(prefix="consent-ivr-pg-"))
    pg = EmbeddedPostgres(tmp / "pg")
    try:
        yield pg.start()
    finally:
        pg.destroy()
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="session")
def template_url(pg_root_url: str) -> str:
    async def build() -> None:
        conn = await asyncpg.connect(pg_root_url)
        try:
            await conn.execute(f"DROP DATABASE IF EXISTS {TEMPLATE_DB} WITH (FORCE)")
            await conn.execute(f"CREATE DATABASE {TEMPLATE_DB}")
        finally:
            await conn.close()
        tconn = await asyncpg.connect(_with_db(pg_root_url, TEMPLATE_DB))
        try:
            await apply_migrations(tconn)
        finally:
            await tconn.close()

    asyncio.run(build())
    return _with_db(pg_root_url, TEMPLATE_DB)


@pytest.fixture
async def db_url(pg_root_url: str, template_url: str) -> AsyncIterator[str]:
    """A fresh, migrated database for this test only."""
    name = "t_" + uuid.uuid4().hex[:16]
    conn = await asyncpg.connect(pg_root_url)
    try:
        await conn.execute(f"CREATE DATABASE {name} TEMPLATE {TEMPLATE_DB}")
    finally:
        await conn.close()
    yield _with_db(pg_root_url, name)
    conn = await asyncpg.connect(pg_root_url)
    try:
        await conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    finally:
        await conn.close()


@pytest.fixture
async def pool(db_url: str) -> AsyncIterator[asyncpg.Pool]:
    p = await connect_pool(db_url, min_size=1, max_size=10, timeout=5.0)
    yield p
    await p.close()


@pytest.fixture
def ledger(pool: asyncpg.Pool) -> Ledger:
    return Ledger(pool, timeout=5.0)


@pytest.fixture
def private_dir() -> Iterator[Path]:
    """A temp directory of this test alone.

    Not under pytest's basetemp: a second pytest run by the same user prunes old
    basetemps, which would pull a journal or a data directory from under a running test.
    """
    path = Path(tempfile.mkdtemp(prefix="consent-ivr-test-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def own_pg(private_dir: Path) -> Iterator[EmbeddedPostgres]:
    """A private embedded PostgreSQL this test may stop, kill and start again."""
    pg = EmbeddedPostgres(private_dir / "pg")
    pg.start()
    try:
        yield pg
    finally:
        pg.destroy()


@pytest.fixture
def settings(private_dir: Path) -> Settings:
    """Settings for in-process servers: ephemeral port, short timeouts, temp journal."""
    return replace(
        Settings(),
        port=0,
        digit_timeout_ms=5000,
        command_timeout=5.0,
        header_timeout=2.0,
        db_timeout=2.0,
        drain_timeout=2.0,
        journal_dir=private_dir / "journal",
        data_dir=private_dir / "var",
        sounds_dir=repo_root() / "sounds",
        instance="test-instance",
        metrics_addr=None,
    )


@pytest.fixture
def make_settings(settings: Settings) -> Callable[..., Settings]:
    def make(**changes: Any) -> Settings:
        return replace(settings, **changes)

    return make
