"""What flows depend on: small interfaces, and the prompt/keypad helpers they share.

Flows hold no SQL and no sockets. They talk to the caller through
:class:`agi.wire.channel.AGIChannel` verbs and to storage through :class:`DecisionStore`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final, Protocol

from agi.calls.prompts import PromptCatalogue
from agi.ledger.records import (
    AttemptRecord,
    CommitResult,
    ConsentDecision,
    DigitPress,
    PromptHeard,
    StorageUnavailable,
    idempotency_key,
)
from agi.server.call import Call

__all__ = ["ALL_KEYS", "CommitResult", "DecisionStore", "Dialogue", "StorageUnavailable"]

#: every keypad key: escape digits that let a prompt see whatever the caller presses
ALL_KEYS: Final = "0123456789*#"
#: keys recorded as ignored during one statement; beyond it the rest plays deaf to keys
#: (Asterisk drops them), so a stuck key cannot keep a statement from ever ending
MAX_IGNORED_KEYS: Final = 32




class DecisionStore(Protocol):
    """Durable storage of decisions and attempts, as the flows need it."""

    async def commit_decision(self, decision: ConsentDecision) -> CommitResult:
        """Persist durably before returning, or raise :class:`StorageUnavailable`."""
        ...

    async def record_attempt(self, attempt: AttemptRecord) -> None:
        """Best effort: log and swallow failures (an attempt is never consent)."""
        ...


@dataclass(slots=True)
class Dialogue:
    """The evidence of one call as it happens: prompts heard and keys pressed."""

    call: Call
    prompts: PromptCatalogue
    # the call's own lists: its ``call_finished`` line reports them too
    heard: list[PromptHeard] = field(init=False, default_factory=list)
    digits: list[DigitPress] = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        self.call.heard = self.heard
        self.call.digits = self.digits

    @property
    def lang(self) -> str:
        return self.call.env.language

    async def play(self, prompt_id: str, escape: str = "") -> str | None:
        """Play one prompt; return the digit that interrupted it (barge-in), if any.

        A prompt Asterisk cannot play raises :class:`agi.wire.protocol.AGIAppError`: the
        caller did not hear it, so the flow must not go on as if they had.
        """
        prompt = self.prompts.get(prompt_id, self.lang)
        result = await self.call.agi.stream_file(
            self.prompts.path_for(prompt_id), escape, max_seconds=prompt.deadline_s()
        )
        self.heard.append(prompt.heard(interrupted=result.digit is not None,
                                       endpos=result.endpos))
        return result.digit

    def decision(
        self,
        *,
        step: str,
        number_e164: str,
        organisation: str,
        purpose: str,
        decision: str,
        method: str,
        evidence_strength: str,
        instance: str,
        call_started_at: datetime | None = None,
        linkedid: str | None = None,
    ) -> ConsentDecision:
        """A decision carrying this call's evidence: who, the keys pressed, what was heard.

        Its idempotency key is the call (uniqueid, channel) plus ``step``, so a retried or
        replayed write of the same decision can never add a second row.
        """
        env = self.call.env
        return ConsentDecision(
            number_e164=number_e164,
            organisation=organisation,
            purpose=purpose,
            decision=decision,
            method=method,
            evidence_strength=evidence_strength,
            decided_at=datetime.now(UTC),
            idempotency_key=idempotency_key(self.call.call_id, env.channel_name, step),
            instance=instance,
            consent_channel="automated_call",
            digits=tuple(self.digits),
            prompts=tuple(self.heard),
            uniqueid=env.uniqueid or None,
            linkedid=linkedid or None,
            channel_name=env.channel_name or None,
            callerid_num=env.callerid,
            callerid_name=env.calleridname,
            call_started_at=call_started_at or self.call.started_at,
        )

    def pressed(self, step: str, digit: str, *, ignored: bool = False) -> None:
        self.digits.append(DigitPress(step=step, digit=digit, offset_ms=self.call.offset_ms(),
                                      ignored=ignored))

    async def play_statement(self, prompt_id: str, step: str, stop: str = "") -> str | None:
        """Play ``prompt_id`` to its end whatever is pressed; return a ``stop`` key that cut it.

        Any other key counts for nothing, yet is not lost: it is recorded ``ignored`` (digit,
        offset) and the statement resumes where it stopped (STREAM FILE from ``endpos``, which
        res_agi seeks to), so the evidence shows every word was played before a key could act.
        ``stop`` is for the opt-out key of an automated call, which must work throughout.
        """
        prompt = self.prompts.get(prompt_id, self.lang)
        path = self.prompts.path_for(prompt_id)
        offset = ignored = 0
        while True:
            escape = ALL_KEYS if ignored < MAX_IGNORED_KEYS else stop
            result = await self.call.agi.stream_file(
                path, escape, offset=offset, max_seconds=prompt.deadline_s(offset)
            )
            if result.digit is None:
                break  # played to its end
            if result.digit in stop:
                self.heard.append(prompt.heard(interrupted=True, endpos=result.endpos))
                return result.digit
            ignored += 1
            self.pressed(step, result.digit, ignored=True)
            if prompt.samples and result.endpos >= prompt.samples:
                break
            offset = max(offset, result.endpos)
        self.heard.append(prompt.heard())
        return None

    def heard_in_full(self, prompt_id: str) -> bool:
        """Did this call play ``prompt_id`` to its end (at least once)?"""
        return any(p.id == prompt_id and p.heard_in_full for p in self.heard)

    async def ask(self, prompt_id: str, step: str, escape: str, timeout_ms: int) -> str | None:
        """Play ``prompt_id`` (interruptible by ``escape``), then wait for one key.

        One GET OPTION, not STREAM FILE then WAIT FOR DIGIT: a key pressed between two
        commands is lost by Asterisk (transcript 29), so the wait must not have a gap.
        """
        prompt = self.prompts.get(prompt_id, self.lang)
        result = await self.call.agi.get_option(
            self.prompts.path_for(prompt_id), escape, timeout_ms, max_seconds=prompt.deadline_s()
        )
        interrupted = result.digit is not None and (
            not prompt.samples or result.endpos < prompt.samples
        )
        self.heard.append(prompt.heard(interrupted=interrupted, endpos=result.endpos))
        if result.digit is not None:
            self.pressed(step, result.digit)
        return result.digit
