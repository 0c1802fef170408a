"""``consent-ivr evidence NUMBER``: everything about one number, with a checkable chain proof."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
import structlog

from agi.cli.main import main
from agi.ledger.chain import GENESIS, canonical
from agi.ledger.evidence import build_evidence, render_text
from agi.ledger.ledger import Ledger
from agi.ledger.records import AttemptRecord, ConsentDecision, DigitPress, PromptHeard

NUMBER = "+442079460018"
T0 = datetime(2025, 5, 1, 9, 0, tzinfo=UTC)


def decision(i: int, kind: str, number: str = NUMBER) -> ConsentDecision:
    return ConsentDecision(
        number_e164=number, organisation="Example Energy Ltd", purpose="marketing-calls",
        decision=kind, method="ivr_inbound", evidence_strength="caller_id",
        decided_at=T0 + timedelta(days=i), idempotency_key=f"17000.{i}|PJSIP/a-{i}|decision",
        instance="srv-1", uniqueid=f"17000.{i}", linkedid=f"17000.{i}",
        channel_name=f"PJSIP/a-{i}", callerid_num="02079460018", callerid_name="Jane\nDoe",
        call_started_at=T0 + timedelta(days=i, seconds=-20),
        digits=(DigitPress("question", "1", 5230), DigitPress("confirm", "1", 9100)),
        prompts=(PromptHeard("identify", "en", "a" * 64, "This is Example Energy."),
                 PromptHeard("question-marketing-calls", "en", "b" * 64, "May we call?",
                             interrupted=True)),
    )


async def seed(ledger: Ledger, pool: Any) -> None:
    await ledger.record_decision(decision(0, "opt_in", "+442079460019"))  # someone else
    await ledger.record_decision(decision(1, "opt_in"))
    await ledger.record_decision(decision(2, "opt_out"))
    await ledger.record_attempt(AttemptRecord(
        route="consent", outcome="hangup", reason="caller_hung_up",
        idempotency_key="17000.9|PJSIP/a-9|attempt", instance="srv-1", number_e164=NUMBER,
        uniqueid="17000.9", channel_name="PJSIP/a-9", ended_at=T0))
    await pool.execute(
        """INSERT INTO call_session (call_id, instance, boot_id, route, state, outcome, uniqueid,
               channel_name, number_e164, started_at)
           VALUES ('17000.2', 'srv-1', gen_random_uuid(), 'consent', 'finished', 'opted_out',
                   '17000.2', 'PJSIP/a-2', $1, $2)""", NUMBER, T0)


async def test_evidence_document(ledger: Ledger, pool: Any) -> None:
    await seed(ledger, pool)
    ev = await build_evidence(pool, NUMBER)
    assert ev["format"] == "consent-ivr.evidence.v1" and ev["number"] == NUMBER
    assert [e["decision"] for e in ev["events"]] == ["opt_in", "opt_out"]
    assert ev["state"] == [{"organisation": "Example Energy Ltd", "purpose": "marketing-calls",
                            "channel": "automated_call", "state": "opted_out",
                            "event_id": ev["events"][1]["id"],
                            "decided_at": ev["events"][1]["decided_at"]}]
    first = ev["events"][0]
    assert [p["id"] for p in first["prompts"]] == ["identify", "question-marketing-calls"]
    assert first["prompts"][0]["text"] == "This is Example Energy."
    assert first["prompts"][0]["sha256"] == "a" * 64
    assert first["digits"][1] == {"step": "confirm", "digit": "1", "offset_ms": 9100,
                                  "ignored": False}
    assert [a["reason"] for a in ev["attempts"]] == ["caller_hung_up"]
    assert ev["call_sessions"][0]["outcome"] == "opted_out"
    assert ev["call_ids"]["uniqueid"] == ["17000.1", "17000.2", "17000.9"]
    assert ev["chain"]["ok"] and ev["chain"]["checked"] == 3
    # the proof is checkable by hand from the document alone: sha256(prev || canonical)
    for e in ev["events"]:
        proof = e["chain"]
        assert proof["status"] == "verified" and proof["hash_recomputes"]
        assert proof["canonical"] == canonical(e)  # rebuilt from the exported fields
        digest = hashlib.sha256(bytes.fromhex(proof["prev_hash"]) + proof["canonical"].encode())
        assert digest.hexdigest() == proof["hash"]
    assert ev["events"][0]["chain"]["prev_hash"] != GENESIS.hex()  # someone else's came first
    json.dumps(ev)  # plain JSON, ready for an HTML renderer
    text = render_text(ev)
    assert "Ledger chain: intact, 3 event(s)" in text
    assert "marketing-calls (Example Energy Ltd, automated_call): opted_out" in text
    assert '"May we call?"' in text and "(interrupted)" in text
    assert "'Jane\\nDoe'" in text  # a caller-controlled newline cannot forge a line


async def test_evidence_shows_tampering(ledger: Ledger, pool: Any, db_url: str) -> None:
    await seed(ledger, pool)
    su = await asyncpg.connect(db_url)
    try:
        await su.execute("SET session_replication_role = replica")
        await su.execute("UPDATE consent_event SET decision = 'opt_in' WHERE uniqueid = '17000.2'")
    finally:
        await su.close()
    ev = await build_evidence(pool, NUMBER)
    assert [e["chain"]["status"] for e in ev["events"]] == ["verified", "broken"]
    assert ev["events"][1]["chain"]["hash_recomputes"] is False
    assert not ev["chain"]["ok"]
    assert "Ledger chain: BROKEN at event" in render_text(ev)


async def test_evidence_command(
    ledger: Ledger, pool: Any, db_url: str, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    await seed(ledger, pool)
    monkeypatch.setenv("DATABASE_URL", db_url)
    assert await asyncio.to_thread(main, ["evidence", "020 7946 0018", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["number"] == NUMBER and len(doc["events"]) == 2
    assert await asyncio.to_thread(main, ["evidence", "020 7946 0018"]) == 0
    assert "Event #" in capsys.readouterr().out
    assert await asyncio.to_thread(main, ["evidence", "not a number"]) == 2
    assert "not a valid phone number" in capsys.readouterr().err


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """main() points logging at the test's captured stderr; put it back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    structlog.reset_defaults()
    root.handlers[:] = handlers
    root.setLevel(level)
