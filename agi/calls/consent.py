"""Route ``consent``: identify, ask, confirm, record — in that order, or nothing at all.

``AGI(agi://host:4573/consent?purpose=marketing-calls)``; ``method=agent_transfer``
when a live agent transferred the caller in. The kit adds ``linkedid=${CHANNEL(linkedid)}``
and ``answered=1`` (it has answered the channel): each saves the flow a round trip; without
them the flow asks Asterisk for the linkedid and answers the channel itself. The rules this
flow keeps:

* silence, timeouts, invalid keys, a hangup or any error never record consent;
* opt-in takes a second positive action (confirm), and only after the purpose's statement
  (``statement-<purpose>``: who will call, that the calls are automated and recorded, what
  for) has played whole — keys pressed during it are recorded as ignored; opt-out takes none;
* the decision is durable (ledger, or the fsync'd journal when the database is
  down) before the caller hears that it was recorded;
* ``CONSENT_RESULT`` is ``error`` from the first command until the outcome is
  certain, so a crash, a drain or a cut connection leaves the safe value.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

from agi.calls.dialogue import ALL_KEYS, DecisionStore, Dialogue
from agi.calls.prompts import PromptCatalogue
from agi.ledger.numbers import normalise, presentation_restricted
from agi.ledger.records import AttemptRecord, CommitResult, StorageUnavailable, idempotency_key
from agi.ops.config import Settings
from agi.server.call import Call
from agi.wire import variables as cv
from agi.wire.protocol import AGIAppError, AGIHangup

__all__ = ["PROMPTS", "ConsentFlow", "purpose_prompts"]

_PURPOSE = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
#: Asterisk's linkedid is a uniqueid ("1796006581.1", or a system-name-prefixed form)
_LINKEDID = re.compile(r"[A-Za-z0-9._-]{1,64}")
MAX_REPEATS: Final = 5

#: Every prompt this flow can play (``question-<purpose>`` and ``statement-<purpose>`` per
#: purpose offered).
PROMPTS: Final = (
    "identify",
    "confirm-opt-in",
    "opted-in",
    "opted-out",
    "cancelled",
    "invalid-key",
    "no-input",
    "no-decision",
    "goodbye",
    "enter-number",
    "number-readback",
    "number-confirm",
    "error",
    "transfer-intro",
    "transfer-return",
)

METHODS: Final = {"inbound": "ivr_inbound", "agent_transfer": "ivr_agent_transfer"}


def purpose_prompts(purpose: str) -> tuple[str, str]:
    """What a purpose needs: the question that names it, the statement that explains it."""
    return f"question-{purpose}", f"statement-{purpose}"


class _NoDecision(Exception):
    """The call ends without a decision; ``reason`` says why (for the attempts table)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class _Number:
    e164: str
    strength: str  # 'caller_id' | 'keyed_in'


