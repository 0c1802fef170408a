"""``consent-ivr keys``, ``receipt`` and ``receipt verify`` against the real ledger.

Decisions are written through the ledger API (as tests/integration/ledger/test_evidence.py
does), and one comes from a real call through the consent flow. ``receipt verify`` runs with no
database at all.
"""

from __future__ import annotations

import asyncio
import base64
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest

from agi.cli.main import main
from agi.ledger.ledger import Ledger
from agi.ledger.records import ConsentDecision, DigitPress, PromptHeard
from agi.ops.config import Settings
from tests.fakes import SILENCE, FakeAsterisk
from tests.harness import consent_stack, running_server

NUMBER = "+442079460018"
T0 = datetime(2025, 5, 1, 9, 0, tzinfo=UTC)


def decision(i: int, kind: str) -> ConsentDecision:
    return ConsentDecision(
        number_e164=NUMBER, organisation="Example Energy Ltd", purpose="marketing-calls",
        decision=kind, method="ivr_inbound", evidence_strength="caller_id",
        decided_at=T0 + timedelta(days=i), idempotency_key=f"18000.{i}|PJSIP/r-{i}|decision",
        instance="srv-1", uniqueid=f"18000.{i}", linkedid=f"18000.{i}",
        channel_name=f"PJSIP/r-{i}", callerid_num="02079460018", callerid_name="Jane Doe",
        call_started_at=T0 + timedelta(days=i, seconds=-30),
        digits=(DigitPress("question", "1", 5230), DigitPress("statement", "1", 6000, True),
                DigitPress("confirm", "1", 21000)),
        prompts=(PromptHeard("identify", "en", "a" * 64, "This is Example Energy Ltd.",
                             heard_ms=3100, length_ms=3100),
                 PromptHeard("statement-marketing-calls", "en", "b" * 64,
                             "We will call you about offers.", heard_ms=9000, length_ms=9000)),
    )


async def run(*argv: str) -> int:
    return await asyncio.to_thread(main, list(argv))


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, db_url: str) -> Path:
    """A data home whose ledger is the test's database; keys go in ``home/keys``."""
    monkeypatch.setenv("CONSENT_IVR_DATA_DIR", str(tmp_path / "home"))
    monkeypatch.setenv("DATABASE_URL", db_url)
    return tmp_path / "home"


def kid_of_receipt(path: Path) -> str:
    protected = json.loads(path.read_text())["signatures"][0]["protected"]
    return str(json.loads(base64.urlsafe_b64decode(protected + "=="))["kid"])


async def test_receipt_of_an_event_verifies_offline_and_tampering_fails(
    ledger: Ledger, home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    first, _ = await ledger.record_decision(decision(1, "opt_in"))
    second, _ = await ledger.record_decision(decision(2, "opt_out"))
    assert await run("receipt", str(first)) == 2  # no key yet: says how to make one
    assert "consent-ivr keys create" in capsys.readouterr().err
    assert await run("keys", "create") == 0
    out = capsys.readouterr().out
    assert out.startswith("created signing key ") and str(home / "keys") in out

    receipt = tmp_path / "r.vcon.json"
    assert await run("receipt", f"#{second}", "--out", str(receipt)) == 0
    assert f"receipt for event #{second} written to {receipt}" in capsys.readouterr().err
    doc = json.loads(receipt.read_text())
    payload = json.loads(base64.urlsafe_b64decode(doc["payload"] + "=="))
    att = payload["attachments"]
    assert [a["consents"][0]["status"] for a in att] == ["revoked"]  # withdrew event `first`
    assert att[0]["supersedes"]["event_id"] == first
    assert att[0]["proof"][1]["value"]["chain_head"]["last_id"] == second

    # offline: no database, an empty data home; nothing is created
    nowhere = tmp_path / "empty-home"
    monkeypatch.delenv("DATABASE_URL")
    monkeypatch.setenv("CONSENT_IVR_DATA_DIR", str(nowhere))
    assert await run("receipt", "verify", str(receipt), "--public-key",
                     str(home / "keys" / f"{kid_of_receipt(receipt)}.pub")) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"receipt {receipt}: VALID\n") and "✓ content:" in out
    assert f"event #{second}: revoked for marketing-calls" in out
    assert not nowhere.exists()
    # without the key: fails, naming the key it needs
    assert await run("receipt", "verify", str(receipt)) == 1
    assert f"✗ key: the receipt names key '{kid_of_receipt(receipt)}', which is not known" in (
        capsys.readouterr().out)
    assert await run("receipt", "verify", str(receipt), "--keys-dir", str(home / "keys")) == 0
    capsys.readouterr()

    payload["attachments"][0]["consents"][0]["status"] = "granted"
    doc["payload"] = base64.urlsafe_b64encode(
        json.dumps(payload).encode()).rstrip(b"=").decode()
    tampered = tmp_path / "tampered.json"
    tampered.write_text(json.dumps(doc))
    assert await run("receipt", "verify", str(tampered), "--keys-dir", str(home / "keys")) == 1
    out = capsys.readouterr().out
    assert out.startswith(f"receipt {tampered}: INVALID\n")
    assert ("the payload was edited: attachments[0].consents[0].status is \"granted\", the "
            "ledger record gives \"revoked\"") in out
    assert await run("receipt", "verify", str(tmp_path / "missing.json")) == 2
    assert "cannot read" in capsys.readouterr().err


