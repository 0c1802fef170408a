"""The database roles: the server's role can append and read the ledger, never rewrite it.

Privileges are checked before any trigger runs, so these refusals come from the
grants of migration 002, not from the append-only triggers of 001.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from agi.ledger.chain import verify_chain
from agi.ledger.ledger import Ledger
from agi.ledger.migrations import apply_migrations
from agi.ledger.records import ConsentDecision


def _as_user(url: str, user: str) -> str:
    parts = urlsplit(url)
    host = parts.netloc.split("@", 1)[-1]
    return urlunsplit(parts._replace(netloc=f"{user}@{host}"))


@pytest.fixture
async def login_as(db_url: str) -> AsyncIterator[object]:
    """Make a throwaway LOGIN role in a group role; yields connect(group) -> Connection."""
    made: list[str] = []
    conns: list[asyncpg.Connection] = []
    root = await asyncpg.connect(db_url)

    async def connect(group: str) -> asyncpg.Connection:
        name = f"t_login_{uuid.uuid4().hex[:10]}"
        await root.execute(f"CREATE ROLE {name} LOGIN IN ROLE {group}")
        made.append(name)
        conn = await asyncpg.connect(_as_user(db_url, name))
        conns.append(conn)
        return conn

    yield connect
    for c in conns:
        await c.close()
    for name in made:
        await root.execute(f"DROP ROLE IF EXISTS {name}")
    await root.close()


def _decision(key: str) -> ConsentDecision:
    return ConsentDecision(
        number_e164="+447700900123", organisation="Example Energy Ltd",
        purpose="marketing-calls", decision="opt_in", method="ivr_inbound",
        evidence_strength="caller_id", decided_at=datetime.now(UTC), idempotency_key=key,
        instance="test",
    )


async def test_app_role_appends_and_reads_but_cannot_rewrite(login_as, db_url: str) -> None:
    app = await login_as("consent_ivr_app")
    assert await app.fetchval("SELECT current_user") != "postgres"
    # INSERT (through the hash-chain trigger, which needs no extra grant) and SELECT
    event_id = await app.fetchval(
        """INSERT INTO consent_event (decided_at, number_e164, organisation, purpose, channel,
               decision, method, evidence_strength, instance, idempotency_key)
           VALUES (now(), '+447700900123', 'Example Energy Ltd', 'marketing-calls',
                   'automated_call', 'opt_in', 'ivr_inbound', 'caller_id', 'test', 'k1')
           RETURNING id"""
    )
    assert await app.fetchval("SELECT decision FROM consent_event WHERE id = $1", event_id) == (
        "opt_in"
    )
    await app.execute(
        """INSERT INTO consent_attempt (route, outcome, reason, instance, idempotency_key)
           VALUES ('consent', 'no_decision', 'timeout', 'test', 'a1')"""
    )
    for statement in (
        "UPDATE consent_event SET decision = 'opt_out'",
        "DELETE FROM consent_event",
        "TRUNCATE consent_event",
        "UPDATE consent_attempt SET reason = 'x'",
        "DELETE FROM consent_attempt",
        "UPDATE consent_chain_head SET hash = '\\x00'",
        "ALTER TABLE consent_event DISABLE TRIGGER consent_event_no_update_delete",
        "SET session_replication_role = replica",
    ):
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await app.execute(statement)
    assert (await verify_chain(app)).ok


async def test_app_role_through_the_ledger_and_migrations(login_as) -> None:
    app = await login_as("consent_ivr_app")
    # `serve` runs apply_migrations at start: as the app role on an up-to-date database it
    # must be a no-op, not a privilege error
    assert await apply_migrations(app) == []


async def test_app_role_records_through_ledger(db_url: str, login_as) -> None:
    app = await login_as("consent_ivr_app")
    user = await app.fetchval("SELECT current_user")
    pool = await asyncpg.create_pool(_as_user(db_url, user), min_size=1, max_size=2)
    try:
        ledger = Ledger(pool, timeout=5.0)
        event_id, created = await ledger.record_decision(_decision("via-ledger"))
        again = await ledger.record_decision(_decision("via-ledger"))
        assert created and again == (event_id, False)
        status = await ledger.consent_at("+447700900123", "marketing-calls")
        assert status.state == "opted_in"
    finally:
        await pool.close()


async def test_readonly_role_reads_only(login_as) -> None:
    ro = await login_as("consent_ivr_readonly")
    assert await ro.fetchval("SELECT count(*) FROM consent_event") == 0
    assert (await verify_chain(ro)).ok
    for statement in (
        """INSERT INTO consent_event (decided_at, number_e164, organisation, purpose, channel,
               decision, method, evidence_strength, instance, idempotency_key)
           VALUES (now(), '+447700900123', 'o', 'p', 'automated_call', 'opt_in',
                   'ivr_inbound', 'caller_id', 't', 'k')""",
        """INSERT INTO consent_attempt (route, outcome, reason, instance, idempotency_key)
           VALUES ('consent', 'no_decision', 'timeout', 'test', 'a1')""",
        "DELETE FROM consent_event",
    ):
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await ro.execute(statement)


async def test_role_creation_is_idempotent(db_url: str) -> None:
    """Roles are cluster-wide: migrating another database must not fail on them."""
    name = f"t_roles_{uuid.uuid4().hex[:10]}"
    conn = await asyncpg.connect(db_url)
    try:
        await conn.execute(f"CREATE DATABASE {name}")
    finally:
        await conn.close()
    other = await asyncpg.connect(urlunsplit(urlsplit(db_url)._replace(path="/" + name)))
    try:
        applied = await apply_migrations(other)
        assert "002_roles.sql" in applied
    finally:
        await other.close()
        conn = await asyncpg.connect(db_url)
        try:
            await conn.execute(f"DROP DATABASE {name} WITH (FORCE)")
        finally:
            await conn.close()
