"""Read-only commands never create a database: one clear line, exit 2, nothing made.

An operator checking a complaint from the wrong directory must get "no database here",
not a confident "no consent" from a new, empty one.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import asyncpg
import pytest

from agi.cli.main import main

READ_ONLY = [
    ["status", "+447400123456"],
    ["evidence", "+447400123456"],
    ["evidence-html", "+447400123456", "--html", "out.html"],
    ["receipt", "+447400123456"],
    ["receipt", "12"],
    ["screen", "spring"],
    ["report", "spring"],
    ["verify-ledger"],
    ["campaign", "show", "spring"],
    ["campaign", "list"],
]


@pytest.fixture
def empty_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("CONSENT_IVR_DATA_DIR", str(home))
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.chdir(tmp_path)
    return home


@pytest.mark.parametrize("argv", READ_ONLY, ids=lambda a: " ".join(a[:2]))
def test_read_only_command_on_an_empty_data_home_names_it_and_exits_2(
    argv: list[str], empty_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert f"no consent-ivr database in {empty_home}" in err and "CONSENT_IVR_DATA_DIR" in err
    assert not (empty_home / "postgres").exists() and not (empty_home.parent / "var").exists()


def test_read_only_command_on_a_database_without_the_ledger_exits_2(
    pg_root_url: str, empty_home: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    name = "empty_" + uuid.uuid4().hex[:12]

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(pg_root_url)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin(f"CREATE DATABASE {name}"))
    try:
        url = pg_root_url.rsplit("/", 1)[0] + "/" + name
        monkeypatch.setenv("DATABASE_URL", url)
        assert main(["status", "+447400123456"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "holds no consent-ivr ledger" in err, err

        async def tables() -> int:
            conn = await asyncpg.connect(url)
            try:
                return int(await conn.fetchval(
                    "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"))
            finally:
                await conn.close()

        assert asyncio.run(tables()) == 0  # and it did not migrate it either
    finally:
        asyncio.run(admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


def test_migrate_initialises_the_data_home_and_says_so(
    empty_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--log-format", "json", "migrate"]) == 0
    out = capsys.readouterr()
    assert "applied: 001_consent_ledger.sql" in out.out
    assert out.err.count('"event": "database_initialised"') == 1, out.err
    assert (empty_home / "postgres" / "pgdata" / "PG_VERSION").is_file()
    # now the read-only command answers from that database
    assert main(["status", "+447400123456"]) == 0
    assert "state=none" in capsys.readouterr().out
