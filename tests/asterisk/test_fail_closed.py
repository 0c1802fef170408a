"""Fail closed on a real Asterisk: what a caller hears when the consent server or its
database is not there, and that nothing is ever stored as consent that the caller did not
give — plus the agent-transfer context, which always hands the caller back.

Every scenario runs at once (one batch); the ones that kill, drain or cut a server own
that server (its own port and instance name), and the database outage has its own
embedded PostgreSQL.
"""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from agi.ledger.chain import verify_chain
from agi.ops.pgembed import EmbeddedPostgres
from tests.asterisk.conftest import TOKEN, fetch_rows, outcome, run_batch, spawn_serve
from tests.asterisk.pbx import Asterisk, CallRecord, Timeline, free_port
from tests.harness import Serve

EN = Timeline("en")
START, INTO = 0.6, 2.0
QUESTION = ("GET", "OPTION", "consent-ivr/question-marketing-calls")
KIT = ["test-line", "consent-inbound"]
FALLBACK = [*KIT, "consent-fallback"]


def question_at() -> float:
    return START + EN.length("identify") + INTO


async def _until_rows(url: str, sql: str, *args: Any, count: int,
                      timeout: float = 30.0) -> list[dict[str, Any]]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while len(rows := await fetch_rows(url, sql, *args)) < count:
        assert loop.time() < deadline, f"{sql} {args}: {rows}"
        await asyncio.sleep(0.2)
    return rows


@pytest.fixture(scope="module")
def failures(pbx: Asterisk, tier_db: str, tier_dir: Path, consent_service: Serve,
             ) -> Iterator[dict[str, Any]]:
    base = tier_dir / "fail"
    own: list[Serve] = []
    pg = EmbeddedPostgres(base / "outage-pg")
    pg_url = pg.start()

    async def serve(name: str, db: str = tier_db, port: int = 0, **env: str) -> Serve:
        s = spawn_serve(db, base / name, port or free_port(),
                        CONSENT_IVR_INSTANCE=f"tier-{name}", **env)
        own.append(s)
        await s.ready()
        return s

    async def not_listening() -> CallRecord:
        return await pbx.call("+447400200001", [], agi=f"agi://127.0.0.1:{free_port()}")

    async def wrong_token() -> CallRecord:
        return await pbx.call("+447400200002", [(question_at(), "2")], token="not-the-token")

    async def killed() -> dict[str, Any]:
        victim = await serve("killed")
        # the caller would press 2 (opt out) well after the kill: it must count for nothing
        linked = await pbx.start_call("+447400200003", [(question_at() + 6, "2")],
                                      agi=f"agi://127.0.0.1:{victim.port}")
        await pbx.in_command(linked, *QUESTION)
        await asyncio.sleep(1.0)
        victim.signal(signal.SIGKILL)
        await victim.wait()
        rec = await pbx.wait_call(linked)
        events_before = await fetch_rows(tier_db, "SELECT id FROM consent_event "
                                    "WHERE number_e164 = '+447400200003'")
        again = await serve("killed", port=victim.port)  # the same instance comes back
        attempts = await _until_rows(tier_db, "SELECT * FROM consent_attempt WHERE uniqueid = $1",
                                     rec.uniqueids[rec.line_channel], count=1)
        return {"rec": rec, "events_before": events_before, "attempts": attempts,
                "log": again.log.read_text()}

    async def drained() -> dict[str, Any]:
        victim = await serve("drained", CONSENT_IVR_DRAIN_TIMEOUT="1")
        linked = await pbx.start_call("+447400200004", [],
                                      agi=f"agi://127.0.0.1:{victim.port}")
        await pbx.in_command(linked, *QUESTION)
        victim.signal(signal.SIGTERM)
        code = await victim.wait()
        rec = await pbx.wait_call(linked)
        attempts = await fetch_rows(tier_db, "SELECT * FROM consent_attempt WHERE uniqueid = $1",
                               rec.uniqueids[rec.line_channel])
        return {"rec": rec, "code": code, "attempts": attempts}

    async def database_stopped() -> dict[str, Any]:
        server = await serve("outage", db=pg_url)
        agi = f"agi://127.0.0.1:{server.port}"
        # both act 8 s into the 25 s question, long after the database has stopped
        decider = await pbx.start_call("+447400200005", [(question_at() + 6, "2")], agi=agi)
        silent = await pbx.start_call("+447400200006", [(question_at() + 6, "H")], agi=agi)
        await pbx.in_command(decider, *QUESTION)
        await pbx.in_command(silent, *QUESTION)
        await asyncio.to_thread(pg.stop, "fast")
        decided, hung_up = await pbx.wait_call(decider), await pbx.wait_call(silent)
        await asyncio.to_thread(pg.start)
        # the server replays its journal once the database answers again
        events = await _until_rows(pg_url, "SELECT * FROM consent_event", count=1)
        attempts = await _until_rows(pg_url, "SELECT * FROM consent_attempt", count=1)
        await asyncio.sleep(2.5)  # one more replay pass: it must add nothing
        events = await fetch_rows(pg_url, "SELECT * FROM consent_event")
        attempts = await fetch_rows(pg_url, "SELECT * FROM consent_attempt")
        pool = await asyncpg.create_pool(pg_url, min_size=1, max_size=1)
        try:
            chain_ok = (await verify_chain(pool)).ok
        finally:
            await pool.close()
        return {"decided": decided, "hung_up": hung_up, "events": events,
                "attempts": attempts, "chain_ok": chain_ok, "log": server.log.read_text()}

    async def transfer_gosub() -> CallRecord:
        at = START + EN.length("transfer-intro", "identify") + INTO
        return await pbx.call("+447400200007", [(at, "2")], context="test-transfer",
                              exten="gosub")

    async def transfer_blind_return_to() -> CallRecord:
        at = START + EN.length("transfer-intro", "identify") + INTO
        return await pbx.call("+447400200008", [(at, "2")], context="test-transfer",
                              exten="blind", CONSENT_RETURN_TO="Local/s@test-agent/n")

    async def transfer_blind_agent() -> CallRecord:
        # the transferring agent's channel as Asterisk names it; its device has a dash
        at = START + EN.length("transfer-intro", "identify") + INTO
        return await pbx.call("+447400200009", [(at, "2")], context="test-transfer",
                              exten="blind", TEST_BLIND="PJSIP/agent-desk-0000002a")

    async def transfer_server_down() -> CallRecord:
        return await pbx.call("+447400200010", [], context="test-transfer", exten="blind",
                              agi=f"agi://127.0.0.1:{free_port()}",
                              CONSENT_RETURN_TO="Local/s@test-agent/n")

    try:
        results = run_batch(pbx, {
            "not_listening": not_listening, "wrong_token": wrong_token, "killed": killed,
            "drained": drained, "database_stopped": database_stopped,
            "transfer_gosub": transfer_gosub,
            "transfer_blind_return_to": transfer_blind_return_to,
            "transfer_blind_agent": transfer_blind_agent,
            "transfer_server_down": transfer_server_down,
        })
        results["ledger"] = asyncio.run(fetch_rows(tier_db, "SELECT * FROM consent_event"))
        results["attempts"] = asyncio.run(fetch_rows(tier_db, "SELECT * FROM consent_attempt"))
        results["main_log"] = consent_service.log.read_text()
        yield results
    finally:
        for s in own:
            s.kill()
        pg.destroy()


