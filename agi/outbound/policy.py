"""Jurisdiction profiles and the pure, fail-closed marketing gate.

Everything here is pure: no IO, no database, no asyncio, no clock reads.  The ledger and the
dialer fetch facts (the latest consent event, suppression flags, list snapshot dates, attempt
counts) and hand them in; this module answers "may we?" with a :class:`Decision` that carries a
machine reason code and the legal reference it rests on.

Profiles are data (:class:`Profile`, frozen) selected by name via :func:`get_profile`; the
default is ``uk-pecr``.  ``docs/policy.md`` is the human-readable table of the same rules.

Fail-closed is the contract: :func:`gate` and :func:`gate_playback` never raise and never
return ``allowed=True`` unless every check positively passed; an unexpected exception becomes a
refusal with reason ``"error"``.  The individual ``check_*`` functions raise ``ValueError`` on
inputs that are programming errors (naive datetimes, negative counts) rather than guessing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from types import MappingProxyType
from typing import Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import phonenumbers
from phonenumbers import PhoneNumberType
from phonenumbers import timezone as pn_timezone

__all__ = [
    "ALLOWED",
    "ATTEMPTS_EXHAUSTED",
    "CALLER_ID_MISSING",
    "CAMPAIGN_WINDOW_RULE",
    "CONSENT_NOT_BEFORE_CALL",
    "DEFAULT_PROFILE",
    "DO_NOT_CALL",
    "ERROR",
    "FAIL_CLOSED_RULE",
    "INVALID_NUMBER",
    "NO_CONSENT",
    "OPTED_OUT",
    "OUTSIDE_HOURS",
    "PROFILES",
    "REASONS",
    "RETRY_TOO_SOON",
    "STALE_LIST",
    "SUPPRESSED",
    "THIRD_PARTY_STALE",
    "THIRD_PARTY_UNNAMED",
    "UNKNOWN_TIMEZONE",
    "WRONG_CHANNEL",
    "WRONG_ORGANISATION",
    "ConsentEvent",
    "Decision",
    "Profile",
    "UnknownProfileError",
    "check_attempts",
    "check_caller_id",
    "check_calling_hours",
    "check_snapshot_freshness",
    "evaluate_consent",
    "gate",
    "gate_playback",
    "get_profile",
    "is_marketing_purpose",
    "time_zones_for",
]

# --- reason codes (machine-readable; stored in dial_attempt / marketing_refused rows) ------------

ALLOWED: Final = "allowed"
NO_CONSENT: Final = "no_consent"
OPTED_OUT: Final = "opted_out"
DO_NOT_CALL: Final = "do_not_call"
CONSENT_NOT_BEFORE_CALL: Final = "consent_not_before_call"
WRONG_CHANNEL: Final = "wrong_channel"
WRONG_ORGANISATION: Final = "wrong_organisation"
THIRD_PARTY_UNNAMED: Final = "third_party_unnamed"
THIRD_PARTY_STALE: Final = "third_party_stale"
SUPPRESSED: Final = "suppressed"
STALE_LIST: Final = "stale_list"
OUTSIDE_HOURS: Final = "outside_hours"
UNKNOWN_TIMEZONE: Final = "unknown_timezone"
ATTEMPTS_EXHAUSTED: Final = "attempts_exhausted"
RETRY_TOO_SOON: Final = "retry_too_soon"
CALLER_ID_MISSING: Final = "caller_id_missing"
INVALID_NUMBER: Final = "invalid_number"
ERROR: Final = "error"

REASONS: Final[frozenset[str]] = frozenset(
    {
        ALLOWED,
        NO_CONSENT,
        OPTED_OUT,
        DO_NOT_CALL,
        CONSENT_NOT_BEFORE_CALL,
        WRONG_CHANNEL,
        WRONG_ORGANISATION,
        THIRD_PARTY_UNNAMED,
        THIRD_PARTY_STALE,
        SUPPRESSED,
        STALE_LIST,
        OUTSIDE_HOURS,
        UNKNOWN_TIMEZONE,
        ATTEMPTS_EXHAUSTED,
        RETRY_TOO_SOON,
        CALLER_ID_MISSING,
        INVALID_NUMBER,
        ERROR,
    }
)

#: Rule string for refusals that come from this product's own fail-closed policy, not a statute.
FAIL_CLOSED_RULE: Final = "consent-ivr fail-closed policy"
CAMPAIGN_WINDOW_RULE: Final = "campaign calling window"

AUTOMATED_CALL: Final = "automated_call"
FIRST_PARTY: Final = "first_party"
THIRD_PARTY: Final = "third_party"

# phonenumbers reports this pseudo-zone when it cannot place a number.
_UNKNOWN_ZONE: Final = "Etc/Unknown"

# Types a person can call back and reach the caller on at ordinary cost.  Premium rate, shared
# cost, personal numbers (UK 070), pagers and voicemail access are refused as presented caller
# IDs: Ofcom GC C6 and 47 CFR 64.1601(e) both require a number that permits a return call.
_CALLABLE_BACK_TYPES: Final[frozenset[int]] = frozenset(
    {
        PhoneNumberType.FIXED_LINE,
        PhoneNumberType.MOBILE,
        PhoneNumberType.FIXED_LINE_OR_MOBILE,
        PhoneNumberType.TOLL_FREE,
        PhoneNumberType.VOIP,
        PhoneNumberType.UAN,
    }
)

# What Asterisk and carriers put in CALLERID(num) when there is no usable number.
def _check_window(window: tuple[time, time]) -> None:
    start, end = window
    if start.tzinfo is not None or end.tzinfo is not None or not start < end:
        raise ValueError(f"calling window must be naive local times with start < end: {window!r}")


class UnknownProfileError(ValueError):
    """Raised by :func:`get_profile` for a profile name that does not exist."""


@dataclass(frozen=True, slots=True)
class Decision:
    """The answer of every check: allowed or not, why (machine code), and on which rule."""

    allowed: bool
    reason: str
    rule: str
    detail: str = ""


@dataclass(frozen=True, slots=True)
class ConsentEvent:
    """The latest ledger event for (number, organisation, purpose).

    ``consent_channel`` is the channel the consent covers ("automated_call", "live_call", ...),
    not the channel it was captured on, nor Asterisk's channel. ``captured_by`` is
    "first_party" or "third_party".
    """

    decision: str
    recorded_at: datetime
    consent_channel: str
    organisation: str
    captured_by: str
    third_party_names_organisation: bool
    event_id: int


@dataclass(frozen=True, slots=True)
class Profile:
    """A jurisdiction's rules as data.  Every ``*_rule`` field is a legal reference string."""

    name: str
    title: str
    # consent
    consent_rule: str
    consent_channels: frozenset[str]
    keypress_is_signature: bool
    third_party_rule: str
    third_party_requires_naming: bool
    third_party_max_age: timedelta | None
    political_is_marketing: bool
    political_rule: str
    # what the marketing flow must do
    identification_required: bool
    identification_rule: str
    opt_out_key_required: bool
    opt_out_offer_within_s: float | None
    opt_out_rule: str
    # dialling
    caller_id_required: bool
    caller_id_rule: str
    calling_window: tuple[time, time] | None
    hours_rule: str
    min_ring_seconds: int
    ring_rule: str
    required_lists: tuple[str, ...]
    list_max_age_days: Mapping[str, int] = field(hash=False)
    list_rules: Mapping[str, str] = field(hash=False)
    dnc_rule: str
    dnc_retention_years: int
    attempts_rule: str

    def __post_init__(self) -> None:
        # A profile that cannot be evaluated must not load at all.
        for name in self.required_lists:
            if name not in self.list_max_age_days or name not in self.list_rules:
                raise ValueError(f"profile {self.name}: list {name!r} lacks a max age or a rule")
        if self.calling_window is not None:
            _check_window(self.calling_window)
        if self.third_party_max_age is not None and self.third_party_max_age < timedelta(0):
            raise ValueError(f"profile {self.name}: negative third_party_max_age")


