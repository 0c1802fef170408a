"""Group commit of decisions and attempts: concurrent writers share one statement, nothing
else changes.

Real PostgreSQL. The group path is taken whenever decisions queue up behind a commit in
flight; ``asyncio.gather`` of many writers makes that certain.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from agi.ledger.chain import verify_chain
from agi.ledger.ledger import _GROUP_MAX, Ledger
from agi.ledger.records import (
    AttemptRecord,
    ConsentDecision,
    DigitPress,
    LedgerUnavailable,
    PromptHeard,
)

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def decision(i: int, **changes: object) -> ConsentDecision:
    base = ConsentDecision(
        number_e164=f"+4474001234{i % 100:02d}", organisation="Example Energy Ltd",
        purpose="marketing-calls", decision="opt_in" if i % 3 else "opt_out",
        method="ivr_inbound", evidence_strength="caller_id", decided_at=T0 + timedelta(i),
        idempotency_key=f"u{i}|PJSIP/6001-{i}|decision", instance="test",
        digits=(DigitPress("question", "1", 5230 + i),),
        prompts=(PromptHeard("identify", "en", "ab" * 32, 'Hello "you" \\ é'),),
        uniqueid=f"1796006581.{i}", linkedid=None, channel_name=f"PJSIP/6001-{i}",
        callerid_num=f"+4474001234{i % 100:02d}", callerid_name='Jane "JJ" Doe',
        call_started_at=T0,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


async def test_concurrent_decisions_are_stored_once_each_and_chained(
    ledger: Ledger, pool: asyncpg.Pool
) -> None:
    decisions = [decision(i) for i in range(150)]
    results = await asyncio.gather(*(ledger.record_decision(d) for d in decisions))
    assert all(created for _, created in results)
    assert len({event_id for event_id, _ in results}) == 150
    rows = {r["idempotency_key"]: r for r in await pool.fetch("SELECT * FROM consent_event")}
    for d, (event_id, _) in zip(decisions, results, strict=True):
        row = rows[d.idempotency_key]
        assert row["id"] == event_id  # each caller is told its own row's id
        assert row["decision"] == d.decision and row["number_e164"] == d.number_e164
        assert row["decided_at"] == d.decided_at and row["callerid_name"] == 'Jane "JJ" Doe'
        assert json.loads(row["digits"]) == [{"step": "question", "digit": "1",
                                              "offset_ms": 5230 + int(d.uniqueid.split(".")[1]),
                                              "ignored": False}]
        assert json.loads(row["prompts"])[0]["text"] == 'Hello "you" \\ é'
    # one chain, in id order, unbroken: the trigger linked the rows of each group in order
    report = await verify_chain(pool)
    assert report.checked == 150 and report.first_break is None
    ids = sorted(event_id for event_id, _ in results)
    recorded = [r["recorded_at"] for r in await pool.fetch(
        "SELECT recorded_at FROM consent_event ORDER BY id")]
    assert recorded == sorted(recorded) and ids == sorted(rows[k]["id"] for k in rows)


async def test_repeated_delivery_in_one_group_is_stored_once(
    ledger: Ledger, pool: asyncpg.Pool
) -> None:
    first = await ledger.record_decision(decision(1))
    batch = [decision(1), decision(2), decision(2), decision(3)]
    results = await asyncio.gather(*(ledger.record_decision(d) for d in batch))
    assert results[0] == (first[0], False)  # already in the ledger
    assert results[1][1] is True and results[2] == (results[1][0], False)
    assert results[3][1] is True
    assert await pool.fetchval("SELECT count(*) FROM consent_event") == 3


async def test_a_bad_decision_fails_alone(ledger: Ledger, pool: asyncpg.Pool) -> None:
    batch = [decision(1), decision(2, number_e164="07400123456"), decision(3)]
    results = await asyncio.gather(*(ledger.record_decision(d) for d in batch),
                                   return_exceptions=True)
    assert isinstance(results[1], asyncpg.CheckViolationError)
    assert results[0][1] is True and results[2][1] is True  # type: ignore[index]
    assert await pool.fetchval("SELECT count(*) FROM consent_event") == 2
    assert (await verify_chain(pool)).first_break is None


@pytest.mark.parametrize("writers", [1, _GROUP_MAX, _GROUP_MAX + 1])
async def test_group_sizes(ledger: Ledger, pool: asyncpg.Pool, writers: int) -> None:
    results = await asyncio.gather(*(ledger.record_decision(decision(i))
                                     for i in range(writers)))
    assert sorted(i for i, _ in results) == sorted(
        r["id"] for r in await pool.fetch("SELECT id FROM consent_event"))


# --------------------------------------------------------------------------- attempts


def attempt(i: int, **changes: object) -> AttemptRecord:
    base = AttemptRecord(
        route="consent", outcome="no_decision" if i % 2 else "hangup",
        reason="cancelled" if i % 2 else "caller_hung_up",
        idempotency_key=f"u{i}|PJSIP/6001-{i}|attempt", instance="test",
        number_e164=f"+4474001234{i % 100:02d}", organisation="Example Energy Ltd",
        purpose="marketing-calls", digits=(DigitPress("question", "1", 5230 + i),),
        prompts=(PromptHeard("identify", "en", "ab" * 32, 'Hello "you" \\ é'),),
        uniqueid=f"1796006581.{i}", linkedid=f"1796006580.{i}",
        channel_name=f"PJSIP/6001-{i}", callerid_num=f"+4474001234{i % 100:02d}",
        callerid_name='Jane "JJ" Doe', call_started_at=T0, ended_at=T0 + timedelta(seconds=i),
    )
    return replace(base, **changes)  # type: ignore[arg-type]


async def test_concurrent_attempts_are_stored_once_each(ledger: Ledger, pool: asyncpg.Pool) -> None:
    attempts = [attempt(i) for i in range(120)]
    ids = await asyncio.gather(*(ledger.record_attempt(a) for a in attempts))
    assert None not in ids and len(set(ids)) == 120
    rows = {r["idempotency_key"]: r for r in await pool.fetch("SELECT * FROM consent_attempt")}
    assert len(rows) == 120
    for a, attempt_id in zip(attempts, ids, strict=True):
        row = rows[a.idempotency_key]
        assert row["id"] == attempt_id  # each caller is told its own row's id
        for column in ("route", "outcome", "reason", "number_e164", "organisation", "purpose",
                       "uniqueid", "linkedid", "channel_name", "callerid_num",
                       "callerid_name", "call_started_at", "ended_at", "instance"):
            assert row[column] == getattr(a, column), column
        assert json.loads(row["digits"]) == [{"step": "question", "digit": "1",
                                              "offset_ms": a.digits[0].offset_ms,
                                              "ignored": False}]
        assert json.loads(row["prompts"])[0]["text"] == 'Hello "you" \\ é'
    # in arrival order: ids rise with the order the attempts were handed in
    assert ids == sorted(i for i in ids if i is not None)


async def test_repeated_attempt_in_one_group_is_stored_once(
    ledger: Ledger, pool: asyncpg.Pool
) -> None:
    first = await ledger.record_attempt(attempt(1))
    assert first is not None
    batch = [attempt(1), attempt(2), attempt(2), attempt(3)]
    ids = await asyncio.gather(*(ledger.record_attempt(a) for a in batch))
    assert ids[0] is None  # already stored
    assert ids[1] is not None and ids[2] is None and ids[3] is not None
    assert await pool.fetchval("SELECT count(*) FROM consent_attempt") == 3


async def test_a_bad_attempt_fails_alone(ledger: Ledger, pool: asyncpg.Pool) -> None:
    batch = [attempt(1), attempt(2, outcome="opted_in"), attempt(3)]
    results = await asyncio.gather(*(ledger.record_attempt(a) for a in batch),
                                   return_exceptions=True)
    assert isinstance(results[1], asyncpg.CheckViolationError)
    assert isinstance(results[0], int) and isinstance(results[2], int)
    assert await pool.fetchval("SELECT count(*) FROM consent_attempt") == 2


async def test_attempts_during_an_outage_are_told_so(db_url: str) -> None:
    from agi.ledger.database import connect_pool

    pool = await connect_pool(db_url, min_size=1, max_size=2)
    ledger = Ledger(pool, timeout=1.0)
    await pool.close()  # every statement now fails as an outage
    results = await asyncio.gather(*(ledger.record_attempt(attempt(i)) for i in range(5)),
                                   return_exceptions=True)
    assert all(isinstance(r, LedgerUnavailable) for r in results), results