def _numbers(rows: list[dict[str, Any]], number: str) -> list[dict[str, Any]]:
    return [r for r in rows if r["number_e164"] == number]


def _apologised_by_the_dialplan(rec: CallRecord) -> None:
    """Ended in consent-fallback, which said the error prompt ("nothing recorded")."""
    assert rec.contexts()[-1] == "consent-fallback", rec.summary()
    assert rec.playbacks() == ["consent-ivr/error"], rec.summary()
    assert rec.last("CONSENT_RESULT") not in {"opted_in", "opted_out"}


def test_server_not_listening(failures: dict[str, Any]) -> None:
    rec: CallRecord = outcome(failures, "not_listening")
    assert rec.last("AGISTATUS") == "FAILURE"
    assert rec.contexts() == FALLBACK
    _apologised_by_the_dialplan(rec)
    assert not _numbers(failures["ledger"], "+447400200001")


def test_wrong_token_is_refused_before_any_flow(failures: dict[str, Any]) -> None:
    rec: CallRecord = outcome(failures, "wrong_token")
    assert rec.contexts() == FALLBACK
    _apologised_by_the_dialplan(rec)
    assert rec.agi == []  # the server sent not one command
    assert not _numbers(failures["ledger"], "+447400200002")
    assert not _numbers(failures["attempts"], "+447400200002")
    assert '"reason": "bad_token"' in failures["main_log"]
    assert "not-the-token" not in failures["main_log"]


def test_server_killed_mid_question(failures: dict[str, Any]) -> None:
    got = outcome(failures, "killed")
    rec: CallRecord = got["rec"]
    assert rec.last("CONSENT_RESULT") == "error"  # the safe value, set first
    assert rec.last("AGISTATUS") == "SUCCESS"  # Asterisk cannot tell: the kit must
    assert rec.contexts() == FALLBACK
    _apologised_by_the_dialplan(rec)
    assert got["events_before"] == []
    [attempt] = got["attempts"]  # filed by the same instance when it came back
    assert (attempt["outcome"], attempt["reason"]) == ("interrupted", "server_stopped_mid_call")
    assert "calls_interrupted_found" in got["log"]
    assert not _numbers(failures["ledger"], "+447400200003")