# The shortest span that is "six calendar months" under any reading (e.g. 1 Sep -> 1 Mar in a
# common year is 181 days).  Using it means no consent older than six months is ever accepted.
SIX_MONTHS: Final = timedelta(days=181)

UK_PECR: Final = Profile(
    name="uk-pecr",
    title="United Kingdom: Privacy and Electronic Communications Regulations 2003",
    consent_rule="PECR reg 19",
    consent_channels=frozenset({AUTOMATED_CALL}),
    keypress_is_signature=False,
    third_party_rule="PECR reg 19; ICO direct marketing guidance (indirect consent)",
    third_party_requires_naming=True,
    third_party_max_age=SIX_MONTHS,
    political_is_marketing=True,
    political_rule="PECR reg 2(2) / DPA 2018 s.122(5); ICO political campaigning guidance",
    identification_required=True,
    identification_rule="PECR reg 24",
    opt_out_key_required=True,
    opt_out_offer_within_s=None,
    opt_out_rule="PECR reg 19(2); UK GDPR art. 21(3)",
    caller_id_required=True,
    caller_id_rule="PECR reg 19 as amended by SI 2016/524 (CLI); Ofcom GC C6",
    calling_window=None,
    hours_rule="PECR (no statutory calling hours)",
    min_ring_seconds=20,
    ring_rule="Ofcom persistent misuse statement (no fixed minimum; 20 s default)",
    required_lists=("tps", "ctps"),
    list_max_age_days=MappingProxyType({"tps": 28, "ctps": 28}),
    list_rules=MappingProxyType(
        {"tps": "PECR reg 21 & 26 (TPS)", "ctps": "PECR reg 21 & 26 (CTPS)"}
    ),
    dnc_rule="PECR reg 19(2), 21(1)(a)",
    dnc_retention_years=5,
    attempts_rule="Communications Act 2003 s.128 (Ofcom persistent misuse policy)",
)

