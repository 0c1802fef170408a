"""The ``marketing`` route over real FastAGI (tests/fakes.py) and real PostgreSQL.

Every assertion is made outside the server: on what the fake Asterisk heard and was told
(prompts, channel variables, the order of commands) and on what landed in the database.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import asyncpg
import pytest

import agi.calls.marketing as marketing_module
from agi.calls.prompts import PromptCatalogue
from agi.cli.marketing import marketing_route
from agi.cli.table import RouteDeps
from agi.ledger.database import connect_pool
from agi.ledger.decisions import LedgerDecisionStore
from agi.ledger.journal import Journal
from agi.ledger.ledger import Ledger
from agi.ledger.records import ConsentDecision
from agi.ops.config import Settings
from agi.outbound import policy
from agi.outbound.model import Campaign
from agi.outbound.stores import OutboundStores
from agi.server.fastagi import AGIServer
from tests.campaign_helpers import ORG, PURPOSE, consent, fresh_lists, make_campaign
from tests.fakes import SILENCE, CallRecord, FakeAsterisk

NUMBER = "+447400123401"
ALL_SILENT = [SILENCE, SILENCE, SILENCE]
MARKETING = ["marketing-identify", "marketing-opt-out-instructions"]


@dataclass
class Stack:
    server: AGIServer
    stores: OutboundStores
    pool: asyncpg.Pool
    ledger: Ledger
    journal: Journal
    campaign: Campaign
    settings: Settings

    async def call(
        self,
        *,
        attempt: int | None,
        presses: list[Any] = ALL_SILENT,
        campaign: str | None = None,
        callingpres: str = "0",
        callerid: str = "+442079460000",
        uniqueid: str = "1700000000.1",
        says_answered: bool = False,
    ) -> CallRecord:
        script = f"marketing?campaign={campaign or self.campaign.id}"
        if attempt is not None:
            script += f"&attempt={attempt}"
        if says_answered:  # as the kit's consent-outbound does, after its Answer()
            script += "&answered=1"
        fake = FakeAsterisk(
            "127.0.0.1", self.server.port, network_script=script, answered=True,
            callerid=callerid, uniqueid=uniqueid, channel="PJSIP/trunk-00000001",
            presses=presses,
        )
        fake.env["callingpres"] = callingpres
        return await fake.run()

    async def dialled(self, number: str = NUMBER) -> int:
        """Claim the contact as the dialer would (the gate allowed it): the attempt id."""
        claim = await self.stores.claims.claim_next(self.campaign.id, "w1", timedelta(minutes=5))
        assert claim.kind == "dial" and claim.job is not None, claim
        assert claim.job.number_e164 == number
        return claim.job.attempt_id


async def _stack(
    settings: Settings, pool: asyncpg.Pool, ledger: Ledger, flow_pool: asyncpg.Pool | None = None
) -> AsyncIterator[Stack]:
    journal = Journal(settings.journal_dir)
    store = LedgerDecisionStore(ledger, journal)
    prompts = PromptCatalogue.load(settings.sounds_dir, prefix=settings.prompt_prefix)
    route = marketing_route(settings, RouteDeps(flow_pool or pool, store, prompts))
    server = AGIServer(settings, {"marketing": route})
    await server.start()
    stores = OutboundStores.over(pool, timeout=5.0)
    campaign = await make_campaign(stores.campaigns)
    await fresh_lists(stores.lists)
    await stores.lists.import_contacts(campaign, "07400123401\n07400123402\n")
    try:
        yield Stack(server, stores, pool, ledger, journal, campaign, settings)
    finally:
        await server.drain(timeout=2)


@pytest.fixture
async def stack(settings: Settings, pool: asyncpg.Pool, ledger: Ledger) -> AsyncIterator[Stack]:
    async for s in _stack(settings, pool, ledger):
        yield s


def prompts(record: CallRecord) -> list[str]:
    return [p.name.removeprefix("consent-ivr/") for p in record.prompts]


def order(record: CallRecord, *needles: str) -> list[int]:
    """Index in the command list of the first command containing each needle."""
    out = []
    for needle in needles:
        found = [i for i, c in enumerate(record.commands) if needle in c.replace('"', "")]
        assert found, (needle, record.commands)
        out.append(found[0])
    return out


async def refused_rows(pool: asyncpg.Pool) -> list[tuple[Any, ...]]:
    rows = await pool.fetch("SELECT number_e164, reason FROM marketing_refused ORDER BY id")
    return [tuple(r) for r in rows]


# ------------------------------------------------------------------------- played


async def test_opted_in_number_hears_identification_offer_and_campaign(stack: Stack) -> None:
    event = await consent(stack.ledger, NUMBER)
    attempt = await stack.dialled()
    record = await stack.call(attempt=attempt)
    assert prompts(record) == [*MARKETING, "campaign-demo", "goodbye"]
    assert record.variables["CONSENT_RESULT"] == "played"
    assert record.variables["CONSENT_REFUSAL_REASON"] == ""
    # the opt-out key interrupts every marketing prompt
    assert all('"9"' in c or " 9" in c for c in record.commands if "campaign-demo" in c
               or "marketing-identify" in c)
    play = await stack.pool.fetchrow(
        "SELECT consent_event_id, consent_verified, status, dial_attempt_id, number_e164 "
        "FROM marketing_play"
    )
    assert tuple(play) == (event, True, "completed", attempt, NUMBER)
    assert await stack.pool.fetchval(
        "SELECT result FROM dial_attempt WHERE id = $1", attempt) == "played"
    assert await refused_rows(stack.pool) == []


@pytest.mark.parametrize("says_answered", [False, True])
async def test_answers_before_the_first_prompt_unless_the_url_says_answered(
    stack: Stack, says_answered: bool
) -> None:
    await consent(stack.ledger, NUMBER)
    record = await stack.call(attempt=await stack.dialled(), says_answered=says_answered)
    assert record.variables["CONSENT_RESULT"] == "played"
    answers = [i for i, c in enumerate(record.commands) if c == "ANSWER"]
    if says_answered:  # the kit answered: an ANSWER would be a round trip that does nothing
        assert answers == [], record.commands
    else:
        [first_stream] = order(record, "STREAM FILE")
        assert answers and answers[0] < first_stream, record.commands
    assert prompts(record) == [*MARKETING, "campaign-demo", "goodbye"]


# ------------------------------------------------------------------------- opt-out key


@pytest.mark.parametrize(
    ("presses", "heard_campaign"),
    [(["9"], False), ([SILENCE, "9"], False), ([SILENCE, SILENCE, "9"], True)],
    ids=["during-identification", "during-opt-out-offer", "mid-campaign-audio"],
)
async def test_opt_out_key_records_before_confirming_and_stops_dialling(
    stack: Stack, presses: list[Any], heard_campaign: bool
) -> None:
    await consent(stack.ledger, NUMBER)
    attempt = await stack.dialled()
    record = await stack.call(attempt=attempt, presses=presses)
    heard = prompts(record)
    assert heard[-1] == "marketing-opted-out"
    assert ("campaign-demo" in heard) is heard_campaign
    assert record.variables["CONSENT_RESULT"] == "opted_out"
    assert record.hangup_by == "server"
    pool = stack.pool
    event = await pool.fetchrow(
        "SELECT id, decision, method, channel, organisation, number_e164, digits "
        "FROM consent_event WHERE decision = 'opt_out'"
    )
    assert (event["decision"], event["method"], event["channel"], event["organisation"],
            event["number_e164"]) == ("opt_out", "ivr_outbound_opt_out", "automated_call", ORG,
                                      NUMBER)
    assert '"digit": "9"' in event["digits"]
    # committed before the confirmation: the event id was known when the result was set,
    # and that happened before the confirmation prompt was sent
    assert record.variables["CONSENT_EVENT_ID"] == str(event["id"])
    set_result, confirm = order(record, "CONSENT_RESULT opted_out", "marketing-opted-out")
    assert set_result < confirm
    dnc = await pool.fetchrow("SELECT organisation, source, consent_event_id FROM do_not_call")
    assert tuple(dnc) == (ORG, "ivr_outbound_opt_out", event["id"])
    if heard_campaign:
        assert await pool.fetchval("SELECT status FROM marketing_play") == "opted_out"
    # the next claim sees it at once
    await stack.pool.execute("UPDATE contact SET state = 'ready', next_attempt_at = "
                                   "'-infinity', lease_owner = NULL, lease_expires_at = NULL")
    await stack.pool.execute("UPDATE dial_attempt SET state = 'completed'")
    claim = await stack.stores.claims.claim_next(stack.campaign.id, "w1", timedelta(minutes=5))
    assert claim.kind == "refused" and claim.decision is not None
    assert claim.decision.reason == "do_not_call"


# ------------------------------------------------------------------------- refusals


async def test_opt_out_after_the_dial_decision_refuses_with_no_audio(stack: Stack) -> None:
    await consent(stack.ledger, NUMBER)
    attempt = await stack.dialled()
    await consent(stack.ledger, NUMBER, "opt_out")  # pressed 2 on an inbound call meanwhile
    record = await stack.call(attempt=attempt)
    assert prompts(record) == []
    assert record.variables["CONSENT_RESULT"] == "refused"
    assert record.variables["CONSENT_REFUSAL_REASON"] == "opted_out"
    assert await refused_rows(stack.pool) == [(NUMBER, "opted_out")]
    assert await stack.pool.fetchval("SELECT count(*) FROM marketing_play") == 0
    assert await stack.pool.fetchval(
        "SELECT result FROM dial_attempt WHERE id = $1", attempt) == "refused"


async def test_consent_recorded_after_the_call_started_is_refused(stack: Stack) -> None:
    pool = stack.pool
    contact = await pool.fetchval("SELECT id FROM contact WHERE number_e164 = $1", NUMBER)
    attempt = await pool.fetchval(
        """INSERT INTO dial_attempt (campaign_id, contact_id, number_e164, attempt_no, allowed,
               reason, rule, worker, state)
           VALUES ($1, $2, $3, 1, true, 'allowed', 'test', 'w', 'originating') RETURNING id""",
        stack.campaign.id, contact, NUMBER,
    )
    await consent(stack.ledger, NUMBER)  # while the phone rang
    record = await stack.call(attempt=attempt)
    assert prompts(record) == []
    assert record.variables["CONSENT_REFUSAL_REASON"] == "consent_not_before_call"


async def test_live_call_consent_only_is_refused(stack: Stack) -> None:
    pool = stack.pool
    await consent(stack.ledger, NUMBER)
    attempt = await stack.dialled()
    await consent(stack.ledger, NUMBER, consent_channel="live_call")
    record = await stack.call(attempt=attempt)
    # the automated opt-in still stands: a live-call opt-in does not replace it
    assert record.variables["CONSENT_RESULT"] == "played"
    await pool.execute("DELETE FROM marketing_play")
    record = await stack.call(attempt=None, callerid="07400123402", uniqueid="1700000000.2")
    assert prompts(record) == []
    assert record.variables["CONSENT_REFUSAL_REASON"] == "no_consent"
    await consent(stack.ledger, "+447400123402", consent_channel="live_call")
    record = await stack.call(attempt=None, callerid="07400123402", uniqueid="1700000000.3")
    assert record.variables["CONSENT_REFUSAL_REASON"] == "wrong_channel"


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"attempt": 999999}, "unknown_number"),
        ({"attempt": None, "campaign": "nope"}, "unknown_campaign"),
        ({"attempt": None, "callingpres": "32"}, "caller_id_withheld"),
        ({"attempt": None, "callerid": "anonymous"}, "caller_id_withheld"),
    ],
)
async def test_unknown_or_withheld_refuses(
    stack: Stack, kwargs: dict[str, Any], reason: str
) -> None:
    await consent(stack.ledger, "+442079460000")  # the caller ID itself is opted in
    record = await stack.call(**kwargs)
    assert prompts(record) == []
    assert record.variables["CONSENT_RESULT"] == "refused"
    assert record.variables["CONSENT_REFUSAL_REASON"] == reason
    assert [r[1] for r in await refused_rows(stack.pool)] == [reason]


async def test_withheld_presentation_refuses_even_a_dialled_opted_in_number(stack: Stack) -> None:
    await consent(stack.ledger, NUMBER)
    attempt = await stack.dialled()
    record = await stack.call(attempt=attempt, callingpres="32")
    assert prompts(record) == []
    assert record.variables["CONSENT_REFUSAL_REASON"] == "caller_id_withheld"


async def test_journal_only_opt_out_blocks_and_journal_only_opt_in_does_not_count(
    stack: Stack,
) -> None:
    await consent(stack.ledger, NUMBER)
    attempt = await stack.dialled()

    def journaled(number: str, decision: str) -> dict[str, Any]:
        data = ConsentDecision(
            number_e164=number, organisation=ORG, purpose=PURPOSE, decision=decision,
            method="ivr_inbound", evidence_strength="caller_id",
            decided_at=policy_now(), idempotency_key=f"j-{number}-{decision}", instance="x",
        ).to_json()
        data["source"] = "journal"
        return data

    stack.journal.append("decision", journaled(NUMBER, "opt_out"))
    stack.journal.append("decision", journaled("+447400123402", "opt_in"))
    record = await stack.call(attempt=attempt)
    assert prompts(record) == []
    assert record.variables["CONSENT_REFUSAL_REASON"] == "do_not_call"
    record = await stack.call(attempt=None, callerid="+447400123402", uniqueid="1700000000.9")
    assert record.variables["CONSENT_REFUSAL_REASON"] == "no_consent"


def policy_now() -> Any:
    from datetime import UTC, datetime

    return datetime.now(UTC)


async def test_halted_campaign_plays_nothing(stack: Stack) -> None:
    await consent(stack.ledger, NUMBER)
    attempt = await stack.dialled()
    await stack.stores.campaigns.set_status(stack.campaign.id, "halted", "test")
    record = await stack.call(attempt=attempt)
    assert prompts(record) == []
    assert record.variables["CONSENT_REFUSAL_REASON"] == "campaign_halted"


async def test_database_down_refuses_and_keeps_the_refusal_in_the_journal(
    settings: Settings, pool: asyncpg.Pool, ledger: Ledger, db_url: str
) -> None:
    dead = await connect_pool(db_url, min_size=1, max_size=2, timeout=2.0)
    async for stack in _stack(settings, pool, Ledger(dead, timeout=1.0), flow_pool=dead):
        await consent(ledger, NUMBER)
        attempt = await stack.dialled()
        await dead.close()
        record = await stack.call(attempt=attempt)
        assert prompts(record) == []
        assert record.variables["CONSENT_RESULT"] == "refused"
        assert record.variables["CONSENT_REFUSAL_REASON"] == "error"
        entries = [e.data for e in stack.journal.entries("attempt")]
        assert [(e["outcome"], e["reason"], e["route"]) for e in entries] == [
            ("refused", "error", "marketing")
        ]


async def test_database_timeout_refuses(
    make_settings: Callable[..., Settings], pool: asyncpg.Pool, ledger: Ledger
) -> None:
    settings = make_settings(db_timeout=0.3)
    async for stack in _stack(settings, pool, ledger):
        await consent(ledger, NUMBER)
        attempt = await stack.dialled()
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute("LOCK TABLE consent_event IN ACCESS EXCLUSIVE MODE")
            record = await stack.call(attempt=attempt)
        assert prompts(record) == []
        assert record.variables["CONSENT_REFUSAL_REASON"] == "error"
        assert [r[1] for r in await refused_rows(pool)] == ["error"]


# ------------------------------------------------------------------------- circuit breaker


async def test_gate_defect_is_caught_by_the_database_and_halts_the_campaign(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    await consent(stack.ledger, NUMBER)
    attempt = await stack.dialled()
    await consent(stack.ledger, NUMBER, "opt_out")

    def broken_gate(*args: Any, **kwargs: Any) -> policy.Decision:  # a defect: always yes
        return policy.Decision(True, policy.ALLOWED, "broken")

    monkeypatch.setattr(marketing_module, "decide_playback", broken_gate)
    record = await stack.call(attempt=attempt)
    assert "campaign-demo" not in prompts(record)
    assert record.variables["CONSENT_RESULT"] == "refused"
    assert record.variables["CONSENT_REFUSAL_REASON"] == "unverified_consent"
    pool = stack.pool
    assert await pool.fetchval("SELECT status FROM marketing_play") == "blocked"
    halted = await stack.stores.campaigns.get_campaign(stack.campaign.id)
    assert halted is not None and halted.status == "halted"
    assert "unverified consent" in (halted.halt_reason or "")
    assert await stack.stores.campaigns.unconsented_plays() == 0  # nothing actually played
    claim = await stack.stores.claims.claim_next(stack.campaign.id, "w1", timedelta(minutes=5))
    assert claim.kind == "halted"


async def test_a_play_without_verified_consent_counts_and_halts(stack: Stack) -> None:
    """Another instance (or a bug) logged a playback the database cannot verify."""
    pool = stack.pool
    await pool.execute(
        """INSERT INTO marketing_play (campaign_id, number_e164, consent_event_id,
               consent_verified, call_started_at, status, audio_prompt, instance,
               idempotency_key)
           VALUES ($1, $2, 0, false, now(), 'completed', 'campaign-demo', 'rogue', 'k')""",
        stack.campaign.id, NUMBER,
    )
    assert await stack.stores.campaigns.unconsented_plays(stack.campaign.id) == 1
    stats = await stack.stores.campaigns.campaign_stats(stack.campaign.id)
    assert stats["unconsented_plays"] == 1
    await consent(stack.ledger, "+447400123402")
    claim = await stack.stores.claims.claim_next(stack.campaign.id, "w", timedelta(minutes=5))
    assert claim.kind == "halted"
    record = await stack.call(attempt=None, callerid="+447400123402")
    assert record.variables["CONSENT_REFUSAL_REASON"] == "campaign_halted"
    assert prompts(record) == []




# ------------------------------------------------------------------------- re-confirmation


async def test_reconfirm_without_a_statement_for_the_purpose_plays_nothing(
    stack: Stack,
) -> None:
    """A campaign that re-confirms must first tell the callee what they keep agreeing to."""
    flow = stack.server.routes["marketing"]
    assert isinstance(flow, marketing_module.MarketingFlow)
    flow.prompts = PromptCatalogue({(p.id, p.lang): p for p in flow.prompts
                                    if not p.id.startswith("statement-")})
    campaign = await make_campaign(stack.stores.campaigns, name="reconfirming", reconfirm=True)
    await stack.stores.lists.import_contacts(campaign, "07400123401\n")
    await consent(stack.ledger, NUMBER)
    claim = await stack.stores.claims.claim_next(campaign.id, "w1", timedelta(minutes=5))
    assert claim.job is not None
    record = await stack.call(attempt=claim.job.attempt_id, campaign=str(campaign.id))
    assert prompts(record) == []
    assert record.variables["CONSENT_RESULT"] == "refused"
    assert record.variables["CONSENT_REFUSAL_REASON"] == "error"
    [(number, reason)] = await refused_rows(stack.pool)
    assert number == NUMBER and reason == "error"