def test_server_drained_by_sigterm_mid_call(failures: dict[str, Any]) -> None:
    got = outcome(failures, "drained")
    rec: CallRecord = got["rec"]
    assert got["code"] == 0
    assert rec.last("CONSENT_RESULT") == "error"
    assert rec.contexts() == FALLBACK
    _apologised_by_the_dialplan(rec)
    [attempt] = got["attempts"]
    assert (attempt["outcome"], attempt["reason"]) == ("interrupted", "cut_short_by_drain")
    assert not _numbers(failures["ledger"], "+447400200004")


def test_database_stopped_mid_call(failures: dict[str, Any]) -> None:
    got = outcome(failures, "database_stopped")
    decided: CallRecord = got["decided"]
    # the opt-out was journaled (durable) before the caller heard it was recorded
    assert decided.last("CONSENT_RESULT") == "opted_out", decided.summary()
    assert decided.last("CONSENT_EVENT_ID") == ""  # no ledger id yet: journaled
    assert decided.contexts() == KIT
    assert "decision_journaled" in got["log"]
    # ...and replayed exactly once when the database came back
    [event] = got["events"]
    assert (event["number_e164"], event["decision"], event["source"]) == (
        "+447400200005", "opt_out", "journal")
    assert event["uniqueid"] == decided.uniqueids[decided.line_channel]
    assert got["chain_ok"]
    hung_up: CallRecord = got["hung_up"]
    assert hung_up.last("AGISTATUS") == "HANGUP"
    [attempt] = got["attempts"]  # the caller who hung up: an attempt, filed after restart
    assert (attempt["number_e164"], attempt["outcome"]) == ("+447400200006", "hangup")


def _gave_back(rec: CallRecord) -> None:
    """The caller was dialled back to the agent, who answered."""
    assert any(e.get("UserEvent") == "TestAgentAnswered" for e in rec.user_events), \
        rec.summary()


def test_transfer_gosub_returns_with_the_result(failures: dict[str, Any]) -> None:
    rec: CallRecord = outcome(failures, "transfer_gosub")
    returned = [e for e in rec.user_events if e.get("UserEvent") == "TestGosubReturned"]
    assert [e.get("Result") for e in returned] == ["opted_out"], rec.summary()
    _gave_back(rec)
    [event] = _numbers(failures["ledger"], "+447400200007")
    assert (event["decision"], event["method"]) == ("opt_out", "ivr_agent_transfer")
    assert [p["id"] for p in json.loads(event["prompts"])][:2] == ["transfer-intro", "identify"]


def test_blind_transfer_goes_back_to_consent_return_to(failures: dict[str, Any]) -> None:
    rec: CallRecord = outcome(failures, "transfer_blind_return_to")
    assert rec.contexts()[:3] == ["test-line", "test-transfer", "consent-transfer"]
    _gave_back(rec)
    [event] = _numbers(failures["ledger"], "+447400200008")
    assert event["method"] == "ivr_agent_transfer"


def test_blind_transfer_dials_the_transferring_device(failures: dict[str, Any]) -> None:
    rec: CallRecord = outcome(failures, "transfer_blind_agent")
    dials = [data for _ch, _ctx, _e, app, data in rec.steps if app == "Dial"]
    assert dials == ["PJSIP/agent-desk,60"], rec.summary()
    # no such device here: the caller is told goodbye, never left in silence
    assert rec.playbacks()[-1] == "consent-ivr/goodbye"


def test_transfer_with_the_server_down_still_returns_the_caller(
        failures: dict[str, Any]) -> None:
    rec: CallRecord = outcome(failures, "transfer_server_down")
    # the kit says nothing was recorded (the flow never spoke), then hands the caller back
    assert rec.playbacks()[:2] == ["consent-ivr/cancelled", "consent-ivr/transfer-return"], \
        rec.summary()
    _gave_back(rec)
    assert not _numbers(failures["ledger"], "+447400200010")


def test_no_failure_left_a_consent_it_should_not(failures: dict[str, Any]) -> None:
    """Across the whole batch, the only decisions stored are the callers' own."""
    numbers = sorted(e["number_e164"] for e in failures["ledger"])
    assert numbers == ["+447400200007", "+447400200008", "+447400200009"]
    assert TOKEN not in failures["main_log"]
