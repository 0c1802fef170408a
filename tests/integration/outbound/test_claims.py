"""The claim transaction, the attempt's end, leases and the reaper (agi.outbound.claims)
on real PostgreSQL.
"""

from __future__ import annotations

from datetime import date, timedelta

import asyncpg

from agi.outbound.stores import OutboundStores
from tests.campaign_helpers import consent, fresh_lists, make_campaign


async def test_claim_writes_a_dial_attempt_for_every_decision(
    pool: asyncpg.Pool, stores: OutboundStores, ledger
) -> None:
    c = await make_campaign(stores.campaigns)
    await fresh_lists(stores.lists)
    await stores.lists.import_contacts(c, "number\n07400123401\n07400123402\n")
    await consent(ledger, "+447400123401")
    first = await stores.claims.claim_next(c.id, "w1", timedelta(minutes=5))
    second = await stores.claims.claim_next(c.id, "w1", timedelta(minutes=5))
    third = await stores.claims.claim_next(c.id, "w1", timedelta(minutes=5))
    assert first.kind == "dial" and first.job is not None
    assert first.job.number_e164 == "+447400123401" and first.job.attempt_no == 1
    assert first.job.dial_string == "PJSIP/+447400123401@trunk"
    assert second.kind == "refused" and second.decision is not None
    assert second.decision.reason == "no_consent"
    assert third.kind == "idle" and third.in_flight == 1
    rows = await pool.fetch(
        "SELECT number_e164, allowed, reason, state, action_id FROM dial_attempt ORDER BY id"
    )
    assert [tuple(r) for r in rows] == [
        ("+447400123401", True, "allowed", "originating", f"consent-{first.job.attempt_id}"),
        ("+447400123402", False, "no_consent", "refused", None),
    ]
    states = await pool.fetch("SELECT number_e164, state FROM contact ORDER BY id")
    assert [tuple(r) for r in states] == [("+447400123401", "dialling"),
                                          ("+447400123402", "refused")]
    # the route records an outcome, AMI reports the hang-up: the contact is done
    await stores.plays.set_attempt_result(first.job.attempt_id, "played")
    finished = await stores.claims.finish_attempt(
        first.job.attempt_id, "completed", hangup_cause=16
    )
    assert finished == "done"
    # finishing twice changes nothing
    assert await stores.claims.finish_attempt(first.job.attempt_id, "failed") is None


async def test_stale_list_blocks_without_consuming_the_contact(
    pool: asyncpg.Pool, stores: OutboundStores, ledger
) -> None:
    c = await make_campaign(stores.campaigns)
    await fresh_lists(stores.lists, "tps", as_of=date.today() - timedelta(days=40))
    await fresh_lists(stores.lists, "ctps")
    await stores.lists.import_contacts(c, "07400123401\n")
    await consent(ledger, "+447400123401")
    claim = await stores.claims.claim_next(c.id, "w1", timedelta(minutes=5))
    assert claim.kind == "blocked" and claim.decision is not None
    assert claim.decision.reason == "stale_list" and "tps snapshot is" in claim.decision.detail
    row = await pool.fetchrow("SELECT state, attempts FROM contact")
    assert tuple(row) == ("ready", 0)
    assert await pool.fetchval(
        "SELECT count(*) FROM dial_attempt WHERE reason = 'stale_list' AND NOT allowed"
    ) == 1
    # a fresh snapshot lifts the block at once
    await fresh_lists(stores.lists, "tps")
    assert (await stores.claims.claim_next(c.id, "w1", timedelta(minutes=5))).kind == "dial"


async def test_lease_expiry_releases_the_contact_as_an_unknown_attempt(
    pool: asyncpg.Pool, stores: OutboundStores, ledger
) -> None:
    c = await make_campaign(stores.campaigns, max_attempts=2)
    await fresh_lists(stores.lists)
    await stores.lists.import_contacts(c, "07400123401\n")
    await consent(ledger, "+447400123401")
    claim = await stores.claims.claim_next(c.id, "dead-worker", timedelta(minutes=5))
    assert claim.job is not None
    assert await stores.claims.reap_expired() == 0  # lease still valid: nothing to reap
    await pool.execute(
        "UPDATE contact SET lease_expires_at = clock_timestamp() - interval '1 second'"
    )
    assert await stores.claims.reap_expired() == 1
    attempt = await pool.fetchrow("SELECT state FROM dial_attempt")
    contact = await pool.fetchrow("SELECT state, attempts, lease_owner FROM contact")
    assert attempt["state"] == "unknown"
    assert tuple(contact) == ("ready", 1, None)
    # the dead worker's late AMI events cannot resurrect the attempt
    assert await stores.claims.finish_attempt(claim.job.attempt_id, "completed") is None
    # another worker takes it as attempt 2, never as a re-send of attempt 1
    again = await stores.claims.claim_next(c.id, "w2", timedelta(minutes=5))
    assert again.job is not None and again.job.attempt_no == 2
    assert again.job.attempt_id != claim.job.attempt_id
    await stores.claims.finish_attempt(again.job.attempt_id, "failed", originate_reason=3)
    assert (await pool.fetchval("SELECT state FROM contact")) == "exhausted"