US_TCPA: Final = Profile(
    name="us-tcpa",
    title="United States: Telephone Consumer Protection Act, 47 CFR 64.1200",
    consent_rule="47 CFR 64.1200(a)(2)",
    consent_channels=frozenset({AUTOMATED_CALL}),
    keypress_is_signature=True,
    third_party_rule="47 CFR 64.1200(f)(9) (written agreement naming the seller)",
    third_party_requires_naming=True,
    third_party_max_age=None,
    political_is_marketing=True,
    political_rule="47 U.S.C. 227(b)(1); consent-ivr treats political calls as marketing",
    identification_required=True,
    identification_rule="47 CFR 64.1200(b)(1)",
    opt_out_key_required=True,
    opt_out_offer_within_s=2.0,
    opt_out_rule="47 CFR 64.1200(b)(3)",
    caller_id_required=True,
    caller_id_rule="47 CFR 64.1601(e)",
    calling_window=(time(8, 0), time(21, 0)),
    hours_rule="47 CFR 64.1200(c)(1)",
    min_ring_seconds=20,
    ring_rule="47 CFR 64.1200(a)(6)",
    required_lists=("us-dnc",),
    list_max_age_days=MappingProxyType({"us-dnc": 31}),
    list_rules=MappingProxyType({"us-dnc": "47 CFR 64.1200(c)(2)(i)(D)"}),
    dnc_rule="47 CFR 64.1200(d)(3), (d)(6)",
    dnc_retention_years=5,
    attempts_rule="47 CFR 64.1200(a)(7) (abandonment; campaign attempt limit)",
)

