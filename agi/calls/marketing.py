"""Route ``marketing``: re-check consent, identify, offer the opt-out, play — or play nothing.

``AGI(agi://host:4573/marketing?campaign=ID&attempt=N&answered=1)``, run by the ``consent-outbound``
dialplan context on calls the dialer originated (``attempt`` is the ``dial_attempt`` id; the
number called comes from it, never from what the channel claims).  Without ``attempt`` the
number is the caller ID (a test line, an inbound "hear our offers" number).

The rules this flow keeps:

* ``CONSENT_RESULT=error`` from the first command until the outcome is certain;
* the gate (:func:`agi.outbound.gate.decide_playback`) re-reads the ledger before the first
  prompt and again right before the campaign audio; a database error or timeout, an unknown
  campaign or
  number, a withheld caller ID, an opt-out still in the journal: no marketing audio at all, a
  ``marketing_refused`` row, ``CONSENT_RESULT=refused`` and a hang-up;
* the playback row naming the consent relied on is written (and verified by the database,
  independently of the Python gate) before the campaign audio starts; a row the database
  cannot verify plays nothing and halts the campaign;
* the opt-out key interrupts every prompt; the opt-out (and, by trigger, the do-not-call entry)
  is durable before the one-line confirmation plays, and the call ends right after it;
* a campaign with ``reconfirm`` plays the purpose's statement whole (other keys recorded as
  ignored; the opt-out key works) and then asks, before the campaign audio, for the opt-in to
  be re-confirmed: the opt-out key is the opt-out above; ``1`` records a fresh
  opt-in (``ivr_outbound_reconfirm``), durable before the campaign audio starts; silence, or
  a fresh opt-in that cannot be stored, leaves the existing opt-in as it was (silence is never
  consent, and never withdrawal).  The fresh opt-in is written after the playback row: it was
  given during this call, so it is not the prior consent this call's audio relies on.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, Final, Protocol

import structlog

from agi.calls.dialogue import DecisionStore, Dialogue
from agi.calls.prompts import PromptCatalogue
from agi.ledger.numbers import normalise, presentation_restricted
from agi.ledger.records import AttemptRecord, ConsentDecision, StorageUnavailable, idempotency_key
from agi.ops.config import Settings
from agi.ops.logs import ERROR_SUMMARY_CHARS, error_summary
from agi.ops.metrics import Metrics
from agi.outbound import policy
from agi.outbound.gate import JournalUnreadable, decide_playback
from agi.outbound.model import Campaign, ContactFacts, DialledAttempt
from agi.server.call import Call
from agi.wire import variables as cv
from agi.wire.protocol import AGIAppError, AGIHangup

__all__ = ["PROMPTS", "CampaignLookup", "MarketingFlow", "MarketingPlayStore", "NumberFacts"]

log = structlog.get_logger("agi.calls.marketing")

PROMPTS: Final = (
    "marketing-identify",
    "marketing-opt-out-instructions",
    "reconfirm",
    "marketing-opted-out",
    "goodbye",
    "error",
)

# Refusal reasons of this flow beyond agi.outbound.policy.REASONS.
UNKNOWN_CAMPAIGN: Final = "unknown_campaign"
CAMPAIGN_HALTED: Final = "campaign_halted"
UNKNOWN_NUMBER: Final = "unknown_number"
CALLER_ID_WITHHELD: Final = "caller_id_withheld"
UNVERIFIED_CONSENT: Final = "unverified_consent"

#: the key that keeps an opt-in when a campaign re-confirms it (the ``reconfirm`` prompt says so)
RECONFIRM_KEY: Final = "1"


class CampaignLookup(Protocol):
    """The campaign a call names (``agi.outbound.campaigns.Campaigns`` provides it)."""

    async def get_campaign(self, key: str | int) -> Campaign | None: ...


class NumberFacts(Protocol):
    """The gate's facts for the number called (``agi.outbound.screening.Screening``)."""

    async def facts_for_number(
        self,
        campaign: Campaign,
        number_e164: str,
        at: datetime,
        journal_opt_outs: Sequence[str] = (),
        conn: Any = None,
    ) -> ContactFacts: ...