async def test_receipt_of_a_number_holds_every_decision(
    ledger: Ledger, home: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    await ledger.record_decision(decision(1, "opt_in"))
    await ledger.record_decision(decision(2, "opt_out"))
    assert await run("keys", "create") == 0
    capsys.readouterr()
    assert await run("receipt", "020 7946 0018") == 0
    doc = json.loads(capsys.readouterr().out)
    payload = json.loads(base64.urlsafe_b64decode(doc["payload"] + "=="))
    assert payload["parties"][0]["tel"] == f"tel:{NUMBER}"
    assert [a["consents"][0]["status"] for a in payload["attachments"]] == ["granted", "revoked"]
    assert [d["consent_ivr"]["keys"][1]["ignored"] for d in payload["dialog"]] == [True, True]
    assert await run("receipt", "999") == 2
    assert "no consent event 999 in the ledger" in capsys.readouterr().err
    assert await run("receipt", "not a number") == 2
    assert "neither an event id nor a valid phone number" in capsys.readouterr().err


async def test_no_receipt_is_signed_for_an_event_edited_behind_the_ledger(
    ledger: Ledger, home: Path, db_url: str, capsys: pytest.CaptureFixture[str],
) -> None:
    event, _ = await ledger.record_decision(decision(1, "opt_in"))
    assert await run("keys", "create") == 0
    su = await asyncpg.connect(db_url)
    try:
        await su.execute("SET session_replication_role = replica")
        await su.execute("UPDATE consent_event SET purpose = 'all' WHERE id = $1", event)
    finally:
        await su.close()
    assert await run("receipt", str(event)) == 2
    assert f"event {event} fails the ledger's hash chain" in capsys.readouterr().err


async def test_keys_rotate_and_show_and_old_receipts_still_verify(
    ledger: Ledger, home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    event, _ = await ledger.record_decision(decision(1, "opt_in"))
    assert await run("keys", "create") == 0
    assert await run("keys", "create") == 2
    assert "keys rotate" in capsys.readouterr().err
    old = tmp_path / "old.json"
    assert await run("receipt", str(event), "--out", str(old)) == 0
    assert await run("keys", "rotate") == 0
    out = capsys.readouterr().out
    assert f"key {kid_of_receipt(old)} retired" in out
    new = tmp_path / "new.json"
    assert await run("receipt", str(event), "--out", str(new)) == 0
    assert kid_of_receipt(new) != kid_of_receipt(old)
    assert await run("keys", "show") == 0
    shown = capsys.readouterr().out
    assert f"active key {kid_of_receipt(new)}" in shown
    assert f"retired key {kid_of_receipt(old)}" in shown and "no private key" in shown
    assert shown.count("-----BEGIN PUBLIC KEY-----") == 2
    for receipt in (old, new):
        assert await run("receipt", "verify", str(receipt)) == 0, capsys.readouterr().out


async def test_evidence_html_embeds_the_receipt_and_its_verification(
    ledger: Ledger, home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    await ledger.record_decision(decision(1, "opt_in"))
    page = tmp_path / "e.html"
    assert await run("evidence-html", NUMBER, "--html", str(page)) == 0
    assert "No receipt: no signing key in" in page.read_text()
    assert await run("keys", "create") == 0
    receipt = tmp_path / "embedded.json"
    assert await run("evidence-html", NUMBER, "--html", str(page), "--receipt",
                     str(receipt)) == 0
    html = page.read_text()
    assert "Signed consent receipt (vCon)" in html
    assert '<span class="card-inline ok">verifies</span>' in html
    assert "receipt (embedded): VALID" in html and "&quot;payload&quot;" in html
    capsys.readouterr()
    assert await run("receipt", "verify", str(receipt)) == 0
    assert "VALID" in capsys.readouterr().out


@pytest.fixture(autouse=True)
def _no_logs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONSENT_IVR_LOG_LEVEL", "warning")


async def test_a_real_call_s_receipt_says_the_statement_was_heard_in_full(
    settings: Settings, pool: asyncpg.Pool, home: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """End to end: the flow over FastAGI (the fake Asterisk), then the receipt of its event."""
    flow, _, _ = consent_stack(settings, pool)
    caller = "+447400123499"
    async with running_server(settings, {"consent": flow}) as srv:
        # 1 at the question, a 5 pressed into the statement (ignored), then the confirmation
        rec = await FakeAsterisk("127.0.0.1", srv.port, callerid=caller,
                                 presses=["1", "5", SILENCE, "1"]).run()
    assert rec.variables["CONSENT_RESULT"] == "opted_in", rec.dialogue()
    assert await run("keys", "create") == 0
    receipt = tmp_path / "call.vcon.json"
    assert await run("receipt", caller, "--out", str(receipt)) == 0
    capsys.readouterr()
    doc = json.loads(receipt.read_text())
    payload = json.loads(base64.urlsafe_b64decode(doc["payload"] + "=="))
    [summary] = [a for a in payload["analysis"] if a["type"] == "summary"]
    assert summary["body"]["statement_heard_in_full"] == "yes"
    assert summary["body"]["keys_ignored"] == ["5"]
    assert [p["id"] for p in summary["body"]["prompts"]] == [
        "identify", "question-marketing-calls", "statement-marketing-calls", "confirm-opt-in"]
    assert await run("receipt", "verify", str(receipt), "--keys-dir", str(home / "keys")) == 0
    assert capsys.readouterr().out.startswith(f"receipt {receipt}: VALID\n")
