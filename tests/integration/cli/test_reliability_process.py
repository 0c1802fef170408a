"""A real ``python -m agi serve`` process, killed (SIGKILL) and stopped (SIGTERM) mid-call.

* SIGKILL mid-call: no half-written row; on restart the calls that were in progress
  are ``interrupted`` attempts, never consent, and the hash chain is intact.
* SIGTERM: the listener closes at once, a call that can finish within the drain
  timeout finishes (its decision stored and confirmed), the call that cannot is cut
  with ``CONSENT_RESULT=error``, no consent, and an ``interrupted`` attempt.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from agi.ledger.chain import verify_chain
from tests.fakes import SILENCE, FakeAsterisk
from tests.harness import Serve, free_port


@pytest.fixture
def serve(db_url: str, tmp_path: Path) -> Iterator[Any]:
    started: list[Serve] = []

    def start(port: int | None = None, **env: str) -> Serve:
        s = Serve(db_url, tmp_path, port or free_port(), **env)
        started.append(s)
        return s

    yield start
    for s in started:
        s.kill()


async def until(pool: asyncpg.Pool, sql: str, expected: Any, timeout: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while (got := await pool.fetchval(sql)) != expected:
        assert loop.time() < deadline, f"{sql!r}: {got!r} != {expected!r}"
        await asyncio.sleep(0.05)


def fake(port: int, i: int, **kwargs: Any) -> FakeAsterisk:
    kwargs.setdefault("realtime", True)
    kwargs.setdefault("callerid", f"+447400{400000 + i}")
    return FakeAsterisk("127.0.0.1", port, uniqueid=f"1810000000.{i}",
                        channel=f"PJSIP/p-{i:08d}", **kwargs)


async def test_sigkill_mid_call_then_restart(serve: Any, pool: asyncpg.Pool) -> None:
    first = serve()
    await first.ready()
    # one caller opts out at once (a stored decision); three are still listening
    done = await fake(first.port, 0, presses=["2"], realtime=False).run()
    assert done.variables["CONSENT_RESULT"] == "opted_out"
    listening = [asyncio.create_task(fake(first.port, i, presses=[SILENCE] * 6).run())
                 for i in (1, 2, 3)]
    await until(pool, "SELECT count(*) FROM call_session WHERE state = 'in_progress'", 3)
    first.signal(signal.SIGKILL)
    await first.wait()
    cut = await asyncio.gather(*listening)
    for rec in cut:
        assert rec.variables.get("CONSENT_RESULT") == "error"  # the safe value stands
        assert not {"consent-ivr/opted-in", "consent-ivr/opted-out"} & set(rec.prompt_names())

    # nothing half-written: one whole event, the chain intact, calls visibly open
    assert await pool.fetchval("SELECT count(*) FROM consent_event") == 1
    assert (await verify_chain(pool)).ok
    assert await pool.fetchval("SELECT count(*) FROM consent_attempt") == 0

    second = serve(port=first.port)  # the same instance comes back
    await second.ready()
    await until(pool, "SELECT count(*) FROM call_session WHERE state = 'in_progress'", 0)
    rows = await pool.fetch("SELECT uniqueid, outcome, reason FROM consent_attempt "
                            "ORDER BY uniqueid")
    assert [tuple(r) for r in rows] == [
        (f"1810000000.{i}", "interrupted", "server_stopped_mid_call") for i in (1, 2, 3)]
    assert await pool.fetchval("SELECT count(*) FROM consent_event") == 1
    assert await pool.fetchval(
        "SELECT state FROM call_session WHERE uniqueid = '1810000000.0'") == "finished"
    assert b"calls_interrupted_found" in second.log.read_bytes()
    second.signal(signal.SIGTERM)
    assert await second.wait() == 0


async def test_sigterm_drains_then_cuts(serve: Any, pool: asyncpg.Pool) -> None:
    proc = serve(CONSENT_IVR_DRAIN_TIMEOUT="3")
    await proc.ready()
    # finishes within the drain: at 20x speed, presses 2 during the question (0.55 s real),
    # then hears the 8.5 s confirmation (0.4 s real)
    short = asyncio.create_task(fake(proc.port, 1, time_scale=0.05, timeline=[(11.0, "2")]).run())
    # cannot finish within it: listens in silence at real speed
    long_ = asyncio.create_task(fake(proc.port, 2, presses=[SILENCE] * 6).run())
    await until(pool, "SELECT count(*) FROM call_session WHERE state = 'in_progress'", 2)
    proc.signal(signal.SIGTERM)
    await asyncio.sleep(0.3)
    late = await fake(proc.port, 3, presses=["2"], realtime=False).run()
    assert not late.connected or late.commands == [], late.dialogue()  # no flow ran
    assert await proc.wait() == 0

    short_rec, long_rec = await short, await long_
    assert short_rec.variables["CONSENT_RESULT"] == "opted_out", short_rec.dialogue()
    assert short_rec.prompt_names()[-1] == "consent-ivr/opted-out"
    assert long_rec.variables["CONSENT_RESULT"] == "error", long_rec.dialogue()
    assert not {"consent-ivr/opted-in", "consent-ivr/opted-out"} & set(long_rec.prompt_names())
    events = await pool.fetch("SELECT uniqueid, decision FROM consent_event")
    assert [tuple(r) for r in events] == [("1810000000.1", "opt_out")]
    attempt = await pool.fetchrow("SELECT uniqueid, outcome, reason FROM consent_attempt")
    assert tuple(attempt) == ("1810000000.2", "interrupted", "cut_short_by_drain")
    log = proc.log.read_bytes()
    assert b"agi_draining" in log and b"agi_calls_cut_short" in log
    assert await pool.fetchval("SELECT count(*) FROM call_session WHERE state = 'in_progress'") == 0


async def test_second_sigterm_during_the_drain_cuts_the_calls_at_once(
        serve: Any, pool: asyncpg.Pool) -> None:
    # a drain that would wait ten minutes: only the second signal can end it in time
    proc = serve(CONSENT_IVR_DRAIN_TIMEOUT="600")
    await proc.ready()
    listening = asyncio.create_task(fake(proc.port, 4, presses=[SILENCE] * 6).run())
    await until(pool, "SELECT count(*) FROM call_session WHERE state = 'in_progress'", 1)
    proc.signal(signal.SIGTERM)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 20
    while b"agi_draining" not in proc.log.read_bytes():
        assert loop.time() < deadline, proc.log.read_text()
        await asyncio.sleep(0.05)
    proc.signal(signal.SIGINT)  # Ctrl-C, the second time
    assert await proc.wait(timeout=60) == 0  # not 600 s
    rec = await listening
    assert rec.variables["CONSENT_RESULT"] == "error", rec.dialogue()
    assert await pool.fetchval("SELECT count(*) FROM consent_event") == 0
    attempt = await pool.fetchrow("SELECT uniqueid, outcome, reason FROM consent_attempt")
    assert tuple(attempt) == ("1810000000.4", "interrupted", "cut_short_by_drain")
    log = proc.log.read_bytes()
    assert b"stop_now" in log and b"agi_drain_cut_now" in log
