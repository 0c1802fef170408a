"""Group commit of decisions: concurrent writers share one statement, nothing else changes.

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

from agi.chain import verify_chain
from agi.ledger import _GROUP_MAX, ConsentDecision, DigitPress, Ledger, PromptHeard

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
                                              "offset_ms": 5230 + int(d.uniqueid.split(".")[1])}]
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
