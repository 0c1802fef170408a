"""The marketing gate at the moments it matters: before every Originate and before any audio.

:mod:`agi.outbound.policy` decides (pure); :mod:`agi.outbound.screening` fetches the facts
(SQL). This module joins them with what only a running process knows: opt-outs still sitting in
the durable journal because the database was down when the caller pressed the key.  Those block
at once, and a journal that cannot be read blocks everything (fail closed).

Counters live in :mod:`agi.ops.metrics` (``dial_decision``, ``marketing_refused``,
``marketing_played(with_valid_opt_in=...)``); the callers move them.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date, datetime
from pathlib import Path
from typing import Final

from agi.ledger.journal import Journal
from agi.outbound import policy
from agi.outbound.model import Campaign, ContactFacts

__all__ = [
    "CAMPAIGN_BLOCKING",
    "PERMANENT",
    "JournalUnreadable",
    "decide_dial",
    "decide_playback",
    "journal_opt_outs",
]

#: Refusals that end a contact for this campaign (retrying cannot change the answer soon).
PERMANENT: Final = frozenset(
    {
        policy.NO_CONSENT,
        policy.OPTED_OUT,
        policy.DO_NOT_CALL,
        policy.SUPPRESSED,
        policy.CONSENT_NOT_BEFORE_CALL,
        policy.WRONG_CHANNEL,
        policy.WRONG_ORGANISATION,
        policy.THIRD_PARTY_UNNAMED,
        policy.THIRD_PARTY_STALE,
        policy.INVALID_NUMBER,
        policy.UNKNOWN_TIMEZONE,
        policy.ATTEMPTS_EXHAUSTED,
    }
)
#: Refusals about the campaign, not the number: stop dialling it, leave the contact untouched.
CAMPAIGN_BLOCKING: Final = frozenset({policy.STALE_LIST, policy.CALLER_ID_MISSING})


class JournalUnreadable(Exception):
    """The durable journal could not be read: opt-outs may be hiding there. Dial nothing."""


def journal_opt_outs(journal_dir: Path, organisation: str | None = None) -> frozenset[str]:
    """Numbers with an opt-out in the journal that is not yet in the ledger.

    ``organisation=None`` returns every organisation's.  Raises :class:`JournalUnreadable`
    when the journal cannot be read, so callers refuse rather than dial past an opt-out.
    """
    try:
        out = set()
        for entry in Journal(journal_dir).entries("decision"):
            data = entry.data
            if data.get("decision") != "opt_out":
                continue
            if organisation is not None and data.get("organisation") != organisation:
                continue
            number = data.get("number_e164")
            if isinstance(number, str):
                out.add(number)
        return frozenset(out)
    except OSError as exc:
        raise JournalUnreadable(f"journal {journal_dir} unreadable: {exc}") from exc


def _profile(campaign: Campaign) -> policy.Profile | policy.Decision:
    """The campaign's profile, or the fail-closed refusal when it names none we know."""
    try:
        return campaign.policy_profile
    except policy.UnknownProfileError as exc:
        return policy.Decision(False, policy.ERROR, policy.FAIL_CLOSED_RULE, str(exc))


def decide_dial(
    campaign: Campaign,
    facts: ContactFacts,
    *,
    snapshots: dict[str, date],
    now: datetime,
    journal_numbers: Iterable[str] = (),
) -> policy.Decision:
    """The dialer's decision for one claimed contact (never raises; fails closed)."""
    profile = _profile(campaign)
    if isinstance(profile, policy.Decision):
        return profile
    decision = policy.gate(
        profile,
        number_e164=facts.number_e164,
        latest=facts.latest,
        organisation=campaign.organisation,
        call_started_at=now,
        suppressed=facts.suppressed,
        do_not_call=facts.do_not_call or facts.number_e164 in set(journal_numbers),
        snapshots=snapshots,
        attempts_made=facts.attempts,
        max_attempts=campaign.max_attempts,
        last_attempt_at=facts.last_attempt_at,
        retry_spacing=campaign.retry_spacing,
        caller_id=campaign.caller_id,
        campaign_window=campaign.window,
    )
    return decision


def decide_playback(
    campaign: Campaign,
    facts: ContactFacts,
    *,
    call_started_at: datetime,
    journal_numbers: Iterable[str] = (),
) -> policy.Decision:
    """The in-call re-check right before marketing audio (never raises; fails closed)."""
    profile = _profile(campaign)
    if isinstance(profile, policy.Decision):
        return profile
    decision = policy.gate_playback(
        profile,
        number_e164=facts.number_e164,
        latest=facts.latest,
        organisation=campaign.organisation,
        call_started_at=call_started_at,
        suppressed=facts.suppressed,
        do_not_call=facts.do_not_call or facts.number_e164 in set(journal_numbers),
    )
    return decision
