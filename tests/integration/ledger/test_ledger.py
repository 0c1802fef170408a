"""The ledger against a real PostgreSQL: idempotency, append-only, latest-wins, migrations."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from agi.ledger.database import connect_pool
from agi.ledger.ledger import Ledger
from agi.ledger.migrations import apply_migrations, pending_migrations
from agi.ledger.records import (
    AttemptRecord,
    ConsentDecision,
    DigitPress,
    LedgerUnavailable,
    PromptHeard,
)

NUMBER = "+447400123456"
T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(days=5)


def decision(key: str = "u1|PJSIP/6001-1|decision", **changes: object) -> ConsentDecision:
    base = ConsentDecision(
        number_e164=NUMBER,
        organisation="Example Energy Ltd",
        purpose="marketing-calls",
        decision="opt_in",
        method="ivr_inbound",
        evidence_strength="caller_id",
        decided_at=T0,
        idempotency_key=key,
        instance="test",
        digits=(DigitPress("question", "1", 5230), DigitPress("confirm", "1", 9100)),
        prompts=(PromptHeard("identify", "en", "ab" * 32, "Hello. This is Example Energy Ltd."),),
        uniqueid="1796006581.1",
        linkedid="1796006581.0",
        channel_name="PJSIP/6001-00000001",
        callerid_num="+447400123456",
        callerid_name='Jane "JJ" Doe',
        call_started_at=T0 - timedelta(seconds=20),
    )
    return replace(base, **changes)  # type: ignore[arg-type]


async def test_decision_stored_with_all_evidence(ledger: Ledger) -> None:
    event_id, created = await ledger.record_decision(decision())
    assert created
    status = await ledger.consent_at(NUMBER, "marketing-calls", with_history=True)
    assert status.state == "opted_in"
    e = status.latest
    assert e is not None and e.id == event_id
    assert e.callerid_name == 'Jane "JJ" Doe'
    assert e.digits == [
        {"step": "question", "digit": "1", "offset_ms": 5230, "ignored": False},
        {"step": "confirm", "digit": "1", "offset_ms": 9100, "ignored": False},
    ]
    assert e.prompts[0]["id"] == "identify" and e.prompts[0]["sha256"] == "ab" * 32
    assert e.linkedid == "1796006581.0" and e.evidence_strength == "caller_id"
    assert e.recorded_at > T0  # database clock, not the decision time we passed


async def test_duplicate_delivery_stores_once(ledger: Ledger, pool: asyncpg.Pool) -> None:
    first = await ledger.record_decision(decision())
    again = await ledger.record_decision(decision())
    assert first == (first[0], True)
    assert again == (first[0], False)
    # concurrent duplicates too
    results = await asyncio.gather(*(ledger.record_decision(decision("k2")) for _ in range(20)))
    assert len({r[0] for r in results}) == 1
    assert sum(r[1] for r in results) == 1
    assert await pool.fetchval("SELECT count(*) FROM consent_event") == 2


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE consent_event SET decision = 'opt_out'",
        "DELETE FROM consent_event",
        "TRUNCATE consent_event",
    ],
)
async def test_ledger_is_append_only(ledger: Ledger, pool: asyncpg.Pool, statement: str) -> None:
    await ledger.record_decision(decision())
    with pytest.raises(asyncpg.RaiseError, match="append-only"):
        await pool.execute(statement)
    assert await pool.fetchval("SELECT decision FROM consent_event") == "opt_in"


async def test_latest_decision_wins_and_time_travel(ledger: Ledger) -> None:
    await ledger.record_decision(decision("a", decided_at=T0))
    await ledger.record_decision(decision("b", decision="opt_out", decided_at=T0 + timedelta(1)))
    now = await ledger.consent_at(NUMBER, "marketing-calls")
    assert now.state == "opted_out"
    # an opt-out decided earlier but replayed later does not override a later opt-in
    await ledger.record_decision(decision("c", decided_at=T0 + timedelta(2)))
    await ledger.record_decision(
        decision("d", decision="opt_out", decided_at=T0 + timedelta(hours=36), source="journal")
    )
    assert (await ledger.consent_at(NUMBER, "marketing-calls")).state == "opted_in"
    # other purposes, organisations and channels are separate
    assert (await ledger.consent_at(NUMBER, "surveys")).state == "none"
    assert (
        await ledger.consent_at(NUMBER, "marketing-calls", organisation="Other Ltd")
    ).state == "none"
    live_only = await ledger.consent_at(NUMBER, "marketing-calls", consent_channel="live_call")
    assert live_only.state == "none"


async def test_consent_at_a_past_time_ignores_later_events(ledger: Ledger) -> None:
    await ledger.record_decision(decision("a", decided_at=T0))
    status = await ledger.consent_at(NUMBER, "marketing-calls", at=T0 - timedelta(seconds=1))
    assert status.state == "none"


async def test_invalid_rows_are_rejected_by_the_database(ledger: Ledger) -> None:
    with pytest.raises(asyncpg.CheckViolationError):
        await ledger.record_decision(decision("x", number_e164="07400123456"))
    with pytest.raises(asyncpg.CheckViolationError):
        await ledger.record_decision(decision("y", decision="maybe"))


async def test_attempts_are_idempotent(ledger: Ledger, pool: asyncpg.Pool) -> None:
    attempt = AttemptRecord(
        route="consent", outcome="no_decision", reason="timeout", idempotency_key="u|c|attempt",
        instance="test", number_e164=NUMBER,
    )
    assert await ledger.record_attempt(attempt) is not None
    assert await ledger.record_attempt(attempt) is None
    assert await pool.fetchval("SELECT count(*) FROM consent_attempt") == 1
    assert await pool.fetchval("SELECT count(*) FROM consent_event") == 0


async def test_migrations_rerun_is_a_noop(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        assert await apply_migrations(conn) == []
        assert await pending_migrations(conn) == []
        versions = await conn.fetch("SELECT version FROM schema_migration ORDER BY version")
    assert versions[0]["version"] == 1


async def test_concurrent_migrators_apply_once(pg_root_url: str) -> None:
    conn = await asyncpg.connect(pg_root_url)
    await conn.execute("CREATE DATABASE migrate_race")
    await conn.close()
    url = pg_root_url.rsplit("/", 1)[0] + "/migrate_race"
    try:
        conns = [await asyncpg.connect(url) for _ in range(4)]
        results = await asyncio.gather(*(apply_migrations(c) for c in conns))
        for c in conns:
            await c.close()
        applied = [name for r in results for name in r]
        assert sorted(applied) == sorted(set(applied))  # each migration applied exactly once
        assert "001_consent_ledger.sql" in applied
    finally:
        conn = await asyncpg.connect(pg_root_url)
        await conn.execute("DROP DATABASE migrate_race WITH (FORCE)")
        await conn.close()


async def test_unreachable_database_is_ledger_unavailable(own_pg) -> None:  # type: ignore[no-untyped-def]
    url = own_pg.url
    conn = await asyncpg.connect(url)
    await apply_migrations(conn)
    await conn.close()
    pool = await connect_pool(url, min_size=1, max_size=2, timeout=1.0)
    ledger = Ledger(pool, timeout=1.0)
    try:
        own_pg.stop("immediate")
        with pytest.raises(LedgerUnavailable):
            await ledger.record_decision(decision())
        with pytest.raises(LedgerUnavailable):
            await ledger.consent_at(NUMBER, "marketing-calls")
        own_pg.start()
        assert (await ledger.record_decision(decision()))[1] is True
    finally:
        await pool.close()


async def test_pool_release_keeps_no_transaction_and_sends_no_reset(db_url: str) -> None:
    """connect_pool skips asyncpg's reset round trip, yet a connection given back with a
    transaction open is still rolled back (asyncpg does that before our reset hook)."""
    from agi.ledger.database import connect_pool

    pool = await connect_pool(db_url, min_size=1, max_size=1, timeout=5.0)
    try:
        async with pool.acquire() as conn:
            pid = await conn.fetchval("SELECT pg_backend_pid()")
            tx = conn.transaction()
            await tx.start()
            await conn.execute("CREATE TEMP TABLE left_open (x int)")
            # given back without commit or rollback
        async with pool.acquire() as conn:
            assert await conn.fetchval("SELECT pg_backend_pid()") == pid  # the same session
            assert not conn.is_in_transaction()
            assert await conn.fetchval("SELECT to_regclass('pg_temp.left_open')") is None
            seen: list[str] = []
            conn.add_query_logger(lambda record: seen.append(record.query))
        for _ in range(5):  # releases that would each have sent the reset statement
            async with pool.acquire() as conn:
                await conn.fetchval("SELECT 1")
        assert seen == ["SELECT 1"] * 5, seen  # no "RESET ALL; UNLISTEN *; ..." between
    finally:
        await pool.close()