EU_EPRIVACY: Final = Profile(
    name="eu-eprivacy",
    title="European Union: ePrivacy Directive 2002/58/EC",
    consent_rule="ePrivacy Directive art. 13(1)",
    consent_channels=frozenset({AUTOMATED_CALL}),
    keypress_is_signature=False,
    third_party_rule="ePrivacy Directive art. 13(1); GDPR art. 4(11), 7 (specific consent)",
    third_party_requires_naming=True,
    third_party_max_age=None,
    political_is_marketing=True,
    political_rule="ePrivacy Directive art. 13(1); consent-ivr treats political calls as marketing",
    identification_required=True,
    identification_rule="GDPR art. 13/14 (consent-ivr default)",
    opt_out_key_required=True,
    opt_out_offer_within_s=None,
    opt_out_rule="GDPR art. 7(3), 21(3)",
    caller_id_required=True,
    caller_id_rule="consent-ivr default (national law varies)",
    calling_window=None,
    hours_rule="ePrivacy Directive (no EU-wide calling hours; use a campaign window)",
    min_ring_seconds=20,
    ring_rule="consent-ivr default (no EU-wide minimum)",
    required_lists=(),
    list_max_age_days=MappingProxyType({}),
    list_rules=MappingProxyType({}),
    dnc_rule="GDPR art. 21(3)",
    dnc_retention_years=5,
    attempts_rule="consent-ivr campaign attempt limit",
)

DEFAULT_PROFILE: Final = "uk-pecr"

PROFILES: Final[Mapping[str, Profile]] = MappingProxyType(
    {p.name: p for p in (UK_PECR, US_TCPA, EU_EPRIVACY)}
)


def get_profile(name: str | None = None) -> Profile:
    """Return the profile called ``name`` (``None`` selects :data:`DEFAULT_PROFILE`).

    Matching ignores surrounding whitespace and case; anything else raises
    :class:`UnknownProfileError`, so a typo in a campaign can never fall back to a laxer profile.
    """
    if name is None:
        return PROFILES[DEFAULT_PROFILE]
    key = name.strip().lower()
    try:
        return PROFILES[key]
    except KeyError:
        known = ", ".join(sorted(PROFILES))
        raise UnknownProfileError(f"unknown policy profile {name!r}; known: {known}") from None


def is_marketing_purpose(profile: Profile, purpose: str) -> bool:
    """Whether calls for ``purpose`` must pass the marketing gate under ``profile``.

    Only purposes known to be non-marketing ("service", "transactional") escape; "political"
    follows ``profile.political_is_marketing``; anything unknown is marketing (fail closed).
    """
    key = purpose.strip().lower()
    if key == "political":
        return profile.political_is_marketing
    return key not in {"service", "transactional"}


# --- numbers -------------------------------------------------------------------------------------


def _parse_e164(e164: str) -> phonenumbers.PhoneNumber | None:
    """Parse a canonical, valid E.164 string; anything else (including spaced forms) is None.

    Non-canonical input is refused rather than repaired: suppression and do-not-call lookups are
    keyed by canonical E.164, so a differently written number would silently miss them.
    """
    if not isinstance(e164, str) or not e164.startswith("+"):
        return None
    try:
        parsed = phonenumbers.parse(e164, None)
    except phonenumbers.NumberParseException:
        return None
    if parsed.extension or not phonenumbers.is_valid_number(parsed):
        return None
    if phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164) != e164:
        return None
    return parsed


def time_zones_for(e164: str) -> tuple[str, ...]:
    """The IANA zones phonenumbers places ``e164`` in; empty when it cannot place it."""
    parsed = _parse_e164(e164)
    if parsed is None:
        return ()
    zones = tuple(pn_timezone.time_zones_for_number(parsed))
    if _UNKNOWN_ZONE in zones:
        return ()
    return zones


def _check_number(e164: str) -> Decision:
    if _parse_e164(e164) is None:
        return Decision(
            False, INVALID_NUMBER, FAIL_CLOSED_RULE, f"not a valid E.164 number: {e164!r}"
        )
    return Decision(True, ALLOWED, FAIL_CLOSED_RULE)


# --- consent -------------------------------------------------------------------------------------


def _require_aware(value: datetime, what: str) -> None:
    if not isinstance(value, datetime) or value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{what} must be a timezone-aware datetime, got {value!r}")


