"""The reliability signals an operator alerts on: rejected journal entries, calls a
crash interrupted, and the hash chain's verdict — exported as metrics, not only logged."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import pytest

from agi.cli.main import _verify_chain_forever
from agi.ledger.chain import (
    ChainReport,
    export_chain_status_elsewhere,
    publish_chain_status,
    verify_chain,
)
from agi.ledger.decisions import replay_journal
from agi.ledger.journal import Journal
from agi.ledger.ledger import Ledger
from agi.ops.metrics import Metrics
from tests.integration.ledger.test_chain import seed
from tests.integration.ledger.test_journal_replay import decision, journal_decisions


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


async def walk_here(pool: asyncpg.Pool, metrics: Metrics) -> ChainReport:
    """A walk in this process, published as serve's child publishes its verdict."""
    report = await verify_chain(pool)
    publish_chain_status(metrics, report.to_json())
    return report


def value(m: Metrics, name: str) -> float:
    got = m.registry.get_sample_value(name)
    assert got is not None, name
    return got


async def test_rejected_journal_entries_are_counted(
    ledger: Ledger, private_dir: Path, metrics: Metrics
) -> None:
    journal = Journal(private_dir / "j")
    journal_decisions(journal, 2)
    bad = decision(50).to_json()
    bad["purpose"] = "NOT A PURPOSE"  # refused by a CHECK constraint: data, not an outage
    journal.append("decision", bad)
    assert value(metrics, "consent_ivr_journal_rejected_total") == 0
    counts = await replay_journal(ledger, journal, metrics=metrics)
    assert counts["rejected"] == 1
    assert value(metrics, "consent_ivr_journal_rejected_total") == 1


async def test_chain_status_is_exported_and_turns_red_on_tampering(
    ledger: Ledger, pool: asyncpg.Pool, db_url: str, metrics: Metrics
) -> None:
    assert value(metrics, "consent_ivr_ledger_chain_ok") == -1  # not walked yet
    await seed(ledger, 5)
    report = await walk_here(pool, metrics)
    assert report.ok
    assert value(metrics, "consent_ivr_ledger_chain_ok") == 1
    assert value(metrics, "consent_ivr_ledger_chain_verified_events") == 5

    su = await asyncpg.connect(db_url)
    try:
        await su.execute("SET session_replication_role = replica")  # bypass the triggers
        # flip one decision (seed: odd ids opt in, even ids opt out)
        await su.execute("UPDATE consent_event SET decision = 'opt_out' WHERE id = 3")
    finally:
        await su.close()
    report = await walk_here(pool, metrics)
    assert not report.ok and report.first_break is not None
    assert report.first_break.id == 3
    assert value(metrics, "consent_ivr_ledger_chain_ok") == 0

    # the walk serve runs, in a child process, reaches the same verdict
    metrics.chain_ok.set(-1)
    verdict = await export_chain_status_elsewhere(db_url, metrics)
    assert not verdict["ok"] and verdict["first_break"]["id"] == 3
    assert verdict["checked"] == report.checked
    assert value(metrics, "consent_ivr_ledger_chain_ok") == 0


async def test_serve_walks_the_chain_periodically(
    ledger: Ledger, db_url: str, metrics: Metrics
) -> None:
    await seed(ledger, 3)
    stop = asyncio.Event()
    task = asyncio.create_task(_verify_chain_forever(db_url, metrics, stop, 0.05))
    for _ in range(1000):
        if metrics.registry.get_sample_value("consent_ivr_ledger_chain_ok") == 1:
            break
        await asyncio.sleep(0.01)
    stop.set()
    await asyncio.wait_for(task, 5)
    assert value(metrics, "consent_ivr_ledger_chain_verified_events") == 3


async def test_chain_walk_disabled_with_zero_interval(db_url: str, metrics: Metrics) -> None:
    await asyncio.wait_for(_verify_chain_forever(db_url, metrics, asyncio.Event(), 0), 1)
    assert value(metrics, "consent_ivr_ledger_chain_ok") == -1


async def test_interrupted_calls_are_counted(pool: asyncpg.Pool, metrics: Metrics) -> None:
    from agi.ledger.sessions import CallSessions
    from tests.integration.ledger.test_reliability_sessions import FakeCall

    before = CallSessions(pool, instance="i9", metrics=metrics)
    for i in range(2):
        before.started(FakeCall(f"9.{i}"), "127.0.0.1:1")  # type: ignore[arg-type]
    await before.flush()
    after = CallSessions(pool, instance="i9", metrics=metrics)  # the restart: a new boot id
    assert (await after.recover())["interrupted"] == 2
    assert value(metrics, "consent_ivr_calls_interrupted_total") == 2
