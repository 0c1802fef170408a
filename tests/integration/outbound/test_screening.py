"""``screen``: the gate over a whole list in one query, agreeing with the Python gate."""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest

from agi.cli.main import main
from agi.outbound.gate import decide_dial
from agi.outbound.stores import OutboundStores
from tests.campaign_helpers import consent, fresh_lists, make_campaign, window


async def cli(argv: list[str]) -> int:
    return await asyncio.to_thread(main, argv)


N = [f"+4474001236{i:02d}" for i in range(20)]


async def test_screen_matches_the_python_gate_number_by_number(
    pool: asyncpg.Pool, stores: OutboundStores, ledger
) -> None:
    c = await make_campaign(stores.campaigns, max_attempts=2, retry_spacing=timedelta(hours=1))
    await fresh_lists(stores.lists)
    await stores.lists.import_contacts(c, "\n".join(N[:12]) + "\n")
    await consent(ledger, N[0])                                   # allowed
    await consent(ledger, N[1]); await consent(ledger, N[1], "opt_out")  # noqa: E702
    await consent(ledger, N[2], consent_channel="live_call")              # wrong_channel
    await consent(ledger, N[3]); await stores.lists.import_suppression(  # noqa: E702
        "ctps", datetime.now(UTC).date(), [N[3]])                 # suppressed
    await consent(ledger, N[4]); await consent(  # noqa: E702
        ledger, N[4], "opt_out", method="ivr_outbound_opt_out")   # opted_out (+ DNC)
    await consent(ledger, N[5], purpose="other-offers")           # no_consent (other purpose)
    await consent(ledger, N[6]); await consent(  # noqa: E702
        ledger, N[6], "opt_out", purpose="other-offers")          # opted_out: any purpose
    await consent(ledger, N[7], organisation="Other Org")         # no_consent
    await consent(ledger, N[8], captured_by="third_party")        # allowed (fresh)
    await consent(ledger, N[9])                                   # attempts_exhausted
    await pool.execute("UPDATE contact SET attempts = 2, last_attempt_at = now() "
                             "- interval '2 hours' WHERE number_e164 = $1", N[9])
    await consent(ledger, N[10])                                  # retry_too_soon
    await pool.execute("UPDATE contact SET attempts = 1, last_attempt_at = now() "
                             "WHERE number_e164 = $1", N[10])
    # N[11]: nothing at all → no_consent
    at = datetime.now(UTC) + timedelta(minutes=1)
    rows = {r.number_e164: r async for r in stores.screening.screen_rows(c, at)}
    expected = {
        N[0]: "allowed", N[1]: "opted_out", N[2]: "wrong_channel", N[3]: "suppressed",
        N[4]: "do_not_call", N[5]: "no_consent", N[6]: "opted_out", N[7]: "no_consent",
        N[8]: "allowed", N[9]: "attempts_exhausted", N[10]: "retry_too_soon",
        N[11]: "no_consent",
    }
    assert {n: r.reason for n, r in rows.items()} == expected
    # the same decision as the dialer's gate, for every number
    snaps = await stores.lists.snapshots()
    for number in N[:12]:
        cid = await pool.fetchval("SELECT id FROM contact WHERE number_e164 = $1", number)
        async with pool.acquire() as conn:
            facts = await stores.screening.facts_for_contact(conn, c, cid, at)
        assert decide_dial(c, facts, snapshots=snaps, now=at).reason == expected[number], number
    assert await stores.screening.screen_counts(c, at) == {
        "allowed": 2, "opted_out": 2, "no_consent": 3, "wrong_channel": 1, "suppressed": 1,
        "do_not_call": 1, "attempts_exhausted": 1, "retry_too_soon": 1}
    # journal-only opt-outs count as do-not-call; a stale list refuses everyone
    assert (await stores.screening.screen_counts(c, at, [N[0]])).get("allowed") == 1
    await pool.execute("UPDATE suppression_snapshot SET as_of = as_of - 40 "
                             "WHERE list = 'tps'")
    assert await stores.screening.screen_counts(c, at) == {"stale_list": 12}


US = {
    "ny": "+12127365000",       # America/New_York
    "hi": "+18082345678",       # Pacific/Honolulu (no DST)
    "ak": "+19072345678",       # Adak and Anchorage: the most restrictive wins
}