def evaluate_consent(
    profile: Profile,
    latest: ConsentEvent | None,
    *,
    organisation: str,
    call_started_at: datetime,
) -> Decision:
    """Decide whether ``latest`` (the newest ledger event) is a valid opt-in for this call.

    Checked in order: no event; opt-out (an opt-out after an opt-in is the latest event, so it
    wins); unknown decision value; recorded at or after the call started (consent must *prior*:
    exactly at the start is refused); consent for another channel (e.g. live calls only); another
    organisation; then, for third-party capture, that it names this organisation and is at most
    ``profile.third_party_max_age`` old at call start.
    """
    _require_aware(call_started_at, "call_started_at")
    rule = profile.consent_rule
    if latest is None:
        return Decision(False, NO_CONSENT, rule, "no consent event on record")
    if not isinstance(latest, ConsentEvent):
        raise ValueError(f"latest must be a ConsentEvent or None, got {type(latest).__name__}")
    _require_aware(latest.recorded_at, "ConsentEvent.recorded_at")
    ref = f"event {latest.event_id}"
    if latest.decision == "opt_out":
        return Decision(False, OPTED_OUT, profile.dnc_rule, f"{ref}: latest event is an opt-out")
    if latest.decision != "opt_in":
        return Decision(False, NO_CONSENT, rule, f"{ref}: unknown decision {latest.decision!r}")
    if latest.recorded_at >= call_started_at:
        return Decision(
            False,
            CONSENT_NOT_BEFORE_CALL,
            rule,
            f"{ref}: recorded {latest.recorded_at.isoformat()}, "
            f"call started {call_started_at.isoformat()}",
        )
    if latest.consent_channel not in profile.consent_channels:
        return Decision(False, WRONG_CHANNEL, rule,
                        f"{ref}: consent covers {latest.consent_channel!r}")
    if not organisation or latest.organisation != organisation:
        return Decision(
            False,
            WRONG_ORGANISATION,
            rule,
            f"{ref}: consent names {latest.organisation!r}, caller is {organisation!r}",
        )
    if latest.captured_by == THIRD_PARTY:
        refused = _check_third_party(profile, latest, organisation, call_started_at, ref)
        if refused is not None:
            return refused
    elif latest.captured_by != FIRST_PARTY:
        return Decision(False, NO_CONSENT, rule, f"{ref}: unknown capture {latest.captured_by!r}")
    return Decision(True, ALLOWED, rule, f"{ref}: valid opt-in")


def _check_third_party(
    profile: Profile,
    latest: ConsentEvent,
    organisation: str,
    call_started_at: datetime,
    ref: str,
) -> Decision | None:
    """The refusal of a third-party opt-in, or None when it may be relied on.

    Consent a list seller collected counts only if it named this organisation (where the
    profile requires naming) and is at most ``profile.third_party_max_age`` old at call start.
    """
    if profile.third_party_requires_naming and latest.third_party_names_organisation is not True:
        return Decision(
            False,
            THIRD_PARTY_UNNAMED,
            profile.third_party_rule,
            f"{ref}: third-party consent does not name {organisation!r}",
        )
    max_age = profile.third_party_max_age
    if max_age is not None:
        age = call_started_at - latest.recorded_at
        if age > max_age:
            return Decision(
                False,
                THIRD_PARTY_STALE,
                profile.third_party_rule,
                f"{ref}: third-party consent is {age} old (max {max_age})",
            )
    return None


# --- calling hours -------------------------------------------------------------------------------


