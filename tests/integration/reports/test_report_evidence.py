"""``consent-ivr evidence-html``: the reliability export rendered as a page, in Chromium."""

from __future__ import annotations

import asyncio
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest

from agi.cli.main import main
from agi.ledger.ledger import Ledger
from agi.ledger.records import ConsentDecision, DigitPress, PromptHeard
from agi.reports.evidence_page import render_evidence_html
from tests.integration.reports.test_report import _assert_self_contained, _png_stats, _screenshot

NUMBER = "+447400123456"
HOSTILE = '<script>alert("x")</script> Jane & "JJ"'


async def test_evidence_page(
    pool: asyncpg.Pool, ledger: Ledger, db_url: str, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from agi.ledger import evidence
    t0 = datetime.now(UTC) - timedelta(days=2)
    for i, decision in enumerate(("opt_in", "opt_out")):
        await ledger.record_decision(ConsentDecision(
            number_e164=NUMBER, organisation="Example Energy Ltd", purpose="marketing-calls",
            decision=decision, method="ivr_inbound", evidence_strength="caller_id",
            decided_at=t0 + timedelta(hours=i), idempotency_key=f"ev-{i}", instance="test",
            digits=(DigitPress("question", "1" if i == 0 else "2", 5230),),
            prompts=(PromptHeard("identify", "en", "ab" * 32,
                                 "Hello. This is Example Energy Ltd."),),
            uniqueid=f"17000000{i}.1", linkedid=f"17000000{i}.0",
            channel_name="PJSIP/6001-00000001", callerid_num=NUMBER, callerid_name=HOSTILE,
        ))
    doc = await evidence.build_evidence(pool, NUMBER)
    page = render_evidence_html(doc)
    _assert_self_contained(page)
    assert "<script>alert" not in page and "&lt;script&gt;alert" in page
    assert "Hello. This is Example Energy Ltd." in page
    assert "opted_out" in page  # the latest decision wins
    assert "intact" in page

    monkeypatch.setenv("DATABASE_URL", db_url)
    out = tmp_path / "evidence.html"
    assert await asyncio.to_thread(main, ["evidence-html", "07400 123456", "--html", str(out)]) == 0
    written = out.read_text()
    assert "Consent evidence for +447400123456" in written and "&lt;script&gt;" in written
    png = tmp_path / "evidence.png"
    await asyncio.to_thread(_screenshot, out, png, tmp_path / "chromium-profile")
    _, _, colours, ink = _png_stats(png.read_bytes())
    assert colours >= 10 and ink >= 0.02
    shutil.copy(png, Path("/tmp/consent-ivr-evidence.png"))  # for a human to look at