class MarketingPlayStore(Protocol):
    """What the flow records (``agi.outbound.plays.MarketingPlays`` provides it)."""

    async def attempt_for_call(self, attempt_id: int) -> DialledAttempt | None: ...

    async def start_play(
        self,
        *,
        campaign: Campaign,
        attempt_id: int | None,
        number_e164: str,
        consent_event_id: int,
        call_started_at: datetime,
        prompts_json: str,
        uniqueid: str | None,
        channel_name: str | None,
        instance: str,
        idempotency_key: str,
    ) -> tuple[int, bool]: ...

    async def finish_play(self, play_id: int, status: str, prompts_json: str) -> None: ...

    async def record_refused(
        self,
        *,
        campaign_id: int | None,
        attempt_id: int | None,
        number_e164: str | None,
        decision: policy.Decision,
        consent_event_id: int | None,
        uniqueid: str | None,
        channel_name: str | None,
        instance: str,
        idempotency_key: str,
    ) -> None: ...

    async def set_attempt_result(self, attempt_id: int, result: str) -> None: ...


OptOutSource = Callable[[str], Awaitable[frozenset[str]]]


class _Refused(Exception):
    def __init__(self, decision: policy.Decision, event_id: int | None = None) -> None:
        super().__init__(decision.reason)
        self.decision = decision
        self.event_id = event_id


class _OptedOut(Exception):
    def __init__(self, step: str, digit: str, *, noted: bool = False) -> None:
        super().__init__(step)
        self.step = step
        self.digit = digit
        #: the press is already in the dialogue's digits (GET OPTION notes it itself)
        self.noted = noted


@dataclass(slots=True)
class _Context:
    campaign: Campaign | None = None
    attempt_id: int | None = None
    number: str | None = None
    call_started_at: datetime | None = None
    play_id: int | None = None


def _refusal(reason: str, detail: str = "") -> policy.Decision:
    return policy.Decision(False, reason, policy.FAIL_CLOSED_RULE, detail)


