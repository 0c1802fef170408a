"""The campaign compliance report against known rows in the ledger tables.

Consent events go in through :class:`agi.ledger.ledger.Ledger` (so the hash chain triggers run);
campaign, contacts, gate decisions, plays and refusals are inserted directly with known
values, and every figure of the report is compared with them. The HTML page is rendered
by headless Chromium to a PNG that must not be blank.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import struct
import subprocess
import zlib
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import asyncpg
import pytest

from agi.cli.main import main
from agi.ledger.ledger import Ledger
from agi.ledger.records import ConsentDecision
from agi.reports.campaign import build_report, render_html

LONDON = ZoneInfo("Europe/London")
ORG = "Example Energy Ltd"
N = [f"+4474001000{i:02d}" for i in range(1, 7)]  # N[0] .. N[5]


@pytest.fixture
async def tables(pool: asyncpg.Pool) -> None:
    # the campaign tables (migration 010) must exist: a missing one is a failure, not a skip
    assert await pool.fetchval("SELECT to_regclass('marketing_play') IS NOT NULL")


def _at(day: date, hh: int, mm: int = 0) -> datetime:
    return datetime.combine(day, time(hh, mm), LONDON)


async def _consent(ledger: Ledger, number: str, decision: str, key: str) -> int:
    event_id, _ = await ledger.record_decision(ConsentDecision(
        number_e164=number, organisation=ORG, purpose="marketing-calls", decision=decision,
        method="ivr_inbound", evidence_strength="caller_id",
        decided_at=datetime.now(UTC) - timedelta(minutes=5), idempotency_key=key,
        instance="test", uniqueid=f"u-{key}", channel_name="PJSIP/6001-1",
        callerid_num=number, call_started_at=datetime.now(UTC) - timedelta(minutes=6),
    ))
    return event_id


@dataclass
class Seeded:
    campaign_id: int
    events: dict[str, int]
    day1: date
    day2: date


async def _seed(pool: asyncpg.Pool, ledger: Ledger, name: str, *, late_call: bool = False,
                unverified_play: bool = False) -> Seeded:
    """Two days of a campaign with known outcomes (see the assertions for the numbers)."""
    # Plays must come after the consent the ledger records now, so the days are in the future.
    today = datetime.now(LONDON).date()
    day1, day2 = today + timedelta(days=1), today + timedelta(days=2)
    events = {
        n: await _consent(ledger, n, "opt_in", f"{name}-{n}") for n in N[:3]
    }
    events[N[3]] = await _consent(ledger, N[3], "opt_out", f"{name}-{N[3]}")
    cid = await pool.fetchval(
        """INSERT INTO campaign (name, organisation, purpose, profile, audio_prompt,
               window_start, window_end, caller_id, dial_template, pacing_cps, max_concurrent,
               max_attempts, retry_spacing, ring_seconds, created_at)
           VALUES ($1, $2, 'marketing-calls', 'uk-pecr', 'offer', '09:00', '20:00',
                   '+441234567890', 'PJSIP/{number}@trunk', 1, 2, 3, '1 hour', 25, $3)
           RETURNING id""", name, ORG, _at(day1, 8))
    contact = {}
    for n in N:
        contact[n] = await pool.fetchval(
            "INSERT INTO contact (campaign_id, number_e164, time_zones) "
            "VALUES ($1, $2, '{Europe/London}') RETURNING id", cid, n)

    async def attempt(n: str, at: datetime, allowed: bool, reason: str, answered: bool) -> int:
        return int(await pool.fetchval(
            """INSERT INTO dial_attempt (campaign_id, contact_id, number_e164, attempt_no,
                   decided_at, allowed, reason, rule, worker, state, action_id, answered_at,
                   consent_event_id)
               VALUES ($1, $2, $3, 1, $4, $5, $6, 'test rule', 'w1', $7, $8, $9, $10)
               RETURNING id""",
            cid, contact[n], n, at, allowed, reason,
            ("completed" if answered else "failed") if allowed else "refused",
            f"{name}-{n}-{at:%d%H%M}" if allowed else None,
            at + timedelta(seconds=20) if answered else None, events.get(n) if allowed else None,
        ))

    async def play(n: str, attempt_id: int, at: datetime, status: str, event: int,
                   verified: bool = True) -> None:
        await pool.execute(
            """INSERT INTO marketing_play (campaign_id, dial_attempt_id, number_e164,
                   consent_event_id, consent_verified, call_started_at, started_at, ended_at,
                   status, audio_prompt, instance, idempotency_key)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'offer', 'test', $10)""",
            cid, attempt_id, n, event, verified, at, at + timedelta(seconds=25),
            at + timedelta(seconds=60), status, f"{name}-{n}-{at:%d%H%M}-play")

    # day 1: two calls played (one opted out during it), two refused by the gate
    a = await attempt(N[0], _at(day1, 10, 0), True, "allowed", True)
    await play(N[0], a, _at(day1, 10, 0), "completed", events[N[0]])
    a = await attempt(N[1], _at(day1, 10, 5), True, "allowed", True)
    await play(N[1], a, _at(day1, 10, 5), "opted_out", events[N[1]])
    await attempt(N[3], _at(day1, 10, 10), False, "opted_out", False)
    await attempt(N[4], _at(day1, 10, 15), False, "no_consent", False)
    # day 2: one call played, one refused; a playback refusal
    hour = 22 if late_call else 11
    a = await attempt(N[2], _at(day2, hour, 30), True, "allowed", True)
    await play(N[2], a, _at(day2, hour, 30), "completed", events[N[2]])
    await attempt(N[5], _at(day2, 11, 40), False, "no_consent", False)
    await pool.execute(
        """INSERT INTO marketing_refused (recorded_at, campaign_id, number_e164, reason,
               instance, idempotency_key)
           VALUES ($1, $2, $3, 'no_consent', 'test', $4)""",
        _at(day2, 12), cid, N[5], f"{name}-refused-1")
    if unverified_play:  # N[5] never opted in: it plays on N[0]'s consent
        a = await attempt(N[5], _at(day2, 13), True, "allowed", True)
        await play(N[5], a, _at(day2, 13), "completed", events[N[0]], verified=False)
    return Seeded(cid, events, day1, day2)


async def test_report_numbers_match_the_ledger(
    tables: None, pool: asyncpg.Pool, ledger: Ledger
) -> None:
    s = await _seed(pool, ledger, "spring-offer")
    report = await build_report(pool, "spring-offer", period_from=s.day1, period_to=s.day2,
                                tz="Europe/London")
    by_day = {d.day: d for d in report.days}
    d1, d2 = by_day[s.day1], by_day[s.day2]
    assert (d1.contacts, d1.allowed, d1.dialled, d1.answered, d1.played, d1.opted_out,
            d1.refused) == (4, 2, 2, 2, 2, 1, 2)
    assert (d2.contacts, d2.allowed, d2.dialled, d2.answered, d2.played, d2.opted_out,
            d2.refused) == (2, 1, 1, 1, 1, 0, 1)
    assert report.contacts_on_list == 6
    assert report.gate_refusals == {"no_consent": 2, "opted_out": 1}
    assert report.playback_refusals == {"no_consent": 1}
    assert report.opt_out_rate == pytest.approx(1 / 3)
    assert report.calling_hours["dialled"] == 3 and report.calling_hours["outside"] == 0
    assert report.played_without_consent == 0
    assert report.chain["status"] == "verified"
    assert report.chain["checked"] == 4
    assert report.compliant

    # the same figures straight from the tables
    assert report.totals.played == await pool.fetchval(
        "SELECT count(*) FROM marketing_play WHERE campaign_id = $1 AND status <> 'blocked'",
        s.campaign_id)
    assert report.totals.refused == await pool.fetchval(
        "SELECT count(*) FROM dial_attempt WHERE campaign_id = $1 AND NOT allowed",
        s.campaign_id)
    assert report.totals.allowed == await pool.fetchval(
        "SELECT count(*) FROM dial_attempt WHERE campaign_id = $1 AND allowed", s.campaign_id)

    # a period that excludes day 2
    only1 = await build_report(pool, "spring-offer", period_from=s.day1, period_to=s.day1,
                               tz="Europe/London", verify_chain=False)
    assert [d.day for d in only1.days] == [s.day1]
    assert only1.playback_refusals == {}


async def test_report_finds_breaches(tables: None, pool: asyncpg.Pool, ledger: Ledger) -> None:
    s = await _seed(pool, ledger, "late-offer", late_call=True, unverified_play=True)
    # a superuser edits an event behind the append-only trigger's back
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SET LOCAL session_replication_role = replica")
        await conn.execute("UPDATE consent_event SET decision = 'opt_in' WHERE id = $1",
                           s.events[N[3]])
    report = await build_report(pool, "late-offer", period_from=s.day1, period_to=s.day2,
                                tz="Europe/London")
    assert report.played_without_consent == 1
    assert report.played_without_consent_detail["flagged_unverified_at_play_time"] == 1
    assert report.played_without_consent_detail["failed_independent_recheck"] == 1
    assert report.calling_hours == {"dialled": 4, "outside": 1, "statutory_window": None,
                                    "campaign_window": "09:00-20:00"}
    assert report.campaign["status"] == "halted"  # the circuit breaker fired
    assert report.chain["status"] == "broken"
    assert report.chain["first_break"]["id"] == s.events[N[3]]
    assert not report.compliant
    page = render_html(report)
    assert "BROKEN at event" in page and "Halted" in page


async def test_report_command_json_and_html(
    tables: None, pool: asyncpg.Pool, ledger: Ledger, db_url: str, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    s = await _seed(pool, ledger, "summer-offer")
    monkeypatch.setenv("DATABASE_URL", db_url)
    html_file = tmp_path / "report.html"
    args = ["report", "summer-offer", "--from", s.day1.isoformat(), "--to", s.day2.isoformat(),
            "--tz", "Europe/London", "--html", str(html_file), "--json"]
    code = await asyncio.to_thread(main, args)
    assert code == 0
    data = json.loads(capsys.readouterr().out)
    assert data["totals"]["played"] == 3 and data["totals"]["opted_out"] == 1
    assert data["marketing_played_without_consent"] == 0
    assert data["ledger_chain"]["status"] == "verified"
    assert [d["day"] for d in data["funnel_by_day"]] == [s.day1.isoformat(), s.day2.isoformat()]
    page = html_file.read_text()
    _assert_self_contained(page)
    assert page.count("<svg") == 4  # funnel, funnel per day, two refusal charts
    assert await asyncio.to_thread(main, ["report", "no-such-campaign"]) == 2

    png = tmp_path / "report.png"
    await asyncio.to_thread(_screenshot, html_file, png, tmp_path / "chromium-profile")
    width, height, colours, ink = _png_stats(png.read_bytes())
    assert (width, height) == (1200, 1600)
    assert colours >= 20, f"only {colours} colours: the page rendered blank"
    assert ink >= 0.03, f"only {ink:.1%} of the page differs from the background"
    shutil.copy(png, Path("/tmp/consent-ivr-report.png"))  # for a human to look at


def _assert_self_contained(page: str) -> None:
    assert page.startswith("<!DOCTYPE html>")
    for forbidden in ("<script", "<link", "<img", "@import", "url("):
        assert forbidden not in page
    urls = set(re.findall(r"https?://[^\s\"'<>]+", page))
    assert urls <= {"http://www.w3.org/2000/svg"}, urls


# --------------------------------------------------------------------------- Chromium


def _chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    apt = shutil.which("apt-get")
    if apt is None:
        pytest.skip("chromium is not installed and apt-get is not available to install it")
    try:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run([apt, "update"], check=True, capture_output=True, timeout=600, env=env)
        subprocess.run([apt, "install", "-y", "--no-install-recommends", "chromium"],
                       check=True, capture_output=True, timeout=1200, env=env)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, PermissionError) as exc:
        pytest.skip(f"chromium is not installed and could not be installed with apt-get: {exc}")
    path = shutil.which("chromium")
    if path is None:
        pytest.skip("apt-get install chromium succeeded but no chromium binary is on PATH")
    return path


def _screenshot(page: Path, png: Path, profile: Path) -> None:
    subprocess.run(
        [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", f"--user-data-dir={profile}", f"--screenshot={png}",
         "--window-size=1200,1600", page.resolve().as_uri()],
        check=True, capture_output=True, timeout=180,
    )
    assert png.is_file() and png.stat().st_size > 0


def _png_stats(data: bytes) -> tuple[int, int, int, float]:
    """(width, height, distinct colours, share of pixels unlike the top-left one)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width = 8, b"", 0
    height = depth = ctype = 0
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, ctype = struct.unpack(">IIBB", body[:10])
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    assert depth == 8 and ctype in (2, 6), (depth, ctype)
    bpp = 3 if ctype == 2 else 4
    raw = zlib.decompress(idat)
    stride = width * bpp
    prev = bytearray(stride)
    colours: set[bytes] = set()
    background: bytes | None = None
    ink = 0
    for y in range(height):
        ftype = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        if ftype == 1:
            for i in range(bpp, stride):
                line[i] = (line[i] + line[i - bpp]) & 0xFF
        elif ftype == 2:
            for i in range(stride):
                line[i] = (line[i] + prev[i]) & 0xFF
        elif ftype == 3:
            for i in range(stride):
                left = line[i - bpp] if i >= bpp else 0
                line[i] = (line[i] + ((left + prev[i]) >> 1)) & 0xFF
        elif ftype == 4:
            for i in range(stride):
                a = line[i - bpp] if i >= bpp else 0
                b = prev[i]
                c = prev[i - bpp] if i >= bpp else 0
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                line[i] = (line[i] + pred) & 0xFF
        row = bytes(line)
        if background is None:
            background = row[:3]
        for x in range(0, stride, bpp * 2):  # every other pixel is plenty
            px = row[x:x + 3]
            colours.add(px)
            if px != background:
                ink += 1
        prev = line
    return width, height, len(colours), ink / (height * ((width + 1) // 2))