def check_calling_hours(
    profile: Profile,
    e164: str,
    at: datetime,
    *,
    campaign_window: tuple[time, time] | None = None,
) -> Decision:
    """Whether ``at`` falls inside the calling window(s) in the callee's local time.

    Both the profile's statutory window and the campaign's own window (if any) must hold; a
    refusal cites whichever failed.  Windows are half-open (``start <= local < end``), so under
    us-tcpa 08:00:00 is allowed and 21:00:00 is refused.  Local time comes from zoneinfo, so DST
    days are handled.  A number phonenumbers places in several zones must be inside the window
    in *every* one of them (the most restrictive reading); a number it cannot place, or a zone
    missing from the tz database, is refused as ``unknown_timezone``.  With no window at all the
    check passes without needing a zone.
    """
    _require_aware(at, "at")
    windows: list[tuple[tuple[time, time], str]] = []
    if profile.calling_window is not None:
        windows.append((profile.calling_window, profile.hours_rule))
    if campaign_window is not None:
        _check_window(campaign_window)
        windows.append((campaign_window, CAMPAIGN_WINDOW_RULE))
    if not windows:
        return Decision(True, ALLOWED, profile.hours_rule, "no calling window applies")
    zone_rule = windows[0][1]
    if _parse_e164(e164) is None:
        return Decision(
            False, INVALID_NUMBER, FAIL_CLOSED_RULE, f"not a valid E.164 number: {e164!r}"
        )
    zones = time_zones_for(e164)
    if not zones:
        return Decision(False, UNKNOWN_TIMEZONE, zone_rule, f"cannot place {e164} in a time zone")
    for zone_name in zones:
        try:
            zone = ZoneInfo(zone_name)
        except (ZoneInfoNotFoundError, ValueError):
            return Decision(
                False, UNKNOWN_TIMEZONE, zone_rule, f"time zone {zone_name} not installed"
            )
        local = at.astimezone(zone)
        for (start, end), rule in windows:
            if not start <= local.time() < end:
                return Decision(
                    False,
                    OUTSIDE_HOURS,
                    rule,
                    f"{local.isoformat()} in {zone_name} is outside "
                    f"{start.isoformat()}-{end.isoformat()}",
                )
    return Decision(True, ALLOWED, zone_rule, f"inside calling hours in {', '.join(zones)}")


# --- lists, attempts, caller ID ------------------------------------------------------------------


def check_snapshot_freshness(
    profile: Profile, snapshots: Mapping[str, date | None], today: date
) -> Decision:
    """Every list the profile requires must have a snapshot at most its max age (in days) old.

    Age equal to the max is fresh, one day more is stale; a missing snapshot, or one dated after
    ``today`` (a clock or import error), is stale.  A stale list refuses *all* dialling, whatever
    the consent, until the list is refreshed.
    """
    if isinstance(today, datetime) or not isinstance(today, date):
        raise ValueError(f"today must be a date, got {today!r}")
    if not isinstance(snapshots, Mapping):
        raise ValueError(f"snapshots must be a mapping, got {type(snapshots).__name__}")
    for name in profile.required_lists:
        rule = profile.list_rules[name]
        max_age = profile.list_max_age_days[name]
        as_of = snapshots.get(name)
        if as_of is None:
            return Decision(False, STALE_LIST, rule, f"no {name} snapshot loaded")
        if isinstance(as_of, datetime) or not isinstance(as_of, date):
            raise ValueError(f"snapshot date for {name} must be a date, got {as_of!r}")
        age = (today - as_of).days
        if age < 0:
            return Decision(
                False, STALE_LIST, rule, f"{name} snapshot dated in the future: {as_of}"
            )
        if age > max_age:
            return Decision(
                False, STALE_LIST, rule, f"{name} snapshot is {age} days old (max {max_age})"
            )
    return Decision(True, ALLOWED, FAIL_CLOSED_RULE, "required list snapshots are fresh")


