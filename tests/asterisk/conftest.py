"""Fixtures of the real-Asterisk tier: one PBX per session, one consent service per module.

Real calls take real seconds (the question alone is 25 s of audio), so each module places
its calls *concurrently* in one batch (:func:`run_batch`) and its tests then assert, one
scenario each, on what crossed the PBX and what landed in the ledger. On a failure the
PBX's full log and the consent server's log are attached to the test report.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tests.asterisk.pbx import Asterisk, Binary, Unavailable, find_asterisk
from tests.conftest import TEMPLATE_DB, _with_db
from tests.harness import Serve, free_port

TOKEN = "tier-token-0123456789abcdef"

_logs: list[tuple[str, Callable[[], str]]] = []


@pytest.fixture(scope="session")
def asterisk_binary() -> Binary:
    try:
        return find_asterisk()
    except Unavailable as exc:
        pytest.skip(f"real-Asterisk tier: {exc}")


@pytest.fixture(scope="session")
def tier_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="consent-ivr-asterisk-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def pbx(asterisk_binary: Binary, tier_dir: Path) -> Iterator[Asterisk]:
    """The session's Asterisk: the kit included, AMI and SIP on free loopback ports."""
    pbx = Asterisk(asterisk_binary, tier_dir / "asterisk", agi_port=free_port(),
                   agi_token=TOKEN)
    pbx.start()
    _logs.append(("asterisk full log", pbx.log_text))
    try:
        yield pbx
    finally:
        pbx.stop()


def new_database(pg_root_url: str) -> str:
    """A fresh, migrated database cloned from the session's template."""
    name = "a_" + uuid.uuid4().hex[:16]

    async def create() -> None:
        conn = await asyncpg.connect(pg_root_url)
        try:
            await conn.execute(f"CREATE DATABASE {name} TEMPLATE {TEMPLATE_DB}")
        finally:
            await conn.close()

    asyncio.run(create())
    return _with_db(pg_root_url, name)


def start_serve(db_url: str, tmp: Path, port: int, **env: str) -> Serve:
    """A real ``consent-ivr serve`` for the PBX to call, listening when this returns."""
    serve = spawn_serve(db_url, tmp, port, **env)
    asyncio.run(serve.ready())
    return serve


def spawn_serve(db_url: str, tmp: Path, port: int, **env: str) -> Serve:
    """Start ``consent-ivr serve`` (await its ``ready()``); its log kept for the report."""
    tmp.mkdir(parents=True, exist_ok=True)
    serve = Serve(db_url, tmp, port, **{"CONSENT_IVR_AGI_TOKEN": TOKEN,
                                        "CONSENT_IVR_INSTANCE": "asterisk-tier", **env})
    _logs.append((f"consent-ivr serve :{port}", lambda: serve.log.read_text(errors="replace")))
    return serve


@pytest.fixture(scope="module")
def tier_db(pg_root_url: str, template_url: str) -> str:
    return new_database(pg_root_url)


@pytest.fixture(scope="module")
def consent_service(pbx: Asterisk, tier_db: str, tier_dir: Path,
                    request: pytest.FixtureRequest) -> Iterator[Serve]:
    """The consent server the kit's ``CONSENT_AGI`` global points at."""
    serve = start_serve(tier_db, tier_dir / request.module.__name__.rsplit(".", 1)[-1],
                        pbx.agi_port)
    try:
        yield serve
    finally:
        serve.kill()


async def fetch_rows(url: str, sql: str, *args: Any) -> list[dict[str, Any]]:
    """One query on its own connection, the rows as dicts (the ledger after a batch)."""
    conn = await asyncpg.connect(url)
    try:
        return [dict(r) for r in await conn.fetch(sql, *args)]
    finally:
        await conn.close()


def run_batch(pbx: Asterisk,
              scenarios: Mapping[str, Callable[[], Awaitable[Any]]]) -> dict[str, Any]:
    """Run every scenario at once on one loop; each one's result, or the exception it
    raised (re-raised by :func:`outcome` in that scenario's own test)."""

    async def main() -> dict[str, Any]:
        await pbx.connect_ami()
        try:
            names = list(scenarios)
            done = await asyncio.gather(*(scenarios[n]() for n in names),
                                        return_exceptions=True)
            return dict(zip(names, done, strict=True))
        finally:
            await pbx.close_ami()

    return asyncio.run(main())


def outcome(results: Mapping[str, Any], name: str) -> Any:
    got = results[name]
    if isinstance(got, BaseException):
        raise got
    return got


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Any:
    report = yield
    if report.failed and "tests/asterisk" in str(item.path).replace("\\", "/"):
        for title, read in _logs:
            try:
                report.sections.append((title, read()))
            except OSError as exc:
                report.sections.append((title, f"(unreadable: {exc})"))
    return report
