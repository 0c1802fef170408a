"""Call bookkeeping: calls a crash cut short are found at the next start, never as consent."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest

from agi.ledger.ledger import Ledger
from agi.ledger.records import ConsentDecision, idempotency_key
from agi.ledger.sessions import CallSessions
from agi.wire.protocol import AGIEnv


@dataclass
class FakeCall:
    call_id: str
    route: str = "consent"
    outcome: str = "unknown"
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    env: AGIEnv = field(init=False)

    def __post_init__(self) -> None:
        self.env = AGIEnv({"uniqueid": self.call_id, "channel": f"PJSIP/{self.call_id}",
                           "callerid": "+442079460018", "calleridname": "Jane"})


async def rows(pool: Any, sql: str) -> list[dict[str, Any]]:
    return [dict(r) for r in await pool.fetch(sql)]


async def test_one_row_per_call_batched(pool: Any) -> None:
    s = CallSessions(pool, instance="i1")
    short, long_ = FakeCall("1.1"), FakeCall("1.2")
    s.started(short, "127.0.0.1:5000")
    s.started(long_, "127.0.0.1:5001")
    short.outcome = "opted_in"
    s.finished(short)  # within one interval: written once, already finished
    await s.flush()
    long_.outcome = "no_decision"
    s.finished(long_)
    await s.flush()
    got = await rows(pool, "SELECT call_id, state, outcome, number_e164, peer FROM call_session "
                           "ORDER BY call_id")
    assert got == [
        {"call_id": "1.1", "state": "finished", "outcome": "opted_in",
         "number_e164": "+442079460018", "peer": "127.0.0.1:5000"},
        {"call_id": "1.2", "state": "finished", "outcome": "no_decision",
         "number_e164": "+442079460018", "peer": "127.0.0.1:5001"},
    ]


async def test_crash_leaves_in_progress_then_recovered_as_interrupted(
    pool: Any, ledger: Ledger
) -> None:
    before = CallSessions(pool, instance="i1", boot_id=uuid.uuid4())
    calls = [FakeCall(f"2.{i}") for i in range(3)]
    for c in calls:
        before.started(c, "127.0.0.1:1")
    await before.flush()
    # call 2.2 had its decision committed just before the kill: it stands, not "interrupted"
    await ledger.record_decision(ConsentDecision(
        number_e164="+447700900123", organisation="o", purpose="marketing-calls",
        decision="opt_out", method="ivr_inbound", evidence_strength="caller_id",
        decided_at=datetime.now(UTC), idempotency_key=idempotency_key("2.2", "PJSIP/2.2",
                                                                      "decision"),
        instance="i1", uniqueid="2.2"))
    # ... SIGKILL: no finished(), no flush. Another instance's live calls stay untouched:
    other = CallSessions(pool, instance="i2")
    other.started(FakeCall("9.9"), "127.0.0.1:2")
    await other.flush()

    after = CallSessions(pool, instance="i1")  # the restart: a new boot id
    assert await after.recover() == {"interrupted": 3, "attempts_filed": 2}
    assert await after.recover() == {"interrupted": 0, "attempts_filed": 0}
    attempts = await rows(pool, "SELECT uniqueid, outcome, reason, idempotency_key "
                                "FROM consent_attempt ORDER BY uniqueid")
    # the SQL that files them builds the key as agi.ledger.ledger.idempotency_key does
    assert attempts == [
        {"uniqueid": "2.0", "outcome": "interrupted", "reason": "server_stopped_mid_call",
         "idempotency_key": idempotency_key("2.0", "PJSIP/2.0", "attempt")},
        {"uniqueid": "2.1", "outcome": "interrupted", "reason": "server_stopped_mid_call",
         "idempotency_key": idempotency_key("2.1", "PJSIP/2.1", "attempt")},
    ]
    assert attempts[0]["idempotency_key"] == "2.0|PJSIP/2.0|attempt"
    states = await rows(pool, "SELECT call_id, state FROM call_session ORDER BY call_id")
    assert states == [{"call_id": "2.0", "state": "interrupted"},
                      {"call_id": "2.1", "state": "interrupted"},
                      {"call_id": "2.2", "state": "interrupted"},
                      {"call_id": "9.9", "state": "in_progress"}]
    assert await pool.fetchval("SELECT count(*) FROM consent_event WHERE decision = 'opt_in'") == 0


async def test_cut_short_by_drain_files_an_interrupted_attempt(pool: Any) -> None:
    s = CallSessions(pool, instance="i1")
    c = FakeCall("3.1")
    s.started(c, "p")
    await s.flush()
    c.outcome = "cut_short"
    s.finished(c)
    await s.flush()
    got = await rows(pool, "SELECT outcome, reason FROM consent_attempt")
    assert got == [{"outcome": "interrupted", "reason": "cut_short_by_drain"}]


async def test_database_down_keeps_the_queue_and_never_raises(pool: Any, db_url: str) -> None:
    import asyncpg

    broken = await asyncpg.create_pool(db_url, min_size=0, max_size=1)
    s = CallSessions(broken, instance="i1", timeout=0.5)
    await broken.close()
    c = FakeCall("4.1")
    s.started(c, "p")
    await s.flush()  # fails quietly, keeps the row
    s.pool = pool
    await s.flush()
    assert await pool.fetchval("SELECT count(*) FROM call_session") == 1


async def test_run_flushes_until_stopped(pool: Any) -> None:
    s = CallSessions(pool, instance="i1", interval=0.05)
    stop = asyncio.Event()
    task = asyncio.create_task(s.run(stop))
    c = FakeCall("5.1")
    s.started(c, "p")
    for _ in range(100):
        if await pool.fetchval("SELECT count(*) FROM call_session"):
            break
        await asyncio.sleep(0.02)
    c.outcome = "hangup"
    s.finished(c)
    stop.set()
    await task
    assert await pool.fetchval("SELECT state FROM call_session") == "finished"


async def test_run_sleeps_while_nothing_is_queued_and_retries_a_failed_flush(
        pool: Any, db_url: str) -> None:
    import asyncpg

    flushes: list[int] = []

    class Counting(CallSessions):
        async def flush(self) -> None:
            flushes.append(len(self._starts) + len(self._ends))
            await super().flush()

    s = Counting(pool, instance="i1", interval=0.01, timeout=0.5)
    stop = asyncio.Event()
    task = asyncio.create_task(s.run(stop))
    for _ in range(20):  # twenty intervals and more with no call: no flush at all
        await asyncio.sleep(0.01)
    assert flushes == []
    broken = await asyncpg.create_pool(db_url, min_size=0, max_size=1)
    await broken.close()
    s.pool = broken  # the database is down: the queued start is kept and tried again
    s.started(FakeCall("5.2"), "p")
    for _ in range(200):
        if len(flushes) >= 2:
            break
        await asyncio.sleep(0.01)
    assert flushes[:2] == [1, 1]
    s.pool = pool
    for _ in range(200):
        if await pool.fetchval("SELECT count(*) FROM call_session"):
            break
        await asyncio.sleep(0.02)
    stop.set()
    await task
    assert await pool.fetchval("SELECT state FROM call_session") == "in_progress"


@pytest.mark.parametrize("n", [500])
async def test_many_calls_cost_two_statements(pool: Any, n: int) -> None:
    s = CallSessions(pool, instance="i1")
    calls = [FakeCall(f"6.{i}") for i in range(n)]
    for c in calls:
        s.started(c, "p")
    await s.flush()
    for c in calls:
        c.outcome = "opted_out"
        s.finished(c)
    await s.flush()
    assert await pool.fetchval(
        "SELECT count(*) FROM call_session WHERE state = 'finished'") == n


async def test_an_end_that_arrives_mid_flush_is_not_lost(pool: Any) -> None:
    """A call ending while a flush is on the wire must be written as finished next time."""
    gate = asyncio.Event()
    entered = asyncio.Event()

    class SlowPool:
        """The real pool, but the first acquire waits until the test lets it go."""

        def __init__(self) -> None:
            self.held = False

        def acquire(self, timeout: float | None = None) -> Any:
            outer = self

            class _Ctx:
                async def __aenter__(self) -> Any:
                    if not outer.held:
                        outer.held = True
                        entered.set()
                        await gate.wait()
                    self._cm = pool.acquire(timeout=timeout)
                    return await self._cm.__aenter__()

                async def __aexit__(self, *exc: Any) -> Any:
                    return await self._cm.__aexit__(*exc)

            return _Ctx()

    s = CallSessions(SlowPool(), instance="i7")  # type: ignore[arg-type]
    calls = [FakeCall(f"7.{i}") for i in range(3)]
    for c in calls:
        s.started(c, "127.0.0.1:7")
    first = asyncio.create_task(s.flush())
    await entered.wait()  # the flush holds the starts and is waiting for a connection
    for c in calls:
        c.outcome = "opted_out"
        s.finished(c)  # ends arrive while that flush is in flight
    gate.set()
    await first
    await s.flush()
    got = await rows(pool, "SELECT call_id, state, outcome FROM call_session "
                           "WHERE instance = 'i7' ORDER BY call_id")
    assert got == [{"call_id": f"7.{i}", "state": "finished", "outcome": "opted_out"}
                   for i in range(3)]
