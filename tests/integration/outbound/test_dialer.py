"""The dialer against a fake AMI over real TCP (agi/testing/fake_ami.py) and real PostgreSQL."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import asyncpg
import pytest

from agi.outbound.ami import AmiClient, AmiError
from agi.outbound.dialer import Dialer, DialerConfig
from agi.outbound.model import Campaign
from agi.outbound.stores import OutboundStores
from agi.testing.fake_ami import FakeAMI
from tests.campaign_helpers import consent, fresh_lists, make_campaign

NUMBERS = [f"+4474001234{i:02d}" for i in range(1, 9)]


@pytest.fixture
async def ami() -> AsyncIterator[FakeAMI]:
    fake = await FakeAMI().start()
    yield fake
    await fake.close()


async def opted_in_campaign(stores: OutboundStores, ledger, numbers=NUMBERS, **kw) -> Campaign:
    c = await make_campaign(stores.campaigns, **kw)
    await fresh_lists(stores.lists)
    await stores.lists.import_contacts(c, "\n".join(numbers) + "\n")
    for n in numbers:
        await consent(ledger, n)
    return c


async def dialer_for(fake: FakeAMI, stores: OutboundStores, tmp_path: Path, worker: str = "w1",
                     **cfg) -> Dialer:
    client = AmiClient("127.0.0.1", fake.port, fake.username, fake.secret, reconnect_timeout=1)
    await client.connect(within=10)
    config = DialerConfig(worker=worker, journal_dir=tmp_path / "journal", poll_s=0.05, **cfg)
    return Dialer(stores.campaigns, stores.claims, client, config)


async def attempts(pool: asyncpg.Pool) -> list[tuple]:
    rows = await pool.fetch(
        "SELECT number_e164, attempt_no, allowed, reason, state FROM dial_attempt ORDER BY id")
    return [tuple(r) for r in rows]


async def test_dial_campaign_to_completion(
    pool: asyncpg.Pool, stores: OutboundStores, ledger, ami: FakeAMI, tmp_path: Path
) -> None:
    c = await opted_in_campaign(stores, ledger, NUMBERS[:3])
    await stores.lists.import_contacts(c, "07400123499\n")  # no consent
    ami.outcome = lambda n: "busy" if n == NUMBERS[1] else "answer"

    async def route(ch) -> None:  # what the marketing route records on an answered call
        await stores.plays.set_attempt_result(int(ch.variables["CONSENT_ATTEMPT"]), "played")

    ami.on_answer = route
    dialer = await dialer_for(ami, stores, tmp_path)
    try:
        assert await dialer.run_campaign(c.id) == "done"
    finally:
        await dialer.ami.close()
    # the Originate as it crossed the wire
    first = ami.originates[0].headers
    assert first["Action"] == "Originate" and first["Async"] == "true"
    assert (first["Context"], first["Exten"], first["Priority"]) == ("consent-outbound", "s", "1")
    assert first["Channel"] == f"PJSIP/{NUMBERS[0]}@trunk"
    assert first["CallerID"] == '"Example Energy Ltd" <+442079460000>'
    assert int(first["Timeout"]) >= 20000  # the profile's minimum ring time
    aid = first["ActionID"]
    assert first["ChannelId"] == aid and aid.startswith("consent-")
    assert sorted(first["Variable"]) == [f"CONSENT_ATTEMPT={aid.removeprefix('consent-')}",
                                         f"CONSENT_CAMPAIGN={c.id}"]
    # answered numbers dialled once; the busy one twice (max_attempts=2, no spacing) as two
    # separate attempts; the unconsented one never
    assert Counter(ami.numbers_originated()) == {NUMBERS[0]: 1, NUMBERS[1]: 2, NUMBERS[2]: 1}
    rows = await pool.fetch(
        """SELECT number_e164, state, reason, originate_reason, hangup_cause, result
           FROM dial_attempt ORDER BY id""")
    by_number = {r["number_e164"]: tuple(r)[1:] for r in rows}  # the latest per number
    assert by_number[NUMBERS[0]] == ("completed", "allowed", 4, 16, "played")
    assert by_number[NUMBERS[1]][0] == "failed" and by_number[NUMBERS[1]][3] == 17
    assert by_number["+447400123499"] == ("refused", "no_consent", None, None, None)
    contacts = dict(await pool.fetch("SELECT number_e164, state FROM contact"))
    assert contacts[NUMBERS[0]] == "done" and contacts["+447400123499"] == "refused"
    # busy twice (max_attempts=2, no spacing): exhausted, never a third call
    assert contacts[NUMBERS[1]] == "exhausted"
    busy = await pool.fetch(
        "SELECT attempt_no FROM dial_attempt WHERE number_e164 = $1 ORDER BY id", NUMBERS[1])
    assert [r["attempt_no"] for r in busy] == [1, 2]


async def test_two_workers_never_dial_a_number_twice(
    pool: asyncpg.Pool, stores: OutboundStores, ledger, ami: FakeAMI, tmp_path: Path
) -> None:
    numbers = [f"+4474001235{i:02d}" for i in range(40)]
    c = await opted_in_campaign(stores, ledger, numbers, max_attempts=1)
    d1 = await dialer_for(ami, stores, tmp_path, "w1")
    d2 = await dialer_for(ami, stores, tmp_path, "w2")
    try:
        results = await asyncio.gather(d1.run_campaign(c.id), d2.run_campaign(c.id))
    finally:
        await d1.ami.close()
        await d2.ami.close()
    assert results == ["done", "done"]
    dialled = Counter(ami.numbers_originated())
    assert sorted(dialled) == sorted(numbers)
    assert set(dialled.values()) == {1}
    workers = Counter(r["worker"] for r in await pool.fetch(
        "SELECT worker FROM dial_attempt WHERE allowed"))
    assert sum(workers.values()) == 40 and set(workers) <= {"w1", "w2"}
    assert len({o.headers["ActionID"] for o in ami.originates}) == 40


async def test_max_concurrent_and_pacing_limit_claims(
    pool: asyncpg.Pool, stores: OutboundStores, ledger, ami: FakeAMI, tmp_path: Path
) -> None:
    c = await opted_in_campaign(stores, ledger, NUMBERS[:4], max_concurrent=2, max_attempts=1)
    ami.hold = asyncio.Event()
    dialer = await dialer_for(ami, stores, tmp_path)
    run = asyncio.create_task(dialer.run_campaign(c.id))
    try:
        while len(ami.channels) < 2:
            ami.channels_changed.clear()
            await ami.channels_changed.wait()
        claim = await stores.claims.claim_next(c.id, "other", timedelta(minutes=1))
        assert claim.kind == "busy" and claim.in_flight == 2
        assert len(ami.originates) == 2
        ami.hold.set()
        assert await run == "done"
    finally:
        await dialer.ami.close()
    assert sorted(ami.numbers_originated()) == sorted(NUMBERS[:4])
    # pacing: one call per second leaves no token for an immediate second claim
    slow = await opted_in_campaign(stores, ledger, NUMBERS[4:6], name="slow", pacing_cps=1.0)
    await pool.execute("UPDATE campaign SET pace_tokens = 1 WHERE id = $1", slow.id)
    assert (await stores.claims.claim_next(slow.id, "w", timedelta(minutes=1))).kind == "dial"
    wait = await stores.claims.claim_next(slow.id, "w", timedelta(minutes=1))
    assert wait.kind == "wait" and 0 < wait.wait_s <= 1.0


@pytest.mark.parametrize("moment", ["calls_in_flight", "before_ack"])
async def test_ami_loss_mid_campaign_loses_and_repeats_nothing(
    pool: asyncpg.Pool, stores: OutboundStores, ledger, ami: FakeAMI, tmp_path: Path, moment: str
) -> None:
    # three calls at a time: exactly the three up when AMI drops are in flight. With more
    # slots a fourth Originate could be written as the connection died; Asterisk never
    # gets it, the dialer cannot know, and closes it as 'unknown' (never redialled, by
    # design: docs/campaigns.md, "AMI dropped") -- a race of the test's making
    c = await opted_in_campaign(stores, ledger, NUMBERS[:6], max_attempts=1, max_concurrent=3)
    ami.hold = asyncio.Event()  # answered calls stay up until released
    if moment == "before_ack":  # Asterisk got Originate 3 but the ack never reached us
        ami.drop_on_originate = {3: "before_ack"}
    dialer = await dialer_for(ami, stores, tmp_path, max_call_s=30)
    run = asyncio.create_task(dialer.run_campaign(c.id))
    try:
        while len(ami.channels) < 3:
            ami.channels_changed.clear()
            await ami.channels_changed.wait()
        if moment == "calls_in_flight":
            ami.drop()
        while ami.logins < 2:  # the dialer logs in again by itself
            await asyncio.sleep(0.05)
        ami.hold.set()
        assert await asyncio.wait_for(run, 30) == "done"
    finally:
        await dialer.ami.close()
    assert ami.logins >= 2
    dialled = Counter(ami.numbers_originated())
    assert sorted(dialled) == sorted(NUMBERS[:6]) and set(dialled.values()) == {1}
    states = Counter(r[4] for r in await attempts(pool))
    assert states == {"completed": 6}  # every call followed to its hang-up: none unknown
    assert set(dict(await pool.fetch("SELECT number_e164, state FROM contact")).values()) \
        == {"exhausted"}


async def test_originate_lost_in_transit_is_closed_unknown_and_retried_as_a_new_attempt(
    pool: asyncpg.Pool, stores: OutboundStores, ledger, ami: FakeAMI, tmp_path: Path
) -> None:
    c = await opted_in_campaign(stores, ledger, NUMBERS[:1], max_attempts=2)
    ami.drop_on_originate = {1: "lost"}
    dialer = await dialer_for(ami, stores, tmp_path)
    try:
        assert await asyncio.wait_for(dialer.run_campaign(c.id), 30) == "done"
    finally:
        await dialer.ami.close()
    assert [(a[1], a[4]) for a in await attempts(pool)] == [(1, "unknown"), (2, "completed")]
    ids = [o.headers["ActionID"] for o in ami.originates]
    assert len(ids) == 2 and len(set(ids)) == 2  # attempt 1 was never re-sent


async def test_stale_suppression_snapshot_stops_the_dial_command(
    pool: asyncpg.Pool, stores: OutboundStores, ledger, ami: FakeAMI, tmp_path: Path
) -> None:
    c = await opted_in_campaign(stores, ledger, NUMBERS[:2])
    from datetime import UTC, datetime

    await stores.lists.import_suppression("ctps", datetime.now(UTC).date() - timedelta(days=29), [])
    dialer = await dialer_for(ami, stores, tmp_path)
    try:
        why = await dialer.run_campaign(c.id)
    finally:
        await dialer.ami.close()
    assert why.startswith("blocked: stale_list") and "ctps" in why
    assert ami.originates == []
    assert [a[3] for a in await attempts(pool)] == ["stale_list"]
    assert {r["state"] for r in await pool.fetch("SELECT state FROM contact")} == {"ready"}


async def test_journal_only_opt_out_blocks_the_next_claim(
    pool: asyncpg.Pool, stores: OutboundStores, ledger, ami: FakeAMI, tmp_path: Path
) -> None:
    from datetime import UTC, datetime

    from agi.ledger.journal import Journal
    from agi.ledger.records import ConsentDecision

    c = await opted_in_campaign(stores, ledger, NUMBERS[:2], max_attempts=1)
    Journal(tmp_path / "journal").append("decision", ConsentDecision(
        number_e164=NUMBERS[0], organisation=c.organisation, purpose=c.purpose,
        decision="opt_out", method="ivr_inbound", evidence_strength="caller_id",
        decided_at=datetime.now(UTC), idempotency_key="j1", instance="x").to_json())
    dialer = await dialer_for(ami, stores, tmp_path)
    try:
        assert await dialer.run_campaign(c.id) == "done"
    finally:
        await dialer.ami.close()
    assert ami.numbers_originated() == [NUMBERS[1]]
    refused = await pool.fetchval(
        "SELECT reason FROM dial_attempt WHERE number_e164 = $1", NUMBERS[0])
    assert refused == "do_not_call"


async def test_unreadable_journal_dials_nothing(
    pool: asyncpg.Pool, stores: OutboundStores, ledger, ami: FakeAMI, tmp_path: Path
) -> None:
    c = await opted_in_campaign(stores, ledger, NUMBERS[:1])
    (tmp_path / "journal" / "active.jsonl").mkdir(parents=True)  # cannot be read as a file
    dialer = await dialer_for(ami, stores, tmp_path)
    stop = asyncio.Event()
    run = asyncio.create_task(dialer.run_campaign(c.id, stop))
    try:
        for _ in range(5):
            await asyncio.sleep(0.05)
        stop.set()
        assert await run == "stopped"
    finally:
        await dialer.ami.close()
    assert ami.originates == [] and await attempts(pool) == []


async def test_bad_ami_credentials_fail_clearly(ami: FakeAMI) -> None:
    client = AmiClient("127.0.0.1", ami.port, ami.username, "wrong", reconnect_timeout=1)
    with pytest.raises(AmiError, match="could not log in"):
        await client.connect(within=1)