def check_attempts(
    profile: Profile,
    *,
    attempts_made: int,
    max_attempts: int,
    last_attempt_at: datetime | None,
    retry_spacing: timedelta,
    now: datetime,
) -> Decision:
    """Campaign attempt limits: fewer than ``max_attempts`` made, and at least ``retry_spacing``
    since the last one (exactly the spacing is allowed; a last attempt in the future is too soon).

    ``last_attempt_at`` is required once ``attempts_made`` > 0; inconsistent counts raise.
    """
    _require_aware(now, "now")
    rule = profile.attempts_rule
    for label, value in (("attempts_made", attempts_made), ("max_attempts", max_attempts)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{label} must be a non-negative int, got {value!r}")
    if not isinstance(retry_spacing, timedelta) or retry_spacing < timedelta(0):
        raise ValueError(f"retry_spacing must be a non-negative timedelta, got {retry_spacing!r}")
    if attempts_made >= max_attempts:
        return Decision(
            False, ATTEMPTS_EXHAUSTED, rule, f"{attempts_made} of {max_attempts} attempts made"
        )
    if last_attempt_at is None:
        if attempts_made > 0:
            raise ValueError("last_attempt_at is required when attempts_made > 0")
        return Decision(True, ALLOWED, rule, "first attempt")
    _require_aware(last_attempt_at, "last_attempt_at")
    since = now - last_attempt_at
    if since < retry_spacing:
        return Decision(
            False, RETRY_TOO_SOON, rule, f"last attempt {since} ago (spacing {retry_spacing})"
        )
    return Decision(True, ALLOWED, rule, f"attempt {attempts_made + 1} of {max_attempts}")


def check_caller_id(profile: Profile, presented_caller_id: str | None) -> Decision:
    """The caller ID to present must be a valid, canonical E.164 number that can be called back.

    Premium-rate, shared-cost, personal (UK 070), pager and voicemail numbers are refused, as
    is anything phonenumbers cannot classify.  Profiles that do not require a caller ID pass.
    """
    rule = profile.caller_id_rule
    if not profile.caller_id_required:
        return Decision(True, ALLOWED, rule, "caller ID not required")
    if presented_caller_id is None or not isinstance(presented_caller_id, str):
        return Decision(False, CALLER_ID_MISSING, rule, "no caller ID to present")
    parsed = _parse_e164(presented_caller_id)
    if parsed is None:
        return Decision(
            False, CALLER_ID_MISSING, rule, f"not a valid E.164 number: {presented_caller_id!r}"
        )
    kind = phonenumbers.number_type(parsed)
    if kind not in _CALLABLE_BACK_TYPES:
        return Decision(
            False, CALLER_ID_MISSING, rule, f"{presented_caller_id} cannot be called back ({kind})"
        )
    return Decision(True, ALLOWED, rule, f"presenting {presented_caller_id}")


# --- the gate ------------------------------------------------------------------------------------


def _check_flags(profile: Profile, *, do_not_call: bool, suppressed: bool) -> Decision:
    # Anything other than a real False (None from a failed lookup, 0, "no") refuses.
    if do_not_call is not False:
        if do_not_call is True:
            return Decision(
                False, DO_NOT_CALL, profile.dnc_rule, "number is on the do-not-call list"
            )
        raise ValueError(f"do_not_call must be a bool, got {do_not_call!r}")
    if suppressed is not False:
        if suppressed is True:
            return Decision(False, SUPPRESSED, profile.dnc_rule, "number is on a suppression list")
        raise ValueError(f"suppressed must be a bool, got {suppressed!r}")
    return Decision(True, ALLOWED, profile.dnc_rule)


# A named check, so the combined decision can quote the consent detail and errors name the step.
_Check = tuple[str, Callable[[], Decision]]


def _error(exc: Exception) -> Decision:
    return Decision(False, ERROR, FAIL_CLOSED_RULE, f"{type(exc).__name__}: {exc}")


def gate(
    profile: Profile,
    *,
    number_e164: str,
    latest: ConsentEvent | None,
    organisation: str,
    call_started_at: datetime,
    suppressed: bool,
    do_not_call: bool,
    snapshots: Mapping[str, date | None],
    attempts_made: int,
    max_attempts: int,
    last_attempt_at: datetime | None,
    retry_spacing: timedelta,
    caller_id: str | None,
    campaign_window: tuple[time, time] | None = None,
    today: date | None = None,
) -> Decision:
    """The dialer's decision before every Originate: the first refusal, or allowed.

    Order (fixed; the first refusal is returned, so the recorded reason is stable):

    1. ``invalid_number`` -- nothing else is meaningful for a number we cannot key on;
    2. ``stale_list`` -- a stale or missing required snapshot refuses all dialling;
    3. ``do_not_call`` then ``suppressed``;
    4. consent (:func:`evaluate_consent`);
    5. calling hours (:func:`check_calling_hours`, with the campaign window);
    6. attempts (:func:`check_attempts`, ``now`` = ``call_started_at``);
    7. caller ID (:func:`check_caller_id`).

    ``call_started_at`` is the moment of the decision (the Originate about to be sent);
    ``today`` for snapshot ages defaults to its UTC date.  This function never raises and never
    fails open: any exception becomes a refusal with reason ``"error"``.
    """
    try:
        _require_aware(call_started_at, "call_started_at")
        if not isinstance(profile, Profile):
            raise ValueError(f"profile must be a Profile, got {type(profile).__name__}")
        day = call_started_at.astimezone(UTC).date() if today is None else today
        checks: tuple[_Check, ...] = (
            ("number", lambda: _check_number(number_e164)),
            ("lists", lambda: check_snapshot_freshness(profile, snapshots, day)),
            ("flags", lambda: _check_flags(profile, do_not_call=do_not_call,
                                           suppressed=suppressed)),
            ("consent", lambda: evaluate_consent(profile, latest, organisation=organisation,
                                                 call_started_at=call_started_at)),
            ("hours", lambda: check_calling_hours(profile, number_e164, call_started_at,
                                                  campaign_window=campaign_window)),
            ("attempts", lambda: check_attempts(
                profile, attempts_made=attempts_made, max_attempts=max_attempts,
                last_attempt_at=last_attempt_at, retry_spacing=retry_spacing,
                now=call_started_at)),
            ("caller_id", lambda: check_caller_id(profile, caller_id)),
        )
        return _first_refusal(profile, checks)
    except Exception as exc:  # noqa: BLE001 -- the fail-closed boundary: refuse, never raise
        return _error(exc)


def gate_playback(
    profile: Profile,
    *,
    number_e164: str,
    latest: ConsentEvent | None,
    organisation: str,
    call_started_at: datetime,
    suppressed: bool,
    do_not_call: bool,
) -> Decision:
    """The in-call re-check right before marketing audio plays.

    Same order as :func:`gate` minus what was settled when the call was dialled (list
    freshness, hours, attempts, caller ID): invalid number, do-not-call, suppression, consent.
    Never raises, never fails open.
    """
    try:
        _require_aware(call_started_at, "call_started_at")
        if not isinstance(profile, Profile):
            raise ValueError(f"profile must be a Profile, got {type(profile).__name__}")
        checks: tuple[_Check, ...] = (
            ("number", lambda: _check_number(number_e164)),
            (
                "flags",
                lambda: _check_flags(profile, do_not_call=do_not_call, suppressed=suppressed),
            ),
            (
                "consent",
                lambda: evaluate_consent(
                    profile, latest, organisation=organisation, call_started_at=call_started_at
                ),
            ),
        )
        return _first_refusal(profile, checks)
    except Exception as exc:  # noqa: BLE001 -- the fail-closed boundary: refuse, never raise
        return _error(exc)


def _first_refusal(profile: Profile, checks: Sequence[_Check]) -> Decision:
    """Run ``checks`` in order; return the first refusal, else one combined allowed decision.

    Only a genuine :class:`Decision` with ``allowed is True`` and reason ``allowed`` counts as a
    pass; anything else that is not a well-formed refusal raises, and the caller turns that into
    reason ``error``.
    """
    consent_detail = ""
    for name, check in checks:
        decision = check()
        if not isinstance(decision, Decision):
            raise TypeError(f"check {name} returned {decision!r}")
        if decision.allowed is True and decision.reason == ALLOWED:
            if name == "consent":
                consent_detail = decision.detail
            continue
        if decision.allowed is False and decision.reason in REASONS - {ALLOWED}:
            return decision
        raise TypeError(f"check {name} returned an inconsistent decision: {decision!r}")
    return Decision(True, ALLOWED, profile.consent_rule, f"all checks passed; {consent_detail}")