class MarketingFlow:
    """The outbound marketing playback, gated at the moment it matters."""

    def __init__(
        self,
        settings: Settings,
        campaigns: CampaignLookup,
        screening: NumberFacts,
        plays: MarketingPlayStore,
        store: DecisionStore,
        prompts: PromptCatalogue,
        *,
        journal_opt_outs: OptOutSource,
        metrics: Metrics | None = None,
    ) -> None:
        self.settings = settings
        self.campaigns = campaigns
        self.screening = screening
        self.plays = plays
        self.store = store
        self.prompts = prompts
        self.journal_opt_outs = journal_opt_outs
        #: the process's metrics; a private instance when none is passed (tests, tools)
        self._metrics = metrics if metrics is not None else Metrics()
        prompts.require(PROMPTS)

    @property
    def metrics(self) -> Metrics:
        return self._metrics

    async def __call__(self, call: Call) -> None:
        await self.play_marketing(call)

    # ----------------------------------------------------------------- the flow

    async def play_marketing(self, call: Call) -> None:
        ch = call.agi
        dialogue = Dialogue(call=call, prompts=self.prompts)
        ctx = _Context(call_started_at=call.started_at)
        await ch.set_variable(cv.CONSENT_RESULT, cv.RESULT_ERROR)
        await ch.set_variable(cv.CONSENT_REFUSAL_REASON, "")
        await ch.set_variable(cv.CONSENT_EVENT_ID, "")
        try:
            facts = await self._gate(call, ctx)
            campaign = ctx.campaign
            assert campaign is not None
            key = campaign.opt_out_key
            # The kit's consent-outbound Answer()s (a no-op on the dialer's call, which is
            # up) and says so with answered=1: an ANSWER then would be a wasted round trip
            if call.params.get("answered") != "1":
                await ch.answer()
            # Identification first, the opt-out offer straight after it: the key works
            # throughout, so the caller can stop the call during either.
            for step in ("marketing-identify", "marketing-opt-out-instructions"):
                digit = await dialogue.play(step, key)
                if digit is not None:
                    raise _OptedOut(step, digit)
            reconfirmed = False
            if campaign.reconfirm:
                # The statement first, whole (the opt-out key still stops the call): the
                # caller hears what they keep agreeing to before a key can keep it.
                statement = f"statement-{campaign.purpose}"
                digit = await dialogue.play_statement(statement, "statement", stop=key)
                if digit is not None:
                    raise _OptedOut(statement, digit)
                digit = await dialogue.ask(
                    "reconfirm", "reconfirm", RECONFIRM_KEY + key, self.settings.digit_timeout_ms
                )
                if digit == key:
                    raise _OptedOut("reconfirm", digit, noted=True)
                reconfirmed = digit == RECONFIRM_KEY
            # Right before the marketing audio: read the ledger again, in this same flow.
            facts = await self._gate(call, ctx)
            assert facts.latest is not None
            await self._start_play(call, dialogue, ctx, facts.latest.event_id)
            if reconfirmed:
                await self._reconfirm(call, dialogue, ctx)
            self.metrics.marketing_played(with_valid_opt_in=True)
            digit = await dialogue.play(campaign.audio_prompt, key)
            if digit is not None:
                raise _OptedOut(campaign.audio_prompt, digit)
            await ch.set_variable(cv.CONSENT_RESULT, cv.RESULT_PLAYED)
            call.outcome = cv.RESULT_PLAYED
            await self._finish(ctx, dialogue, "completed", cv.RESULT_PLAYED)
            log.info(
                "marketing_played", campaign=campaign.name, consent_event=facts.latest.event_id
            )
            await dialogue.play("goodbye")
            await ch.hangup()
        except _Refused as refused:
            await self._refuse(call, dialogue, ctx, refused.decision, refused.event_id)
        except _OptedOut as opt:
            if not opt.noted:
                dialogue.pressed(opt.step, opt.digit)
            await self._opt_out(call, dialogue, ctx)
        except AGIHangup:
            if call.outcome == "unknown":
                call.outcome = "hangup"
                await self._finish(ctx, dialogue, "hangup", "hangup")
            raise
        except AGIAppError as exc:
            # A prompt could not be played: stop, and say so to the dialplan.
            call.outcome = cv.RESULT_ERROR
            log.error("prompt_failed", error=str(exc))
            await self._finish(ctx, dialogue, "error", cv.RESULT_ERROR)

    # ----------------------------------------------------------------- the gate

    async def _gate(self, call: Call, ctx: _Context) -> ContactFacts:
        """Campaign, number and ledger facts → allowed facts, or raise :class:`_Refused`."""
        try:
            async with asyncio.timeout(self.settings.db_timeout * 2):
                return await self._gate_unbounded(call, ctx)
        except _Refused:
            raise
        except JournalUnreadable as exc:
            raise _Refused(_refusal(policy.ERROR, str(exc))) from None
        except Exception as exc:  # noqa: BLE001 -- database down, slow or odd: fail closed
            log.warning("marketing_gate_failed",
                        error=f"{type(exc).__name__}: {error_summary(exc)}")
            raise _Refused(_refusal(policy.ERROR, f"{type(exc).__name__}: {exc}")) from None

    async def _gate_unbounded(self, call: Call, ctx: _Context) -> ContactFacts:
        env = call.env
        if ctx.campaign is None:
            key = call.params.get("campaign", "")
            campaign = await self.campaigns.get_campaign(key) if key else None
            if campaign is None:
                raise _Refused(_refusal(UNKNOWN_CAMPAIGN, f"no campaign {key!r}"))
            ctx.campaign = campaign
            await self._resolve_number(call, ctx)
        campaign = await self.campaigns.get_campaign(ctx.campaign.id)
        if campaign is None or campaign.status != "active":
            status = campaign.status if campaign else "gone"
            raise _Refused(_refusal(CAMPAIGN_HALTED, f"campaign is {status}"))
        ctx.campaign = campaign
        if policy.get_profile(campaign.profile).caller_id_required and presentation_restricted(
            env.get("callingpres", "0")
        ):
            raise _Refused(_refusal(CALLER_ID_WITHHELD, "caller ID presentation restricted"))
        prompt = self.prompts.get("marketing-opt-out-instructions", env.language)
        if f"press {campaign.opt_out_key}" not in prompt.text.lower():
            raise _Refused(_refusal(policy.ERROR, "the opt-out prompt does not name the key"))
        if campaign.reconfirm:
            if not self.prompts.has(f"statement-{campaign.purpose}"):
                raise _Refused(_refusal(policy.ERROR, "no statement prompt for purpose "
                                        f"{campaign.purpose!r} to re-confirm against"))
            text = self.prompts.get("reconfirm", env.language).text.lower()
            if f"press {campaign.opt_out_key}" not in text or f"press {RECONFIRM_KEY}" not in text:
                raise _Refused(_refusal(policy.ERROR, "the reconfirm prompt does not name the "
                                        f"keys {RECONFIRM_KEY} and {campaign.opt_out_key}"))
        assert ctx.number is not None and ctx.call_started_at is not None
        journal = await self.journal_opt_outs(campaign.organisation)
        now = datetime.now(UTC)
        facts = await self.screening.facts_for_number(campaign, ctx.number, now, sorted(journal))
        decision = decide_playback(
            campaign, facts, call_started_at=ctx.call_started_at, journal_numbers=journal
        )
        if not decision.allowed or facts.latest is None:
            raise _Refused(decision, facts.latest.event_id if facts.latest else None)
        return facts

    async def _resolve_number(self, call: Call, ctx: _Context) -> None:
        campaign = ctx.campaign
        assert campaign is not None
        raw_attempt = call.params.get("attempt", "")
        if raw_attempt:
            if not raw_attempt.isdigit():
                raise _Refused(_refusal(UNKNOWN_NUMBER, f"attempt {raw_attempt!r}"))
            dialled = await self.plays.attempt_for_call(int(raw_attempt))
            if dialled is None or dialled.campaign_id != campaign.id or not dialled.allowed:
                raise _Refused(_refusal(UNKNOWN_NUMBER, f"no dialled attempt {raw_attempt}"))
            ctx.attempt_id = dialled.id
            ctx.number = dialled.number_e164
            # The call started when the dialer decided to place it; consent recorded while
            # the phone was ringing is not prior consent.
            assert ctx.call_started_at is not None
            ctx.call_started_at = min(dialled.decided_at, ctx.call_started_at)
            return
        env = call.env
        if presentation_restricted(env.get("callingpres", "0")):
            raise _Refused(_refusal(CALLER_ID_WITHHELD, "caller ID withheld"))
        number = normalise(env.callerid, campaign.default_region)
        if number is None:
            raise _Refused(_refusal(CALLER_ID_WITHHELD, "no usable caller ID"))
        ctx.number = number

    async def _start_play(
        self, call: Call, dialogue: Dialogue, ctx: _Context, event_id: int
    ) -> None:
        campaign = ctx.campaign
        assert campaign is not None and ctx.number is not None
        assert ctx.call_started_at is not None
        env = call.env
        try:
            async with asyncio.timeout(self.settings.db_timeout * 2):
                play_id, verified = await self.plays.start_play(
                    campaign=campaign,
                    attempt_id=ctx.attempt_id,
                    number_e164=ctx.number,
                    consent_event_id=event_id,
                    call_started_at=ctx.call_started_at,
                    prompts_json=_prompts_json(dialogue),
                    uniqueid=env.uniqueid or None,
                    channel_name=env.channel_name or None,
                    instance=self.settings.instance,
                    idempotency_key=idempotency_key(call.call_id, "marketing", "play"),
                )
        except Exception as exc:  # noqa: BLE001 -- no evidence row, no audio
            raise _Refused(_refusal(policy.ERROR, f"{type(exc).__name__}: {exc}")) from None
        if not verified:
            log.error("marketing_gate_disagreement", campaign=campaign.name, consent_event=event_id)
            raise _Refused(
                _refusal(UNVERIFIED_CONSENT, f"the database could not verify event {event_id}; "
                         "campaign halted"),
                event_id,
            )
        ctx.play_id = play_id

    # ----------------------------------------------------------------- outcomes

    async def _refuse(
        self,
        call: Call,
        dialogue: Dialogue,
        ctx: _Context,
        decision: policy.Decision,
        event_id: int | None,
    ) -> None:
        ch = call.agi
        env = call.env
        call.outcome = cv.RESULT_REFUSED
        self.metrics.marketing_refused(decision.reason)
        log.info("marketing_refused", reason=decision.reason,
                 detail=decision.detail[:ERROR_SUMMARY_CHARS])
        key = idempotency_key(call.call_id, "marketing", "refused")
        campaign_id = ctx.campaign.id if ctx.campaign else None
        try:
            await self.plays.record_refused(
                campaign_id=campaign_id,
                attempt_id=ctx.attempt_id,
                number_e164=ctx.number,
                decision=decision,
                consent_event_id=event_id,
                uniqueid=env.uniqueid or None,
                channel_name=env.channel_name or None,
                instance=self.settings.instance,
                idempotency_key=key,
            )
        except Exception as exc:  # noqa: BLE001 -- keep the evidence in the journal instead
            log.warning("marketing_refusal_not_stored", error=error_summary(exc))
            await self.store.record_attempt(
                AttemptRecord(
                    route=call.route,
                    outcome="refused",
                    reason=decision.reason,
                    idempotency_key=key,
                    instance=self.settings.instance,
                    number_e164=ctx.number,
                    organisation=ctx.campaign.organisation if ctx.campaign else None,
                    purpose=ctx.campaign.purpose if ctx.campaign else None,
                    prompts=tuple(dialogue.heard),
                    uniqueid=env.uniqueid or None,
                    channel_name=env.channel_name or None,
                    callerid_num=env.callerid,
                    callerid_name=env.calleridname,
                    call_started_at=call.started_at,
                    ended_at=datetime.now(UTC),
                )
            )
        await ch.set_variable(cv.CONSENT_REFUSAL_REASON, decision.reason)
        await ch.set_variable(cv.CONSENT_RESULT, cv.RESULT_REFUSED)
        await self._attempt_result(ctx, cv.RESULT_REFUSED)
        await ch.hangup()

    def _decision(
        self, dialogue: Dialogue, ctx: _Context, step: str, decision: str, method: str
    ) -> ConsentDecision:
        """The callee's decision on this call, about this campaign's organisation and purpose.

        The number is the one dialled (from the attempt), so its evidence is ``caller_id``.
        """
        campaign = ctx.campaign
        assert campaign is not None and ctx.number is not None
        return dialogue.decision(
            step=step,
            number_e164=ctx.number,
            organisation=campaign.organisation,
            purpose=campaign.purpose,
            decision=decision,
            method=method,
            evidence_strength="caller_id",
            instance=self.settings.instance,
            call_started_at=ctx.call_started_at,
        )

    async def _reconfirm(self, call: Call, dialogue: Dialogue, ctx: _Context) -> None:
        """Store the fresh opt-in the callee keyed; durable before the campaign audio."""
        ch = call.agi
        assert ctx.campaign is not None
        if not dialogue.heard_in_full(f"statement-{ctx.campaign.purpose}"):
            # unreachable by the steps above; no fresh opt-in without the statement heard whole
            log.error("marketing_reconfirm_without_statement")
            return
        decision = self._decision(
            dialogue, ctx, "marketing-reconfirm", "opt_in", "ivr_outbound_reconfirm"
        )
        try:
            result = await self.store.commit_decision(decision)
        except StorageUnavailable:
            # The opt-in this call was allowed on still stands: as if the callee kept silent.
            log.error("marketing_reconfirm_not_stored")
            return
        call.decision, call.purpose, call.number = (decision.decision, decision.purpose,
                                                    decision.number_e164)
        call.event_id, call.journaled = result.event_id, result.journaled
        log.debug("consent_recorded", decision="opt_in", event_id=result.event_id,
                  journaled=result.journaled, method="ivr_outbound_reconfirm")
        await ch.set_variable(cv.CONSENT_EVENT_ID, str(result.event_id or ""))

    async def _opt_out(self, call: Call, dialogue: Dialogue, ctx: _Context) -> None:
        """Record the opt-out (durably), then confirm in one line and hang up."""
        ch = call.agi
        decision = self._decision(
            dialogue, ctx, "marketing-opt-out", "opt_out", "ivr_outbound_opt_out"
        )
        try:
            result = await self.store.commit_decision(decision)
        except StorageUnavailable:
            call.outcome = cv.RESULT_ERROR
            log.error("marketing_opt_out_not_stored")
            await self._finish(ctx, dialogue, "error", cv.RESULT_ERROR)
            await dialogue.play("error")
            await ch.hangup()
            return
        call.outcome = cv.RESULT_OPTED_OUT
        self.metrics.marketing_opted_out()
        call.decision, call.purpose, call.number = (decision.decision, decision.purpose,
                                                    decision.number_e164)
        call.event_id, call.journaled = result.event_id, result.journaled
        log.debug("consent_recorded", decision="opt_out", event_id=result.event_id,
                  journaled=result.journaled, method="ivr_outbound_opt_out")
        # Durable now: only from here may the callee hear that it was recorded.
        await ch.set_variable(cv.CONSENT_EVENT_ID, str(result.event_id or ""))
        await ch.set_variable(cv.CONSENT_RESULT, cv.RESULT_OPTED_OUT)
        try:
            await dialogue.play("marketing-opted-out")
            await ch.hangup()
        finally:
            await self._finish(ctx, dialogue, "opted_out", cv.RESULT_OPTED_OUT)

    async def _finish(self, ctx: _Context, dialogue: Dialogue, status: str, result: str) -> None:
        """Best-effort bookkeeping after the outcome is settled (never raises)."""
        if ctx.play_id is not None:
            try:
                await self.plays.finish_play(ctx.play_id, status, _prompts_json(dialogue))
            except Exception as exc:  # noqa: BLE001
                log.warning("marketing_play_not_updated", error=error_summary(exc))
        await self._attempt_result(ctx, result)

    async def _attempt_result(self, ctx: _Context, result: str) -> None:
        if ctx.attempt_id is None:
            return
        try:
            await self.plays.set_attempt_result(ctx.attempt_id, result)
        except Exception as exc:  # noqa: BLE001
            log.warning("dial_attempt_result_not_stored", error=error_summary(exc))


def _prompts_json(dialogue: Dialogue) -> str:
    return json.dumps([asdict(p) for p in dialogue.heard], ensure_ascii=False)

