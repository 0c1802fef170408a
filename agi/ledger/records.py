"""The records of consent: what a caller heard and pressed, a decision, an attempt, a stored event.

Plain frozen dataclasses and the small rules over them (the idempotency key, "heard in full");
no SQL, no I/O, so flows, reports and the dialer share them without touching a database.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any


class LedgerUnavailable(Exception):
    """The database could not be reached or answered too late. Fail closed."""


# --------------------------------------------------------------------------- types


@dataclass(frozen=True, slots=True)
class DigitPress:
    """One key the caller pressed, at which step, how long after the call started.

    ``ignored``: pressed while a statement played whole (it counted for nothing, and the
    record says so rather than losing it).
    """

    step: str
    digit: str
    offset_ms: int
    ignored: bool = False


@dataclass(frozen=True, slots=True)
class PromptHeard:
    """One prompt played to the caller (whole or interrupted), with its manifest hash.

    ``heard_ms`` is how much of it the caller heard, ``length_ms`` how long it is (both
    ``None`` when unknown: events recorded before they were kept, a manifest without lengths).
    """

    id: str
    lang: str
    sha256: str
    text: str
    interrupted: bool = False
    heard_ms: int | None = None
    length_ms: int | None = None

    @property
    def heard_in_full(self) -> bool | None:
        """True when played to its end; None when the lengths are unknown."""
        return heard_in_full(self.interrupted, self.heard_ms, self.length_ms)


def idempotency_key(call_id: str, scope: str, step: str) -> str:
    """``<call>|<scope>|<step>``: the one row a step of one call may write, however often the
    write is retried or replayed. ``call_id`` is Asterisk's uniqueid (the server's own id
    only when Asterisk sent none); ``scope`` the channel name, or the route's name.

    Mirrored in SQL by :mod:`agi.ledger.sessions`
    (``call_id || '|' || channel_name || '|attempt'``) for the attempts it files after a crash;
    tests/integration/test_reliability_sessions.py holds
    the two to the same text.
    """
    return f"{call_id}|{scope}|{step}"


def heard_in_full(interrupted: bool, heard_ms: int | None, length_ms: int | None) -> bool | None:
    """Was a prompt heard to its end? ``None`` when its lengths were not recorded."""
    if interrupted:
        return False
    if heard_ms is None or length_ms is None:
        return None
    return heard_ms >= length_ms


def statement_heard(prompts: Sequence[Mapping[str, Any]], purpose: str) -> str:
    """Was the purpose's statement heard in full on the call that made this decision?

    ``yes``; ``no`` (played, but not to its end); ``unknown`` (played, lengths not recorded:
    events from before they were kept); ``not played`` (an opt-out needs none; imports and
    events recorded before statements existed have none).
    """
    verdicts = [heard_in_full(bool(p.get("interrupted")), p.get("heard_ms"), p.get("length_ms"))
                for p in prompts if p.get("id") == f"statement-{purpose}"]
    if not verdicts:
        return "not played"
    if True in verdicts:
        return "yes"
    return "no" if False in verdicts else "unknown"


@dataclass(frozen=True, slots=True)
class ConsentDecision:
    """Everything recorded with one decision: who, when, how, and what they heard."""

    number_e164: str
    organisation: str
    purpose: str
    decision: str  # 'opt_in' | 'opt_out'
    method: str
    evidence_strength: str  # 'caller_id' | 'keyed_in' | 'import'
    decided_at: datetime
    idempotency_key: str
    instance: str
    #: the legal channel the consent covers (the ledger's column ``channel``), never Asterisk's
    #: channel (``channel_name``)
    consent_channel: str = "automated_call"
    digits: Sequence[DigitPress] = ()
    prompts: Sequence[PromptHeard] = ()
    uniqueid: str | None = None
    linkedid: str | None = None
    channel_name: str | None = None
    callerid_num: str | None = None
    callerid_name: str | None = None
    call_started_at: datetime | None = None
    captured_by: str = "first_party"
    third_party_name: str | None = None
    source: str = "live"

    def to_json(self) -> dict[str, Any]:
        """Plain JSON-able form (for the durable journal), keyed as the ledger's columns."""
        out = asdict(self)
        for key in ("decided_at", "call_started_at"):
            if out[key] is not None:
                out[key] = out[key].isoformat()
        out["channel"] = out.pop("consent_channel")
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ConsentDecision:
        data = dict(data)
        data["decided_at"] = datetime.fromisoformat(data["decided_at"])
        if data.get("call_started_at"):
            data["call_started_at"] = datetime.fromisoformat(data["call_started_at"])
        data["digits"] = tuple(DigitPress(**d) for d in data.get("digits", ()))
        data["prompts"] = tuple(PromptHeard(**p) for p in data.get("prompts", ()))
        if "channel" in data:  # the journal's key, as the ledger's column
            data["consent_channel"] = data.pop("channel")
        return cls(**data)