class ConsentFlow:
    """The inbound consent capture flow (also used after an agent transfer)."""

    def __init__(self, settings: Settings, store: DecisionStore, prompts: PromptCatalogue) -> None:
        self.settings = settings
        self.store = store
        self.prompts = prompts
        prompts.require(PROMPTS)
        prompts.require(purpose_prompts(settings.default_purpose))

    async def __call__(self, call: Call) -> None:
        await self.capture_consent(call)

    async def capture_consent(self, call: Call) -> None:
        s = self.settings
        ch = call.agi
        dialogue = Dialogue(call=call, prompts=self.prompts)
        # The safe value first: anything that ends this call early leaves "error".
        await ch.set_variable(cv.CONSENT_RESULT, cv.RESULT_ERROR)
        await ch.set_variable(cv.CONSENT_EVENT_ID, "")
        purpose = call.purpose = call.params.get("purpose") or s.default_purpose
        method_key = call.params.get("method", "inbound")
        number: _Number | None = None
        try:
            if not _PURPOSE.fullmatch(purpose) or not all(
                    map(self.prompts.has, purpose_prompts(purpose))):
                # We cannot tell the caller what they would agree to: ask nothing.
                raise _NoDecision("unknown_purpose")
            if method_key not in METHODS:
                raise _NoDecision("unknown_method")
            # the kit passes it in the URL (one round trip fewer); otherwise ask Asterisk
            given = call.params.get("linkedid", "")
            linkedid = (given if _LINKEDID.fullmatch(given)
                        else await ch.get_variable("CHANNEL(linkedid)"))
            # The kit Answer()s before AGI() and says so (answered=1): an ANSWER on a
            # channel that is up is a round trip that does nothing (res_agi handle_answer)
            if call.params.get("answered") != "1":
                await ch.answer()
            if method_key == "agent_transfer":
                await dialogue.play("transfer-intro")
            # Identification plays whole, uninterrupted: the evidence then shows the caller
            # heard who is asking and how to reach them before any key counted.
            await dialogue.play("identify")
            number = await self._caller_number(call, dialogue)
            call.number = number.e164
            decision = await self._ask(dialogue, purpose)
            await self._commit(call, dialogue, number, purpose, METHODS[method_key],
                               decision, linkedid)
            if method_key == "agent_transfer":
                await dialogue.play("transfer-return")
        except _NoDecision as nd:
            call.outcome = cv.RESULT_NO_DECISION if nd.reason != "storage_unavailable" else "error"
            # The attempt row is audit, not the caller's business: it is written while the
            # closing prompt plays (a caller no longer waits a commit, or the database
            # timeout in an outage, in silence), and the call ends only once it is stored
            # or journaled.
            writing = asyncio.create_task(self.store.record_attempt(self._attempt_record(
                call, dialogue, "no_decision", nd.reason, number, purpose)))
            try:
                if ch.hung_up:
                    return
                if nd.reason == "storage_unavailable":
                    await dialogue.play("error")
                    await ch.set_variable(cv.CONSENT_APOLOGISED, "yes")
                    return  # CONSENT_RESULT stays "error"
                if nd.reason in {"unknown_purpose", "unknown_method"}:
                    return  # CONSENT_RESULT stays "error": the dialplan is misconfigured
                await ch.set_variable(cv.CONSENT_RESULT, cv.RESULT_NO_DECISION)
                await dialogue.play("no-decision")
            finally:
                await asyncio.shield(writing)
        except AGIHangup:
            if not self._decided(call):  # a decision already stored stands
                call.outcome = "hangup"
                await self.store.record_attempt(self._attempt_record(
                    call, dialogue, "hangup", "caller_hung_up", number, purpose))
            raise
        except AGIAppError as exc:
            # A prompt could not be played: the caller did not hear the question.
            call.outcome = "error"
            call.log.error("prompt_failed", error=str(exc))
            if not self._decided(call):
                await self.store.record_attempt(self._attempt_record(
                    call, dialogue, "error", "prompt_failed", number, purpose))

    @staticmethod
    def _decided(call: Call) -> bool:
        return call.outcome in {cv.RESULT_OPTED_IN, cv.RESULT_OPTED_OUT}

    # ----------------------------------------------------------------- steps

    async def _caller_number(self, call: Call, dialogue: Dialogue) -> _Number:
        env = call.env
        if not presentation_restricted(env.get("callingpres", "0")):
            e164 = normalise(env.callerid, self.settings.default_region)
            if e164 is not None:
                return _Number(e164, "caller_id")
        return await self._keyed_number(call, dialogue)

    async def _keyed_number(self, call: Call, dialogue: Dialogue) -> _Number:
        """Withheld or invalid caller ID: the caller keys in their number, then confirms."""
        s = self.settings
        ch = call.agi
        for _ in range(s.max_tries):
            prompt = self.prompts.get("enter-number", dialogue.lang)
            got = await ch.get_data(
                self.prompts.path_for("enter-number"), s.digit_timeout_ms, 15,
                max_seconds=prompt.deadline_s(),
            )
            dialogue.heard.append(prompt.heard(interrupted=bool(got.digits)))
            if got.digits:
                dialogue.pressed("enter_number", got.digits)
            e164 = normalise(got.digits, s.default_region) if got.digits.isdigit() else None
            if e164 is None:
                await dialogue.play("invalid-key" if got.digits else "no-input")
                continue
            await dialogue.play("number-readback")
            await ch.say_digits(got.digits)
            key = await dialogue.ask("number-confirm", "confirm_number", "12", s.digit_timeout_ms)
            if key == "1":
                return _Number(e164, "keyed_in")
            if key is None:
                await dialogue.play("no-input")
        raise _NoDecision("number_not_confirmed")

    async def _ask(self, dialogue: Dialogue, purpose: str) -> str:
        """The question, with re-prompts; returns 'opt_in' or 'opt_out'."""
        s = self.settings
        tries = repeats = 0
        last_problem = "timeout"
        while tries < s.max_tries:
            key = await dialogue.ask(
                f"question-{purpose}", "question", ALL_KEYS, s.digit_timeout_ms
            )
            if key == s.key_repeat and repeats < MAX_REPEATS:
                repeats += 1
                continue
            if key == s.key_opt_out:
                return "opt_out"
            if key == s.key_opt_in:
                return await self._confirm(dialogue, purpose)
            tries += 1
            last_problem = "timeout" if key is None else "invalid_keys"
            if tries < s.max_tries:
                await dialogue.play("no-input" if key is None else "invalid-key")
        raise _NoDecision(last_problem)

    async def _confirm(self, dialogue: Dialogue, purpose: str) -> str:
        """Opt-in needs the statement heard whole, then a second positive action.

        A key pressed during the statement (a fast double press included) is recorded as
        ignored and counts for nothing; the instruction that follows is one GET OPTION, so a
        key pressed once it starts is never lost. Anything but the confirm key cancels.
        """
        s = self.settings
        await dialogue.play_statement(f"statement-{purpose}", "statement")
        for attempt in range(s.max_tries):
            key = await dialogue.ask("confirm-opt-in", "confirm", ALL_KEYS, s.digit_timeout_ms)
            if key == s.key_confirm:
                return "opt_in"
            if key is not None:
                await dialogue.play("cancelled")
                raise _NoDecision("cancelled")
            if attempt + 1 < s.max_tries:
                await dialogue.play("no-input")
        raise _NoDecision("not_confirmed")

    async def _commit(
        self,
        call: Call,
        dialogue: Dialogue,
        number: _Number,
        purpose: str,
        method: str,
        decision: str,
        linkedid: str | None,
    ) -> None:
        if decision == "opt_in" and not dialogue.heard_in_full(f"statement-{purpose}"):
            # by construction unreachable (_confirm plays it first); kept so that no later
            # change to the steps can store an opt-in the caller was not told about
            raise _NoDecision("statement_not_heard")
        decision_record = dialogue.decision(
            step="decision",
            number_e164=number.e164,
            organisation=self.settings.organisation,
            purpose=purpose,
            decision=decision,
            method=method,
            evidence_strength=number.strength,
            instance=self.settings.instance,
            linkedid=linkedid,
        )
        asked_ms = call.offset_ms()
        try:
            result: CommitResult = await self.store.commit_decision(decision_record)
        except StorageUnavailable:
            raise _NoDecision("storage_unavailable") from None
        opted_in = decision == "opt_in"
        call.outcome = cv.RESULT_OPTED_IN if opted_in else cv.RESULT_OPTED_OUT
        call.decision, call.event_id, call.journaled = decision, result.event_id, result.journaled
        call.commit_ms = call.offset_ms() - asked_ms
        # call_finished carries the decision at info level; this line is for debugging
        call.log.debug(
            "consent_recorded",
            decision=decision,
            purpose=purpose,
            event_id=result.event_id,
            journaled=result.journaled,
            duplicate=not result.created,
            number=number.e164,
        )
        # Durable now: only from here may the caller hear that it was recorded.
        await call.agi.set_variable(cv.CONSENT_EVENT_ID, str(result.event_id or ""))
        await call.agi.set_variable(
            cv.CONSENT_RESULT, cv.RESULT_OPTED_IN if opted_in else cv.RESULT_OPTED_OUT
        )
        await dialogue.play("opted-in" if opted_in else "opted-out")

    def _attempt_record(
        self,
        call: Call,
        dialogue: Dialogue,
        outcome: str,
        reason: str,
        number: _Number | None,
        purpose: str,
    ) -> AttemptRecord:
        """What the call left behind: keys and prompts so far (copied now)."""
        env = call.env
        return (
            AttemptRecord(
                route=call.route,
                outcome=outcome,
                reason=reason,
                idempotency_key=idempotency_key(call.call_id, env.channel_name, "attempt"),
                instance=self.settings.instance,
                number_e164=number.e164 if number else normalise(env.callerid,
                                                                 self.settings.default_region),
                organisation=self.settings.organisation,
                purpose=purpose,
                digits=tuple(dialogue.digits),
                prompts=tuple(dialogue.heard),
                uniqueid=env.uniqueid or None,
                channel_name=env.channel_name or None,
                callerid_num=env.callerid,
                callerid_name=env.calleridname,
                call_started_at=call.started_at,
                ended_at=datetime.now(UTC),
            )
        )
