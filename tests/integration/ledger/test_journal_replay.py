"""Replay of the durable journal into the ledger: exactly once, whatever happens.

Replaying twice, replaying after a crash mid-replay, two replayers at once, a poison
entry in the middle — every decision ends up in the ledger exactly once, and nothing
journaled is silently dropped.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from agi.ledger.chain import verify_chain
from agi.ledger.decisions import LedgerDecisionStore, replay_journal
from agi.ledger.journal import Journal
from agi.ledger.ledger import Ledger
from agi.ledger.records import AttemptRecord, ConsentDecision, LedgerUnavailable, StorageUnavailable


def decision(i: int) -> ConsentDecision:
    return ConsentDecision(
        number_e164=f"+4477009002{i:02d}", organisation="Example Energy Ltd",
        purpose="marketing-calls", decision="opt_in" if i % 3 else "opt_out",
        method="ivr_inbound", evidence_strength="caller_id",
        decided_at=datetime(2025, 3, 1, tzinfo=UTC), idempotency_key=f"u{i}|PJSIP/a|decision",
        instance="test", uniqueid=f"u{i}", callerid_name="x'); DROP TABLE consent_event;--",
    )


def journal_decisions(journal: Journal, n: int) -> None:
    for i in range(n):
        data = decision(i).to_json()
        data["source"] = "journal"
        journal.append("decision", data)


async def count(pool: asyncpg.Pool) -> int:
    return int(await pool.fetchval("SELECT count(*) FROM consent_event"))


async def test_replay_twice_never_duplicates(ledger: Ledger, pool: Any, tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j")
    journal_decisions(journal, 12)
    first = await replay_journal(ledger, journal)
    second = await replay_journal(ledger, journal)
    assert first == {"replayed": 12, "duplicates": 0, "rejected": 0, "files": 1}
    assert second == {"replayed": 0, "duplicates": 0, "rejected": 0, "files": 0}
    assert await count(pool) == 12 and journal.depth() == 0
    rows = await pool.fetch("SELECT source, callerid_name FROM consent_event")
    assert {r["source"] for r in rows} == {"journal"}
    # SQL in a caller-controlled field is data, stored verbatim
    assert {r["callerid_name"] for r in rows} == {"x'); DROP TABLE consent_event;--"}
    assert (await verify_chain(pool)).ok


class CrashAfter(Ledger):
    """A ledger whose connection dies after ``n`` writes (a crash mid-replay)."""

    def __init__(self, pool: asyncpg.Pool, n: int) -> None:
        super().__init__(pool, timeout=5.0)
        self.left = n

    async def record_decision(self, d: ConsentDecision) -> tuple[int, bool]:
        if self.left == 0:
            raise asyncpg.exceptions.AdminShutdownError("terminating connection")
        self.left -= 1
        return await super().record_decision(d)


async def test_replay_after_a_partial_replay(pool: Any, tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j")
    journal_decisions(journal, 10)
    with pytest.raises(LedgerUnavailable):
        await replay_journal(CrashAfter(pool, 4), journal)
    assert await count(pool) == 4
    assert journal.depth() == 10  # the file stays pending until fully replayed
    journal_decisions(journal, 13)  # more arrive meanwhile (3 new, 10 again)
    counts = await replay_journal(Ledger(pool, timeout=5.0), journal)
    assert counts["replayed"] == 13 - 4
    assert counts["duplicates"] == 4 + 10
    assert await count(pool) == 13 and journal.depth() == 0


async def test_two_replayers_at_once(ledger: Ledger, pool: Any, tmp_path: Path) -> None:
    """The server's replayer and `consent-ivr journal replay` may overlap."""
    journal = Journal(tmp_path / "j")
    journal_decisions(journal, 30)
    results = await asyncio.gather(replay_journal(ledger, journal),
                                   replay_journal(Ledger(pool, timeout=5.0), journal))
    assert sum(r["replayed"] for r in results) == 30
    assert await count(pool) == 30 and journal.depth() == 0


