"""The campaign model: the records the outbound stores, the gate, the dialer and the
marketing route share (campaigns, contact facts, dial jobs and claims, import reports).

Pure data, no SQL: the stores (:mod:`agi.outbound.campaigns`, :mod:`~agi.outbound.lists`,
:mod:`~agi.outbound.screening`, :mod:`~agi.outbound.claims`, :mod:`~agi.outbound.plays`) write
and read them, :mod:`agi.outbound.gate` decides on them; with the records here neither of
those imports the other's types in a cycle.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from typing import Any, Final

import phonenumbers

from agi.outbound import policy

__all__ = [
    "LISTS",
    "Campaign",
    "CampaignError",
    "CampaignSpec",
    "Claim",
    "ContactFacts",
    "DialJob",
    "DialledAttempt",
    "ImportReport",
    "RejectedRow",
    "ScreenRow",
    "SuppressionReport",
]

LISTS: Final = ("tps", "ctps", "us-dnc", "internal")
_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")


class CampaignError(Exception):
    """Invalid campaign definition or input (one clear sentence)."""


# --------------------------------------------------------------------------- types


@dataclass(frozen=True, slots=True)
class CampaignSpec:
    """What ``campaign create`` takes."""

    name: str
    organisation: str
    purpose: str
    caller_id: str
    dial_template: str
    profile: str = policy.DEFAULT_PROFILE
    audio_prompt: str = "campaign-demo"
    window: tuple[time, time] | None = None
    default_region: str = "GB"
    pacing_cps: float = 1.0
    max_concurrent: int = 10
    max_attempts: int = 3
    retry_spacing: timedelta = timedelta(hours=4)
    ring_seconds: int = 25
    opt_out_key: str = "9"
    #: ask callees who hold an opt-in to re-confirm it (1) or stop (the opt-out key)
    reconfirm: bool = False

    def validate(self) -> None:
        """Raise :class:`CampaignError` naming the first invalid field."""
        if not _NAME.fullmatch(self.name):
            raise CampaignError(f"campaign name {self.name!r}: use a-z, 0-9, . _ - (max 64)")
        if not self.organisation.strip():
            raise CampaignError("organisation must name who is calling")
        if not _NAME.fullmatch(self.purpose):
            raise CampaignError(f"purpose {self.purpose!r}: use a-z, 0-9, . _ - (max 64)")
        try:
            profile = policy.get_profile(self.profile)
        except policy.UnknownProfileError as exc:
            raise CampaignError(str(exc)) from None
        if not _NAME.fullmatch(self.audio_prompt):
            raise CampaignError(f"audio prompt {self.audio_prompt!r} is not a prompt id")
        cid = policy.check_caller_id(profile, self.caller_id)
        if not cid.allowed:
            raise CampaignError(f"caller ID: {cid.detail} ({cid.rule})")
        if "{number}" not in self.dial_template or any(
            ch in self.dial_template for ch in "\r\n"
        ):
            raise CampaignError("dial channel template must contain {number}, e.g. "
                                "PJSIP/{number}@trunk")
        if self.default_region.upper() not in phonenumbers.SUPPORTED_REGIONS:
            raise CampaignError(f"default region {self.default_region!r} is not ISO 3166")
        if not 0 < self.pacing_cps <= 1000:
            raise CampaignError("pacing must be between 0 and 1000 calls per second")
        for label, value in (("max concurrent", self.max_concurrent),
                             ("max attempts", self.max_attempts)):
            if value < 1:
                raise CampaignError(f"{label} must be at least 1")
        if self.retry_spacing < timedelta(0):
            raise CampaignError("retry spacing must not be negative")
        if self.ring_seconds < profile.min_ring_seconds:
            raise CampaignError(
                f"ring time {self.ring_seconds}s is below the {profile.name} minimum of "
                f"{profile.min_ring_seconds}s ({profile.ring_rule})"
            )
        if self.window is not None and not self.window[0] < self.window[1]:
            raise CampaignError("calling window must be START-END with START before END")
        if len(self.opt_out_key) != 1 or self.opt_out_key not in "0123456789*#":
            raise CampaignError("opt-out key must be one keypad key")
        if self.reconfirm and self.opt_out_key == "1":
            raise CampaignError("re-confirmation keeps the opt-in with 1: the opt-out key "
                                "must be another key")


@dataclass(frozen=True, slots=True)
class Campaign:
    """A stored campaign."""

    id: int
    name: str
    organisation: str
    purpose: str
    profile: str
    audio_prompt: str
    window: tuple[time, time] | None
    caller_id: str
    dial_template: str
    default_region: str
    pacing_cps: float
    max_concurrent: int
    max_attempts: int
    retry_spacing: timedelta
    ring_seconds: int
    opt_out_key: str
    status: str
    halted_at: datetime | None
    halt_reason: str | None
    created_at: datetime
    reconfirm: bool = False

    @property
    def policy_profile(self) -> policy.Profile:
        return policy.get_profile(self.profile)

    def dial_string(self, number_e164: str) -> str:
        return self.dial_template.replace("{number}", number_e164)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "organisation": self.organisation,
            "purpose": self.purpose,
            "profile": self.profile,
            "audio_prompt": self.audio_prompt,
            "window": None if self.window is None
            else f"{self.window[0].isoformat('minutes')}-{self.window[1].isoformat('minutes')}",
            "caller_id": self.caller_id,
            "dial_template": self.dial_template,
            "default_region": self.default_region,
            "pacing_cps": self.pacing_cps,
            "max_concurrent": self.max_concurrent,
            "max_attempts": self.max_attempts,
            "retry_spacing_s": int(self.retry_spacing.total_seconds()),
            "ring_seconds": self.ring_seconds,
            "opt_out_key": self.opt_out_key,
            "reconfirm": self.reconfirm,
            "status": self.status,
            "halted_at": self.halted_at.isoformat() if self.halted_at else None,
            "halt_reason": self.halt_reason,
        }


@dataclass(frozen=True, slots=True)
class RejectedRow:
    line: int
    raw: str
    reason: str


@dataclass(slots=True)
class ImportReport:
    """What a contacts import did: nothing is dropped without a line here."""

    rows: int = 0
    added: int = 0
    already_present: int = 0
    duplicates: list[RejectedRow] = field(default_factory=list)
    rejected: list[RejectedRow] = field(default_factory=list)


@dataclass(slots=True)
class SuppressionReport:
    snapshot_id: int = 0
    list_name: str = ""
    as_of: date | None = None
    numbers: int = 0
    rejected: list[RejectedRow] = field(default_factory=list)
    replaced_snapshot: int | None = None


@dataclass(frozen=True, slots=True)
class ContactFacts:
    """Everything the gate needs about one number for one campaign, fetched in one query."""

    contact_id: int | None
    number_e164: str
    time_zones: tuple[str, ...]
    state: str
    attempts: int
    last_attempt_at: datetime | None
    latest: policy.ConsentEvent | None
    do_not_call: bool
    suppressed: bool


@dataclass(frozen=True, slots=True)
class ScreenRow:
    number_e164: str
    state: str
    reason: str
    consent_event_id: int | None


@dataclass(frozen=True, slots=True)
class DialledAttempt:
    """A ``dial_attempt`` row as the marketing route checks it: which campaign, which
    number, when the dialer decided (consent recorded after that is not prior consent)."""

    id: int
    campaign_id: int
    number_e164: str
    decided_at: datetime
    state: str
    allowed: bool


@dataclass(frozen=True, slots=True)
class DialJob:
    """A contact claimed for one attempt that the gate allowed: dial it exactly once."""

    attempt_id: int
    action_id: str
    contact_id: int
    campaign_id: int
    number_e164: str
    attempt_no: int
    dial_string: str
    caller_id: str
    organisation: str
    ring_seconds: int
    consent_event_id: int | None


@dataclass(frozen=True, slots=True)
class Claim:
    """What one claim transaction did.

    ``kind``: ``dial`` (``job`` set), ``refused`` (the gate refused one contact; a
    ``dial_attempt`` row says why), ``blocked`` (a campaign-level refusal such as a stale list:
    nothing may be dialled), ``halted`` / ``paused``, ``busy`` (max concurrent reached),
    ``wait`` (pacing: ``wait_s``), ``idle`` (nothing due: ``next_due``, ``in_flight``).
    """

    kind: str
    job: DialJob | None = None
    decision: policy.Decision | None = None
    wait_s: float = 0.0
    next_due: datetime | None = None
    in_flight: int = 0