@pytest.mark.parametrize(
    ("at", "allowed"),
    [
        # 2027-03-14: US DST starts at 02:00 local. 12:30Z is 08:30 EDT in New York...
        ("2027-03-14T12:30:00+00:00", {"ny"}),
        # ...but the day before it was 07:30 EST: too early
        ("2027-03-13T12:30:00+00:00", set()),
        # half-open window: 08:00:00 local allowed, 21:00:00 refused
        ("2027-03-15T12:00:00+00:00", {"ny"}),
        ("2027-03-16T01:00:00+00:00", {"hi", "ak"}),
        ("2027-03-16T00:59:59+00:00", {"ny", "hi", "ak"}),
        # 18:30Z: Honolulu 08:30; Anchorage 10:30 AKDT but Adak 09:30 HDT → all in
        ("2027-03-15T18:30:00+00:00", {"ny", "hi", "ak"}),
        # 17:30Z: Anchorage 09:30 AKDT, Adak 08:30 HDT, Honolulu 07:30 → Alaska only
        ("2027-03-15T17:30:00+00:00", {"ny", "ak"}),
        # 16:30Z: Anchorage 08:30, Adak 07:30 → refused (most restrictive zone)
        ("2027-03-15T16:30:00+00:00", {"ny"}),
    ],
)
async def test_us_calling_hours_in_the_callee_zone_across_dst(
    pool: asyncpg.Pool, stores: OutboundStores, ledger, at: str, allowed: set[str]
) -> None:
    c = await make_campaign(stores.campaigns, profile="us-tcpa", caller_id="+12127365001",
                            default_region="US")
    await stores.lists.import_contacts(c, "\n".join(US.values()) + "\n")
    for number in US.values():
        await consent(ledger, number)
    when = datetime.fromisoformat(at)
    await stores.lists.import_suppression("us-dnc", datetime.now(UTC).date(), [])
    await pool.execute("UPDATE suppression_snapshot SET as_of = $1", when.date())
    rows = {r.number_e164: r.reason async for r in stores.screening.screen_rows(c, when)}
    got = {k for k, n in US.items() if rows[n] == "allowed"}
    assert got == allowed
    assert {rows[n] for k, n in US.items() if k not in allowed} <= {"outside_hours"}


async def test_uk_campaign_window_across_bst(
    pool: asyncpg.Pool, stores: OutboundStores, ledger
) -> None:
    c = await make_campaign(stores.campaigns, window=window("09:00", "20:00"))
    await stores.lists.import_contacts(c, "02079460018\n")
    await consent(ledger, "+442079460018")
    for at, reason in [
        ("2027-03-27T08:30:00+00:00", "outside_hours"),  # GMT: 08:30
        ("2027-03-28T08:30:00+00:00", "allowed"),        # BST from 01:00Z: 09:30
        ("2027-10-31T19:30:00+00:00", "allowed"),        # back to GMT: 19:30
        ("2027-10-30T19:30:00+00:00", "outside_hours"),  # still BST: 20:30
    ]:
        when = datetime.fromisoformat(at)
        await pool.execute("DELETE FROM suppression_snapshot")
        await pool.execute(
            "INSERT INTO suppression_snapshot (list, as_of, current) VALUES "
            "('tps', $1, true), ('ctps', $1, true)", when.date())
        assert await stores.screening.screen_counts(c, when) == {reason: 1}, at


async def test_cli_campaign_contacts_suppression_and_screen(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.setenv("DATABASE_URL", db_url)
    monkeypatch.setenv("CONSENT_IVR_JOURNAL_DIR", str(tmp_path / "journal"))
    assert await cli(["campaign", "create", "spring", "--caller-id", "+442079460000",
                 "--dial", "PJSIP/{number}@trunk", "--window", "09:00-20:00"]) == 0
    assert await cli(["campaign", "create", "bad", "--caller-id", "+449098790000",
                 "--dial", "PJSIP/{number}@trunk"]) == 2
    assert "caller ID" in capsys.readouterr().err
    contacts = tmp_path / "c.csv"
    contacts.write_text("phone\n07400123456\nnope\n07400123457\n07400123456\n")
    assert await cli(["contacts", "import", "spring", str(contacts)]) == 1
    out = capsys.readouterr()
    assert "line 3: rejected: not a valid phone number" in out.err
    assert "line 5: duplicate: duplicate of line 2" in out.err
    assert "4 rows: 2 added, 0 already in the campaign, 1 duplicates in the file, 1 rejected" \
        in out.out
    lists = tmp_path / "tps.txt"
    lists.write_text("7400123457\n")
    today = date.today().isoformat()
    for name in ("tps", "ctps"):
        assert await cli(["suppression", "import", "--list", name, "--as-of", today,
                     str(lists)]) == 0
    assert "tps snapshot" in capsys.readouterr().out
    assert await cli(["screen", "spring", "--csv", "--at", "2030-01-02T12:00:00Z"]) == 0
    out = capsys.readouterr()
    assert out.out.splitlines() == [
        "number,outcome,reason,consent_event_id,state",
        "+447400123456,refused,stale_list,,ready",
        "+447400123457,refused,stale_list,,ready",
    ]
    now = datetime.now(UTC).replace(hour=12, minute=0).isoformat()
    assert await cli(["screen", "spring", "--at", now]) == 0
    out = capsys.readouterr().out
    assert "2 numbers, 0 could be called lawfully now" in out
    assert "no_consent" in out and "suppressed" in out
    assert await cli(["campaign", "show", "spring", "--json"]) == 0
    assert '"unconsented_plays": 0' in capsys.readouterr().out