async def test_poison_entry_is_set_aside_not_blocking(
    ledger: Ledger, pool: Any, tmp_path: Path
) -> None:
    journal = Journal(tmp_path / "j")
    journal_decisions(journal, 2)
    journal.append("decision", {"idempotency_key": "half"})  # malformed
    bad = decision(50).to_json()
    bad["purpose"] = "NOT A PURPOSE"  # refused by a CHECK constraint
    journal.append("decision", bad)
    journal.append("mystery", {"x": 1})
    journal.append("decision", [1, 2])  # not an object: skipped by the reader (never ours)
    journal_decisions(journal, 4)
    counts = await replay_journal(ledger, journal)
    assert counts == {"replayed": 4, "duplicates": 2, "rejected": 3, "files": 1}
    assert await count(pool) == 4 and journal.depth() == 0
    rejected = [json.loads(x) for x in (tmp_path / "j" / "rejected.jsonl").read_text().splitlines()]
    assert len(rejected) == 3
    assert any("refused by the database" in r["reason"] for r in rejected)


async def test_journaled_attempts_replay_too(
    ledger: Ledger, pool: Any, db_url: str, tmp_path: Path
) -> None:
    journal = Journal(tmp_path / "j")
    store = LedgerDecisionStore(ledger, journal)
    attempt = AttemptRecord(route="consent", outcome="hangup", reason="caller_hung_up",
                            idempotency_key="u1|PJSIP/a|attempt", instance="test",
                            ended_at=datetime.now(UTC))
    await pool.close()  # the database "goes away" for this store
    await store.record_attempt(attempt)
    assert journal.depth() == 1
    async with asyncpg.create_pool(db_url, min_size=1, max_size=2) as fresh:
        counts = await replay_journal(Ledger(fresh, timeout=5.0), journal)
        assert counts["replayed"] == 1
        assert await fresh.fetchval("SELECT count(*) FROM consent_attempt") == 1


class Exploding(Ledger):
    def __init__(self, pool: asyncpg.Pool, exc: Exception) -> None:
        super().__init__(pool, timeout=5.0)
        self.exc = exc

    async def record_decision(self, d: ConsentDecision) -> tuple[int, bool]:
        raise self.exc


@pytest.mark.parametrize("exc", [
    asyncpg.exceptions.AdminShutdownError("terminating connection due to administrator command"),
    asyncpg.exceptions.CannotConnectNowError("the database system is starting up"),
    asyncpg.exceptions.TooManyConnectionsError("too many clients"),
    asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed"),
    asyncpg.exceptions.SerializationError("could not serialize"),
    ConnectionRefusedError(111, "refused"),
    TimeoutError(),
    LedgerUnavailable("down"),
])
async def test_every_outage_shape_is_journaled(pool: Any, tmp_path: Path, exc: Exception) -> None:
    """PostgreSQL stopping mid-query says 57P01, not a connection error: journal it too."""
    journal = Journal(tmp_path / "j")
    result = await LedgerDecisionStore(Exploding(pool, exc), journal).commit_decision(decision(1))
    assert result.journaled and journal.depth() == 1


async def test_data_errors_are_not_journaled(pool: Any, tmp_path: Path) -> None:
    """A decision the database refuses as data would be refused at replay too: say error."""
    journal = Journal(tmp_path / "j")
    refusing = Exploding(pool, asyncpg.exceptions.CheckViolationError("bad"))
    store = LedgerDecisionStore(refusing, journal)
    with pytest.raises(StorageUnavailable):
        await store.commit_decision(decision(1))
    assert journal.depth() == 0


async def test_full_journal_disk_is_storage_unavailable(pool: Any, tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j")
    journal._ensure()
    journal.active.symlink_to("/dev/full")
    store = LedgerDecisionStore(Exploding(pool, LedgerUnavailable("down")), journal)
    with pytest.raises(StorageUnavailable):
        await store.commit_decision(decision(1))
