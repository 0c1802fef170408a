"""Campaigns, contact import, suppression import and the claim transaction on real PostgreSQL."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import asyncpg
import pytest

from agi.outbound.campaigns import CampaignStore, parse_contacts_csv
from agi.outbound.model import CampaignError
from tests.campaign_helpers import consent, fresh_lists, make_campaign


@pytest.fixture
def store(pool: asyncpg.Pool) -> CampaignStore:
    return CampaignStore(pool, timeout=5.0)


async def test_create_show_and_reject_bad_campaigns(store: CampaignStore) -> None:
    c = await make_campaign(store)
    again = await store.get_campaign("winter")
    assert again is not None and again.id == c.id and again.dial_string("+447700900123") == (
        "PJSIP/+447700900123@trunk"
    )
    with pytest.raises(CampaignError, match="already exists"):
        await make_campaign(store)
    with pytest.raises(CampaignError, match="unknown policy profile"):
        await make_campaign(store, name="x1", profile="uk-lax")
    with pytest.raises(CampaignError, match="caller ID"):
        await make_campaign(store, name="x2", caller_id="+449098790000")  # premium rate
    with pytest.raises(CampaignError, match=r"\{number\}"):
        await make_campaign(store, name="x3", dial_template="PJSIP/trunk")
    with pytest.raises(CampaignError, match="ring time"):
        await make_campaign(store, name="x4", ring_seconds=10)
    assert [x.name for x in await store.list_campaigns()] == ["winter"]


CSV = """name,number
Alice,07400 123456
Bob,+44 20 7946 0018
Carol,not a number
,
Dan,07400123456
Eve,+1 212 555 010
Fay,0740012345
"""


async def test_contacts_import_reports_every_row_and_is_idempotent(store: CampaignStore) -> None:
    c = await make_campaign(store)
    report = await store.import_contacts(c, CSV, source="list.csv")
    assert report.added == 2  # Alice, Bob
    rejected = {(r.line, r.reason.split(" for")[0]) for r in report.rejected}
    assert (4, "not a valid phone number") in rejected
    assert (5, "empty row") in rejected
    assert (7, "not a valid phone number") in rejected  # one digit short
    assert (8, "not a valid phone number") in rejected  # one digit short
    assert len(report.rejected) == 4
    assert [(d.line, d.reason) for d in report.duplicates] == [
        (6, "duplicate of line 2 (+447400123456)")
    ]
    # every data line is accounted for: added + rejected + duplicates
    assert report.rows == 7 == report.added + len(report.rejected) + len(report.duplicates)
    rows = await store.pool.fetch(
        "SELECT number_e164, time_zones, source_line FROM contact ORDER BY source_line"
    )
    assert [(r["number_e164"], r["time_zones"], r["source_line"]) for r in rows] == [
        ("+447400123456", ["Europe/Guernsey", "Europe/Isle_of_Man", "Europe/Jersey",
                           "Europe/London"], 2),
        ("+442079460018", ["Europe/London"], 3),
    ]
    second = await store.import_contacts(c, CSV, source="list.csv")
    assert second.added == 0 and second.already_present == 2
    assert await store.pool.fetchval("SELECT count(*) FROM contact") == 2


def test_csv_without_header_uses_first_column() -> None:
    rows, report = parse_contacts_csv("07400123456\n07400123457,x\n", "GB")
    assert [r[0] for r in rows] == ["+447400123456", "+447400123457"]
    assert report.rejected == []




async def test_suppression_snapshot_replaces_the_previous_one(store: CampaignStore) -> None:
    today = datetime.now(UTC).date()
    first = await store.import_suppression(
        "tps", today - timedelta(days=3), ["number", "07700900123", "7700900124", "junk!"]
    )
    assert first.numbers == 2
    assert [(r.line, r.raw) for r in first.rejected] == [(4, "junk!")]
    assert await store.snapshots() == {"tps": today - timedelta(days=3)}
    second = await store.import_suppression("tps", today, ["07700900125"])
    assert second.replaced_snapshot == first.snapshot_id
    numbers = await store.pool.fetch("SELECT number_e164 FROM suppression_entry")
    assert [r["number_e164"] for r in numbers] == ["+447700900125"]
    assert await store.snapshots() == {"tps": today}
    with pytest.raises(CampaignError, match="future"):
        await store.import_suppression("tps", today + timedelta(days=2), [])
    with pytest.raises(CampaignError, match="unknown list"):
        await store.import_suppression("robinson", today, [])


async def test_claim_writes_a_dial_attempt_for_every_decision(store: CampaignStore, ledger) -> None:
    c = await make_campaign(store)
    await fresh_lists(store)
    await store.import_contacts(c, "number\n07400123401\n07400123402\n")
    await consent(ledger, "+447400123401")
    first = await store.claim_next(c.id, "w1", timedelta(minutes=5))
    second = await store.claim_next(c.id, "w1", timedelta(minutes=5))
    third = await store.claim_next(c.id, "w1", timedelta(minutes=5))
    assert first.kind == "dial" and first.job is not None
    assert first.job.number_e164 == "+447400123401" and first.job.attempt_no == 1
    assert first.job.dial_string == "PJSIP/+447400123401@trunk"
    assert second.kind == "refused" and second.decision is not None
    assert second.decision.reason == "no_consent"
    assert third.kind == "idle" and third.in_flight == 1
    rows = await store.pool.fetch(
        "SELECT number_e164, allowed, reason, state, action_id FROM dial_attempt ORDER BY id"
    )
    assert [tuple(r) for r in rows] == [
        ("+447400123401", True, "allowed", "originating", f"consent-{first.job.attempt_id}"),
        ("+447400123402", False, "no_consent", "refused", None),
    ]
    states = await store.pool.fetch("SELECT number_e164, state FROM contact ORDER BY id")
    assert [tuple(r) for r in states] == [("+447400123401", "dialling"),
                                          ("+447400123402", "refused")]
    # the route records an outcome, AMI reports the hang-up: the contact is done
    await store.set_attempt_result(first.job.attempt_id, "played")
    assert await store.finish_attempt(first.job.attempt_id, "completed", hangup_cause=16) == "done"
    # finishing twice changes nothing
    assert await store.finish_attempt(first.job.attempt_id, "failed") is None


async def test_stale_list_blocks_without_consuming_the_contact(
    store: CampaignStore, ledger
) -> None:
    c = await make_campaign(store)
    await fresh_lists(store, "tps", as_of=date.today() - timedelta(days=40))
    await fresh_lists(store, "ctps")
    await store.import_contacts(c, "07400123401\n")
    await consent(ledger, "+447400123401")
    claim = await store.claim_next(c.id, "w1", timedelta(minutes=5))
    assert claim.kind == "blocked" and claim.decision is not None
    assert claim.decision.reason == "stale_list" and "tps snapshot is" in claim.decision.detail
    row = await store.pool.fetchrow("SELECT state, attempts FROM contact")
    assert tuple(row) == ("ready", 0)
    assert await store.pool.fetchval(
        "SELECT count(*) FROM dial_attempt WHERE reason = 'stale_list' AND NOT allowed"
    ) == 1
    # a fresh snapshot lifts the block at once
    await fresh_lists(store, "tps")
    assert (await store.claim_next(c.id, "w1", timedelta(minutes=5))).kind == "dial"


async def test_lease_expiry_releases_the_contact_as_an_unknown_attempt(
    store: CampaignStore, ledger
) -> None:
    c = await make_campaign(store, max_attempts=2)
    await fresh_lists(store)
    await store.import_contacts(c, "07400123401\n")
    await consent(ledger, "+447400123401")
    claim = await store.claim_next(c.id, "dead-worker", timedelta(minutes=5))
    assert claim.job is not None
    assert await store.reap_expired() == 0  # lease still valid: nothing to reap
    await store.pool.execute(
        "UPDATE contact SET lease_expires_at = clock_timestamp() - interval '1 second'"
    )
    assert await store.reap_expired() == 1
    attempt = await store.pool.fetchrow("SELECT state FROM dial_attempt")
    contact = await store.pool.fetchrow("SELECT state, attempts, lease_owner FROM contact")
    assert attempt["state"] == "unknown"
    assert tuple(contact) == ("ready", 1, None)
    # the dead worker's late AMI events cannot resurrect the attempt
    assert await store.finish_attempt(claim.job.attempt_id, "completed") is None
    # another worker takes it as attempt 2, never as a re-send of attempt 1
    again = await store.claim_next(c.id, "w2", timedelta(minutes=5))
    assert again.job is not None and again.job.attempt_no == 2
    assert again.job.attempt_id != claim.job.attempt_id
    await store.finish_attempt(again.job.attempt_id, "failed", originate_reason=3)
    assert (await store.pool.fetchval("SELECT state FROM contact")) == "exhausted"