@dataclass(frozen=True, slots=True)
class AttemptRecord:
    """A call that ended without a decision (or was refused): audit, never consent."""

    route: str
    outcome: str  # no_decision | hangup | error | interrupted | refused
    reason: str
    idempotency_key: str
    instance: str
    number_e164: str | None = None
    organisation: str | None = None
    purpose: str | None = None
    digits: Sequence[DigitPress] = ()
    prompts: Sequence[PromptHeard] = ()
    uniqueid: str | None = None
    linkedid: str | None = None
    channel_name: str | None = None
    callerid_num: str | None = None
    callerid_name: str | None = None
    call_started_at: datetime | None = None
    ended_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """A consent event as stored."""

    id: int
    recorded_at: datetime
    decided_at: datetime
    number_e164: str
    organisation: str
    purpose: str
    consent_channel: str  # the column ``channel``: the legal channel the consent covers
    decision: str
    method: str
    evidence_strength: str
    captured_by: str
    third_party_name: str | None
    digits: list[dict[str, Any]]
    prompts: list[dict[str, Any]]
    uniqueid: str | None
    linkedid: str | None
    channel_name: str | None
    callerid_num: str | None
    callerid_name: str | None
    call_started_at: datetime | None
    instance: str
    source: str
    idempotency_key: str

    @property
    def statement_heard_in_full(self) -> str:
        """:func:`statement_heard` of this event's prompts: ``yes`` | ``no`` | …"""
        return statement_heard(self.prompts, self.purpose)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        for key, value in out.items():
            if isinstance(value, datetime):
                out[key] = value.isoformat()
        out["channel"] = out.pop("consent_channel")  # keyed as the ledger's column
        out["statement_heard_in_full"] = self.statement_heard_in_full
        return out


@dataclass(frozen=True, slots=True)
class ConsentStatus:
    """Answer to "what is the consent of N for P at T": the latest event, if any."""

    number_e164: str
    purpose: str
    organisation: str | None
    at: datetime
    state: str  # 'opted_in' | 'opted_out' | 'none'
    latest: StoredEvent | None
    history: list[StoredEvent] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "number": self.number_e164,
            "purpose": self.purpose,
            "organisation": self.organisation,
            "at": self.at.isoformat(),
            "state": self.state,
            "latest": self.latest.to_json() if self.latest else None,
            "history": [e.to_json() for e in self.history],
        }


# Per decision and attempt, so the dicts are spelled out: dataclasses.asdict deep-copies
# field by field (~4 µs a prompt). Same keys, same order (the fields'), same JSON.


class StorageUnavailable(Exception):
    """Neither the ledger nor the durable journal could take the decision."""


@dataclass(frozen=True, slots=True)
class CommitResult:
    """Where a decision now lives: in the ledger (with its id) or only in the journal."""

    event_id: int | None
    created: bool
    journaled: bool = False
