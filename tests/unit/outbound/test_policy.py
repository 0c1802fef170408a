"""Table-driven tests for agi.outbound.policy: a row per rule and per edge case (issue 3 §1).

Every UTC instant used on a DST day is written out explicitly next to the local time it
stands for, so a wrong offset in the code cannot be mirrored by the same wrong offset here.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, date, datetime, time, timedelta, timezone
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agi.outbound import policy
from agi.outbound.policy import (
    PROFILES,
    REASONS,
    ConsentEvent,
    Decision,
    Profile,
    UnknownProfileError,
    check_attempts,
    check_caller_id,
    check_calling_hours,
    check_snapshot_freshness,
    evaluate_consent,
    gate,
    gate_playback,
    get_profile,
    is_marketing_purpose,
    time_zones_for,
)

UK = PROFILES["uk-pecr"]
US = PROFILES["us-tcpa"]
EU = PROFILES["eu-eprivacy"]

ORG = "Acme Energy Ltd"
START = datetime(2026, 6, 15, 16, 0, tzinfo=UTC)  # 12:00 EDT in New York, 17:00 BST in London
US_NY = "+12125551234"  # America/New_York only
US_LA = "+14158586273"  # America/Los_Angeles only
US_DENVER = "+19155550000"  # America/Denver only
US_AMBIGUOUS = "+12085550100"  # Idaho 208: America/Boise (Mountain) and America/Los_Angeles
US_TOLL_FREE = "+18005551234"  # every NANP zone, Guam to Newfoundland
UK_LONDON = "+442079460000"
INTL_FREEPHONE = "+80012345678"  # valid, but phonenumbers cannot place it (Etc/Unknown)
SATELLITE = "+881612345678"  # valid Iridium number, Etc/Unknown
UK_CALLER_ID = "+442079460001"
US_CALLER_ID = "+12127365000"

US_HOURS = (time(8, 0), time(21, 0))


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def event(
    *,
    before: timedelta = timedelta(days=1),
    decision: str = "opt_in",
    consent_channel: str = "automated_call",
    organisation: str = ORG,
    captured_by: str = "first_party",
    names_org: bool = False,
    at: datetime | None = None,
) -> ConsentEvent:
    return ConsentEvent(
        decision=decision,
        recorded_at=at if at is not None else START - before,
        consent_channel=consent_channel,
        organisation=organisation,
        captured_by=captured_by,
        third_party_names_organisation=names_org,
        event_id=42,
    )


# --- profiles ------------------------------------------------------------------------------------


def test_default_profile_is_uk_pecr() -> None:
    assert get_profile() is UK
    assert UK.name == "uk-pecr"


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("uk-pecr", "uk-pecr"),
        ("us-tcpa", "us-tcpa"),
        ("eu-eprivacy", "eu-eprivacy"),
        (" US-TCPA ", "us-tcpa"),
    ],
    ids=["uk", "us", "eu", "case-and-space-insensitive"],
)
def test_get_profile_by_name(name: str, expected: str) -> None:
    assert get_profile(name).name == expected


@pytest.mark.parametrize(
    "name", ["", "uk", "us_tcpa", "pecr"], ids=["empty", "uk", "underscore", "pecr"]
)
def test_unknown_profile_is_a_clear_error(name: str) -> None:
    with pytest.raises(UnknownProfileError, match="known: eu-eprivacy, uk-pecr, us-tcpa"):
        get_profile(name)
    assert issubclass(UnknownProfileError, ValueError)


def test_profiles_are_immutable_data() -> None:
    with pytest.raises(TypeError):
        PROFILES["lax"] = UK  # type: ignore[index]
    with pytest.raises(dataclasses.FrozenInstanceError):
        UK.min_ring_seconds = 0  # type: ignore[misc]
    with pytest.raises(TypeError):
        UK.list_max_age_days["tps"] = 365  # type: ignore[index]


def test_profile_refuses_to_load_an_unevaluable_list() -> None:
    with pytest.raises(ValueError, match="lacks a max age"):
        dataclasses.replace(UK, required_lists=("tps", "ctps", "internal"))
    with pytest.raises(ValueError, match="start < end"):
        dataclasses.replace(US, calling_window=(time(21), time(8)))


@pytest.mark.parametrize(
    ("profile", "attribute", "expected"),
    [
        # uk-pecr
        (UK, "consent_rule", "PECR reg 19"),
        (UK, "consent_channels", frozenset({"automated_call"})),
        (UK, "identification_required", True),
        (UK, "identification_rule", "PECR reg 24"),
        (UK, "caller_id_required", True),
        (UK, "third_party_requires_naming", True),
        (UK, "third_party_max_age", timedelta(days=181)),
        (UK, "political_is_marketing", True),
        (UK, "required_lists", ("tps", "ctps")),
        (UK, "list_max_age_days", {"tps": 28, "ctps": 28}),
        (UK, "calling_window", None),
        (UK, "opt_out_key_required", True),
        (UK, "min_ring_seconds", 20),
        # us-tcpa
        (US, "consent_rule", "47 CFR 64.1200(a)(2)"),
        (US, "keypress_is_signature", True),
        (US, "identification_required", True),
        (US, "identification_rule", "47 CFR 64.1200(b)(1)"),
        (US, "opt_out_key_required", True),
        (US, "opt_out_offer_within_s", 2.0),
        (US, "opt_out_rule", "47 CFR 64.1200(b)(3)"),
        (US, "calling_window", US_HOURS),
        (US, "hours_rule", "47 CFR 64.1200(c)(1)"),
        (US, "required_lists", ("us-dnc",)),
        (US, "list_max_age_days", {"us-dnc": 31}),
        (US, "min_ring_seconds", 20),
        (US, "dnc_retention_years", 5),
        (US, "political_is_marketing", True),
        # eu-eprivacy
        (EU, "consent_rule", "ePrivacy Directive art. 13(1)"),
        (EU, "consent_channels", frozenset({"automated_call"})),
        (EU, "calling_window", None),
        (EU, "required_lists", ()),
        (EU, "third_party_requires_naming", True),
        (EU, "min_ring_seconds", 20),
    ],
    ids=lambda v: v.name if isinstance(v, Profile) else str(v) if isinstance(v, str) else None,
)
def test_profile_rule_table(profile: Profile, attribute: str, expected: object) -> None:
    value = getattr(profile, attribute)
    assert (dict(value) if attribute == "list_max_age_days" else value) == expected


def test_docs_table_quotes_every_legal_reference() -> None:
    text = (Path(__file__).parents[3] / "docs" / "policy.md").read_text(encoding="utf-8")
    for profile in PROFILES.values():
        assert profile.name in text
        refs = [
            profile.consent_rule,
            profile.third_party_rule,
            profile.identification_rule,
            profile.opt_out_rule,
            profile.caller_id_rule,
            profile.hours_rule,
            profile.ring_rule,
            profile.dnc_rule,
            profile.political_rule,
            profile.attempts_rule,
            *profile.list_rules.values(),
        ]
        missing = [ref for ref in refs if ref not in text]
        assert not missing, f"{profile.name}: docs/policy.md lacks {missing}"


@pytest.mark.parametrize(
    ("profile", "purpose", "expected"),
    [
        (UK, "marketing", True),
        (UK, "political", True),
        (US, "political", True),
        (UK, "service", False),
        (UK, "Transactional", False),
        (UK, "surveys-maybe", True),
        (dataclasses.replace(EU, political_is_marketing=False), "political", False),
    ],
    ids=[
        "marketing",
        "uk-political-is-marketing",
        "us-political-is-marketing",
        "service",
        "transactional",
        "unknown-purpose-fails-closed",
        "profile-flag-respected",
    ],
)
def test_is_marketing_purpose(profile: Profile, purpose: str, expected: bool) -> None:
    assert is_marketing_purpose(profile, purpose) is expected


# --- consent -------------------------------------------------------------------------------------

CONSENT_ROWS: list[Any] = [
    pytest.param(UK, None, ORG, "no_consent", id="no-event"),
    pytest.param(
        UK, event(before=timedelta(microseconds=1)), ORG, "allowed", id="1us-before-start"
    ),
    pytest.param(UK, event(at=START), ORG, "consent_not_before_call", id="exactly-at-start"),
    pytest.param(
        UK,
        event(at=START.astimezone(timezone(timedelta(hours=-5)))),
        ORG,
        "consent_not_before_call",
        id="exactly-at-start-other-offset",
    ),
    pytest.param(
        UK,
        event(before=-timedelta(microseconds=1)),
        ORG,
        "consent_not_before_call",
        id="after-start",
    ),
    pytest.param(UK, event(decision="opt_out"), ORG, "opted_out", id="opt-out-after-opt-in"),
    pytest.param(
        UK,
        event(decision="opt_out", before=-timedelta(seconds=5)),
        ORG,
        "opted_out",
        id="opt-out-during-call",
    ),
    pytest.param(UK, event(decision="maybe"), ORG, "no_consent", id="unknown-decision"),
    pytest.param(UK, event(consent_channel="live_call"), ORG, "wrong_channel",
                 id="uk-live-call-only"),
    pytest.param(US, event(consent_channel="live_call"), ORG, "wrong_channel",
                 id="us-live-call-only"),
    pytest.param(EU, event(consent_channel="live_call"), ORG, "wrong_channel",
                 id="eu-live-call-only"),
    pytest.param(UK, event(consent_channel="sms"), ORG, "wrong_channel",
                 id="sms-consent"),
    pytest.param(UK, event(organisation="Other Co"), ORG, "wrong_organisation", id="other-org"),
    pytest.param(
        UK, event(organisation="acme energy ltd"), ORG, "wrong_organisation", id="org-exact-match"
    ),
    pytest.param(
        UK, event(organisation=""), "", "wrong_organisation", id="empty-org-never-matches"
    ),
    pytest.param(
        UK,
        event(captured_by="third_party", names_org=True, before=timedelta(days=181)),
        ORG,
        "allowed",
        id="uk-third-party-exactly-6-months",
    ),
    pytest.param(
        UK,
        event(
            captured_by="third_party", names_org=True, before=timedelta(days=181, microseconds=1)
        ),
        ORG,
        "third_party_stale",
        id="uk-third-party-older-than-6-months",
    ),
    pytest.param(
        UK,
        event(captured_by="third_party", names_org=True, before=timedelta(days=400)),
        ORG,
        "third_party_stale",
        id="uk-third-party-400-days",
    ),
    pytest.param(
        UK,
        event(captured_by="third_party", names_org=False),
        ORG,
        "third_party_unnamed",
        id="uk-third-party-unnamed",
    ),
    pytest.param(
        UK,
        event(captured_by="third_party", names_org=False, before=timedelta(days=400)),
        ORG,
        "third_party_unnamed",
        id="uk-unnamed-checked-before-age",
    ),
    pytest.param(
        US,
        event(captured_by="third_party", names_org=True, before=timedelta(days=1000)),
        ORG,
        "allowed",
        id="us-named-third-party-no-age-limit",
    ),
    pytest.param(
        US,
        event(captured_by="third_party", names_org=False),
        ORG,
        "third_party_unnamed",
        id="us-third-party-unnamed",
    ),
    pytest.param(
        EU,
        event(captured_by="third_party", names_org=False),
        ORG,
        "third_party_unnamed",
        id="eu-third-party-unnamed",
    ),
    pytest.param(UK, event(captured_by="broker?"), ORG, "no_consent", id="unknown-capture"),
    pytest.param(US, event(), ORG, "allowed", id="us-first-party"),
    pytest.param(EU, event(), ORG, "allowed", id="eu-first-party"),
]


@pytest.mark.parametrize(("profile", "latest", "organisation", "reason"), CONSENT_ROWS)
def test_evaluate_consent(
    profile: Profile, latest: ConsentEvent | None, organisation: str, reason: str
) -> None:
    decision = evaluate_consent(profile, latest, organisation=organisation, call_started_at=START)
    assert decision.reason == reason
    assert decision.allowed is (reason == "allowed")
    assert decision.rule  # every decision cites a rule


@pytest.mark.parametrize(
    ("profile", "latest", "rule"),
    [
        (UK, None, "PECR reg 19"),
        (US, None, "47 CFR 64.1200(a)(2)"),
        (EU, None, "ePrivacy Directive art. 13(1)"),
        (UK, event(captured_by="third_party"), UK.third_party_rule),
        (US, event(decision="opt_out"), US.dnc_rule),
    ],
    ids=["uk", "us", "eu", "uk-third-party", "us-opt-out"],
)
def test_consent_refusals_cite_the_profile_rule(
    profile: Profile, latest: ConsentEvent | None, rule: str
) -> None:
    decision = evaluate_consent(profile, latest, organisation=ORG, call_started_at=START)
    assert decision.allowed is False
    assert decision.rule == rule


@pytest.mark.parametrize(
    ("latest", "started"),
    [(event(at=START.replace(tzinfo=None)), START), (event(), START.replace(tzinfo=None))],
    ids=["naive-recorded-at", "naive-call-start"],
)
def test_consent_naive_datetimes_raise(latest: ConsentEvent, started: datetime) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        evaluate_consent(UK, latest, organisation=ORG, call_started_at=started)


# --- calling hours -------------------------------------------------------------------------------

# (zone, local wall time on the DST day, the same instant in UTC written out, expected)
DST_ROWS: list[Any] = [
    # New York springs forward 2026-03-08 02:00 EST -> 03:00 EDT (UTC-4 from 07:00 UTC).
    pytest.param(
        US, US_NY, None, utc(2026, 3, 8, 11, 59), "outside_hours", id="us-spring-07:59EDT"
    ),
    pytest.param(US, US_NY, None, utc(2026, 3, 8, 12, 0), "allowed", id="us-spring-08:00EDT"),
    pytest.param(US, US_NY, None, utc(2026, 3, 9, 0, 59), "allowed", id="us-spring-20:59EDT"),
    pytest.param(US, US_NY, None, utc(2026, 3, 9, 1, 0), "outside_hours", id="us-spring-21:00EDT"),
    # New York falls back 2026-11-01 02:00 EDT -> 01:00 EST (UTC-5 from 06:00 UTC).
    pytest.param(US, US_NY, None, utc(2026, 11, 1, 12, 59), "outside_hours", id="us-fall-07:59EST"),
    pytest.param(US, US_NY, None, utc(2026, 11, 1, 13, 0), "allowed", id="us-fall-08:00EST"),
    pytest.param(US, US_NY, None, utc(2026, 11, 2, 1, 59), "allowed", id="us-fall-20:59EST"),
    pytest.param(US, US_NY, None, utc(2026, 11, 2, 2, 0), "outside_hours", id="us-fall-21:00EST"),
    # London springs forward 2026-03-29 01:00 GMT -> 02:00 BST (UTC+1 from 01:00 UTC).
    # us-tcpa applies in the callee's local time, wherever that is.
    pytest.param(
        US, UK_LONDON, None, utc(2026, 3, 29, 6, 59), "outside_hours", id="uk-spring-07:59BST"
    ),
    pytest.param(US, UK_LONDON, None, utc(2026, 3, 29, 7, 0), "allowed", id="uk-spring-08:00BST"),
    pytest.param(US, UK_LONDON, None, utc(2026, 3, 29, 19, 59), "allowed", id="uk-spring-20:59BST"),
    pytest.param(
        US, UK_LONDON, None, utc(2026, 3, 29, 20, 0), "outside_hours", id="uk-spring-21:00BST"
    ),
    # London falls back 2026-10-25 02:00 BST -> 01:00 GMT (UTC+0 from 01:00 UTC).
    pytest.param(
        US, UK_LONDON, None, utc(2026, 10, 25, 7, 59), "outside_hours", id="uk-fall-07:59GMT"
    ),
    pytest.param(US, UK_LONDON, None, utc(2026, 10, 25, 8, 0), "allowed", id="uk-fall-08:00GMT"),
    pytest.param(US, UK_LONDON, None, utc(2026, 10, 25, 20, 59), "allowed", id="uk-fall-20:59GMT"),
    pytest.param(
        US, UK_LONDON, None, utc(2026, 10, 25, 21, 0), "outside_hours", id="uk-fall-21:00GMT"
    ),
    # uk-pecr has no statutory window; a campaign window is applied the same DST-aware way.
    pytest.param(
        UK,
        UK_LONDON,
        US_HOURS,
        utc(2026, 3, 29, 6, 59),
        "outside_hours",
        id="uk-pecr-campaign-spring-07:59BST",
    ),
    pytest.param(
        UK,
        UK_LONDON,
        US_HOURS,
        utc(2026, 3, 29, 7, 0),
        "allowed",
        id="uk-pecr-campaign-spring-08:00BST",
    ),
    pytest.param(
        UK,
        UK_LONDON,
        US_HOURS,
        utc(2026, 10, 25, 20, 59),
        "allowed",
        id="uk-pecr-campaign-fall-20:59GMT",
    ),
    pytest.param(
        UK,
        UK_LONDON,
        US_HOURS,
        utc(2026, 10, 25, 21, 0),
        "outside_hours",
        id="uk-pecr-campaign-fall-21:00GMT",
    ),
]


def test_dst_rows_really_are_on_transition_days() -> None:
    # Guards the table above: each date changes its UTC offset, so a fixed offset would fail.
    for zone, day in [
        ("America/New_York", date(2026, 3, 8)),
        ("America/New_York", date(2026, 11, 1)),
        ("Europe/London", date(2026, 3, 29)),
        ("Europe/London", date(2026, 10, 25)),
    ]:
        tz = ZoneInfo(zone)
        before = datetime.combine(day, time(0, 30), tz).utcoffset()
        after = datetime.combine(day, time(12, 0), tz).utcoffset()
        assert before != after, zone


@pytest.mark.parametrize(("profile", "number", "campaign_window", "at", "reason"), DST_ROWS)
def test_calling_hours_on_dst_days(
    profile: Profile,
    number: str,
    campaign_window: tuple[time, time] | None,
    at: datetime,
    reason: str,
) -> None:
    decision = check_calling_hours(profile, number, at, campaign_window=campaign_window)
    assert decision.reason == reason
    assert decision.allowed is (reason == "allowed")


@pytest.mark.parametrize(
    ("number", "zones"),
    [
        (US_NY, ("America/New_York",)),
        (INTL_FREEPHONE, ()),  # phonenumbers says Etc/Unknown: not a zone we may rely on
        (SATELLITE, ()),
        ("+15555550100", ()),
        ("+1 212 555 1234", ()),
    ],
    ids=["new-york", "intl-freephone", "satellite", "invalid", "non-canonical"],
)
def test_time_zones_for(number: str, zones: tuple[str, ...]) -> None:
    assert time_zones_for(number) == zones


def test_ambiguous_number_really_spans_zones() -> None:
    zones = time_zones_for(US_AMBIGUOUS)
    assert set(zones) == {"America/Boise", "America/Los_Angeles"}
    assert len(time_zones_for(US_TOLL_FREE)) > 10


@pytest.mark.parametrize(
    ("number", "at", "reason"),
    [
        # 14:30 UTC = 08:30 MDT in Boise but 07:30 PDT in Los Angeles: the stricter zone wins.
        pytest.param(
            US_AMBIGUOUS, utc(2026, 6, 15, 14, 30), "outside_hours", id="ambiguous-la-too-early"
        ),
        pytest.param(US_DENVER, utc(2026, 6, 15, 14, 30), "allowed", id="contrast-mountain-only"),
        pytest.param(US_LA, utc(2026, 6, 15, 14, 30), "outside_hours", id="contrast-pacific-only"),
        # 15:00 UTC = 08:00 PDT / 09:00 MDT: inside in both.
        pytest.param(US_AMBIGUOUS, utc(2026, 6, 15, 15, 0), "allowed", id="ambiguous-both-open"),
        # 02:59 UTC = 20:59 MDT / 19:59 PDT: inside in both.
        pytest.param(
            US_AMBIGUOUS, utc(2026, 6, 16, 2, 59), "allowed", id="ambiguous-both-before-21"
        ),
        # 03:00 UTC = 21:00 MDT in Boise though only 20:00 in Los Angeles.
        pytest.param(
            US_AMBIGUOUS, utc(2026, 6, 16, 3, 0), "outside_hours", id="ambiguous-boise-too-late"
        ),
        pytest.param(INTL_FREEPHONE, START, "unknown_timezone", id="unplaceable-freephone"),
        pytest.param(SATELLITE, START, "unknown_timezone", id="unplaceable-satellite"),
        pytest.param("+15555550100", START, "invalid_number", id="invalid-number"),
        pytest.param("+1 212 555 1234", START, "invalid_number", id="non-canonical"),
    ],
)
def test_calling_hours_us_zones(number: str, at: datetime, reason: str) -> None:
    decision = check_calling_hours(US, number, at)
    assert decision.reason == reason
    assert decision.allowed is (reason == "allowed")
    if reason in {"outside_hours", "unknown_timezone"}:
        assert decision.rule == "47 CFR 64.1200(c)(1)"


@pytest.mark.parametrize(
    ("at", "reason"),
    [
        # A toll-free number is placed in every NANP zone, Guam (UTC+10) to St John's (UTC-2:30
        # in summer): the only moments inside 08:00-21:00 in all of them are 22:00-23:29 UTC.
        pytest.param(utc(2026, 6, 15, 21, 59), "outside_hours", id="guam-07:59"),
        pytest.param(utc(2026, 6, 15, 22, 0), "allowed", id="guam-08:00"),
        pytest.param(utc(2026, 6, 15, 23, 29), "allowed", id="st-johns-20:59"),
        pytest.param(utc(2026, 6, 15, 23, 30), "outside_hours", id="st-johns-21:00"),
        pytest.param(utc(2026, 6, 15, 16, 0), "outside_hours", id="new-york-noon"),
    ],
)
def test_toll_free_uses_the_intersection_of_all_its_zones(at: datetime, reason: str) -> None:
    decision = check_calling_hours(US, US_TOLL_FREE, at)
    assert decision.reason == reason
    # Independent oracle: allowed exactly when every candidate zone reads 08:00 <= t < 21:00.
    zones = time_zones_for(US_TOLL_FREE)
    everywhere = all(time(8) <= at.astimezone(ZoneInfo(z)).time() < time(21) for z in zones)
    assert decision.allowed is everywhere is (reason == "allowed")


@pytest.mark.parametrize(
    ("profile", "number", "campaign_window", "at", "reason", "rule"),
    [
        pytest.param(
            UK,
            UK_LONDON,
            None,
            utc(2026, 6, 15, 2, 0),
            "allowed",
            UK.hours_rule,
            id="uk-no-statutory-hours",
        ),
        pytest.param(
            EU,
            "+33142685300",
            None,
            utc(2026, 6, 15, 2, 0),
            "allowed",
            EU.hours_rule,
            id="eu-no-statutory-hours",
        ),
        pytest.param(
            EU, INTL_FREEPHONE, None, START, "allowed", EU.hours_rule, id="no-window-needs-no-zone"
        ),
        pytest.param(
            EU,
            INTL_FREEPHONE,
            US_HOURS,
            START,
            "unknown_timezone",
            "campaign calling window",
            id="campaign-window-needs-zone",
        ),
        # 12:00 EDT: inside the statute, outside a 13:00-17:00 campaign window.
        pytest.param(
            US,
            US_NY,
            (time(13), time(17)),
            START,
            "outside_hours",
            "campaign calling window",
            id="campaign-window-narrows-statute",
        ),
        # 07:30 EDT: a campaign window starting at 07:00 cannot widen the statute.
        pytest.param(
            US,
            US_NY,
            (time(7), time(22)),
            utc(2026, 6, 15, 11, 30),
            "outside_hours",
            "47 CFR 64.1200(c)(1)",
            id="campaign-window-cannot-widen-statute",
        ),
        pytest.param(
            US,
            US_NY,
            (time(13), time(17)),
            utc(2026, 6, 15, 18, 0),
            "allowed",
            "47 CFR 64.1200(c)(1)",
            id="inside-both-windows",
        ),
    ],
)
def test_calling_hours_windows(
    profile: Profile,
    number: str,
    campaign_window: tuple[time, time] | None,
    at: datetime,
    reason: str,
    rule: str,
) -> None:
    decision = check_calling_hours(profile, number, at, campaign_window=campaign_window)
    assert (decision.reason, decision.rule) == (reason, rule)
    assert decision.allowed is (reason == "allowed")


def test_zone_missing_from_tz_database_is_unknown(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(policy, "time_zones_for", lambda _n: ("America/New_York", "Mars/Olympus"))
    assert check_calling_hours(US, US_NY, START).reason == "unknown_timezone"


@pytest.mark.parametrize(
    ("at", "window"),
    [(START.replace(tzinfo=None), None), (START, (time(21), time(8)))],
    ids=["naive-instant", "window-crossing-midnight"],
)
def test_calling_hours_bad_input_raises(at: datetime, window: tuple[time, time] | None) -> None:
    with pytest.raises(ValueError):
        check_calling_hours(US, US_NY, at, campaign_window=window)


# --- list snapshots ------------------------------------------------------------------------------

TODAY = date(2026, 6, 15)


def ago(days: int) -> date:
    return TODAY - timedelta(days=days)


@pytest.mark.parametrize(
    ("profile", "snapshots", "reason", "rule"),
    [
        pytest.param(
            UK, {"tps": ago(28), "ctps": ago(28)}, "allowed", None, id="uk-exactly-28-days"
        ),
        pytest.param(UK, {"tps": ago(0), "ctps": ago(3)}, "allowed", None, id="uk-fresh"),
        pytest.param(
            UK,
            {"tps": ago(29), "ctps": ago(1)},
            "stale_list",
            "PECR reg 21 & 26 (TPS)",
            id="uk-tps-29-days",
        ),
        pytest.param(
            UK,
            {"tps": ago(1), "ctps": ago(29)},
            "stale_list",
            "PECR reg 21 & 26 (CTPS)",
            id="uk-ctps-29-days",
        ),
        pytest.param(
            UK, {"tps": ago(1)}, "stale_list", "PECR reg 21 & 26 (CTPS)", id="uk-ctps-missing"
        ),
        pytest.param(
            UK,
            {"tps": None, "ctps": ago(1)},
            "stale_list",
            "PECR reg 21 & 26 (TPS)",
            id="uk-tps-none",
        ),
        pytest.param(
            UK,
            {"tps": ago(-1), "ctps": ago(1)},
            "stale_list",
            "PECR reg 21 & 26 (TPS)",
            id="uk-future-dated",
        ),
        pytest.param(
            UK, {"us-dnc": ago(1)}, "stale_list", "PECR reg 21 & 26 (TPS)", id="uk-wrong-list"
        ),
        pytest.param(US, {"us-dnc": ago(31)}, "allowed", None, id="us-exactly-31-days"),
        pytest.param(
            US, {"us-dnc": ago(32)}, "stale_list", "47 CFR 64.1200(c)(2)(i)(D)", id="us-32-days"
        ),
        pytest.param(US, {}, "stale_list", "47 CFR 64.1200(c)(2)(i)(D)", id="us-missing"),
        pytest.param(
            US,
            {"tps": ago(1), "ctps": ago(1)},
            "stale_list",
            "47 CFR 64.1200(c)(2)(i)(D)",
            id="us-only-uk-lists",
        ),
        pytest.param(EU, {}, "allowed", None, id="eu-requires-no-list"),
    ],
)
def test_snapshot_freshness(
    profile: Profile, snapshots: dict[str, date | None], reason: str, rule: str | None
) -> None:
    decision = check_snapshot_freshness(profile, snapshots, TODAY)
    assert decision.reason == reason
    assert decision.allowed is (reason == "allowed")
    if rule is not None:
        assert decision.rule == rule


@pytest.mark.parametrize(
    ("snapshots", "today"),
    [
        ({"tps": datetime(2026, 6, 1), "ctps": ago(1)}, TODAY),
        ({"tps": ago(1), "ctps": ago(1)}, datetime(2026, 6, 15)),
        ([("tps", ago(1))], TODAY),
    ],
    ids=["datetime-snapshot", "datetime-today", "not-a-mapping"],
)
def test_snapshot_bad_input_raises(snapshots: Any, today: Any) -> None:
    with pytest.raises(ValueError):
        check_snapshot_freshness(UK, snapshots, today)


# --- attempts ------------------------------------------------------------------------------------

HOUR = timedelta(hours=1)


@pytest.mark.parametrize(
    ("made", "maximum", "last", "spacing", "reason"),
    [
        pytest.param(0, 3, None, HOUR, "allowed", id="first-attempt"),
        pytest.param(2, 3, START - HOUR, HOUR, "allowed", id="exactly-spacing"),
        pytest.param(
            2,
            3,
            START - HOUR + timedelta(microseconds=1),
            HOUR,
            "retry_too_soon",
            id="1us-short-of-spacing",
        ),
        pytest.param(
            1, 3, START + timedelta(minutes=1), HOUR, "retry_too_soon", id="last-in-future"
        ),
        pytest.param(1, 3, START, timedelta(0), "allowed", id="zero-spacing"),
        pytest.param(3, 3, START - 10 * HOUR, HOUR, "attempts_exhausted", id="exhausted"),
        pytest.param(4, 3, START - 10 * HOUR, HOUR, "attempts_exhausted", id="over-exhausted"),
        pytest.param(0, 0, None, HOUR, "attempts_exhausted", id="zero-max"),
        pytest.param(3, 3, START, HOUR, "attempts_exhausted", id="exhausted-before-spacing"),
    ],
)
def test_check_attempts(
    made: int, maximum: int, last: datetime | None, spacing: timedelta, reason: str
) -> None:
    decision = check_attempts(
        US,
        attempts_made=made,
        max_attempts=maximum,
        last_attempt_at=last,
        retry_spacing=spacing,
        now=START,
    )
    assert decision.reason == reason
    assert decision.allowed is (reason == "allowed")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"attempts_made": -1},
        {"attempts_made": True},
        {"max_attempts": 2.5},
        {"attempts_made": 1, "last_attempt_at": None},
        {"retry_spacing": -HOUR},
        {"now": START.replace(tzinfo=None)},
        {"last_attempt_at": START.replace(tzinfo=None), "attempts_made": 1},
    ],
    ids=[
        "negative",
        "bool",
        "float-max",
        "count-without-last",
        "negative-spacing",
        "naive-now",
        "naive-last",
    ],
)
def test_check_attempts_bad_input_raises(kwargs: dict[str, Any]) -> None:
    args: dict[str, Any] = {
        "attempts_made": 0,
        "max_attempts": 3,
        "last_attempt_at": None,
        "retry_spacing": HOUR,
        "now": START,
    }
    with pytest.raises(ValueError):
        check_attempts(US, **(args | kwargs))


# --- caller ID -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("profile", "caller_id", "reason"),
    [
        pytest.param(UK, UK_CALLER_ID, "allowed", id="uk-geographic"),
        pytest.param(UK, "+447911123456", "allowed", id="uk-mobile"),
        pytest.param(UK, "+448000285858", "allowed", id="uk-freephone"),
        pytest.param(US, US_CALLER_ID, "allowed", id="us-geographic"),
        pytest.param(EU, "+33142685300", "allowed", id="eu-geographic"),
        pytest.param(UK, None, "caller_id_missing", id="none"),
        pytest.param(US, None, "caller_id_missing", id="us-none"),
        pytest.param(EU, None, "caller_id_missing", id="eu-none"),
        pytest.param(UK, "", "caller_id_missing", id="empty"),
        pytest.param(UK, "anonymous", "caller_id_missing", id="anonymous"),
        pytest.param(UK, "+449098790000", "caller_id_missing", id="premium-rate"),
        pytest.param(UK, "+447031234567", "caller_id_missing", id="personal-070"),
        pytest.param(UK, "+448431234567", "caller_id_missing", id="shared-cost-084"),
        pytest.param(UK, "+44 20 7946 0001", "caller_id_missing", id="non-canonical"),
        pytest.param(UK, "02079460001", "caller_id_missing", id="national-format"),
        pytest.param(US, "+15555550100", "caller_id_missing", id="invalid-555"),
        pytest.param(UK, "+447700900123", "caller_id_missing", id="ofcom-drama-range"),
    ],
)
def test_check_caller_id(profile: Profile, caller_id: str | None, reason: str) -> None:
    decision = check_caller_id(profile, caller_id)
    assert decision.reason == reason
    assert decision.allowed is (reason == "allowed")
    assert decision.rule == profile.caller_id_rule


# --- the gate ------------------------------------------------------------------------------------


def good_gate_args(profile: Profile = US) -> dict[str, Any]:
    """Arguments under which ``gate`` allows: every later test breaks exactly what it names."""
    return {
        "number_e164": US_NY,
        "latest": event(),
        "organisation": ORG,
        "call_started_at": START,  # 12:00 EDT
        "suppressed": False,
        "do_not_call": False,
        "snapshots": {"tps": ago(1), "ctps": ago(1), "us-dnc": ago(1)},
        "attempts_made": 1,
        "max_attempts": 3,
        "last_attempt_at": START - 2 * HOUR,
        "retry_spacing": HOUR,
        "caller_id": US_CALLER_ID if profile is US else UK_CALLER_ID,
    }


BREAKS: dict[str, dict[str, Any]] = {
    "invalid_number": {"number_e164": "+15555550100"},
    "stale_list": {"snapshots": {}},
    "do_not_call": {"do_not_call": True},
    "suppressed": {"suppressed": True},
    "no_consent": {"latest": None},
    "outside_hours": {"call_started_at": utc(2026, 6, 15, 4, 0)},  # 00:00 EDT
    "attempts_exhausted": {"attempts_made": 3},
    "caller_id_missing": {"caller_id": None},
}
GATE_ORDER = list(BREAKS)


def broken(*reasons: str) -> dict[str, Any]:
    args = good_gate_args()
    for reason in reasons:
        args |= BREAKS[reason]
    if "outside_hours" in reasons:  # keep consent and attempts valid relative to the new time
        start = args["call_started_at"]
        if args["latest"] is not None:
            args["latest"] = event(at=start - timedelta(days=1))
        args["last_attempt_at"] = start - 2 * HOUR
    return args


@pytest.mark.parametrize("profile", [UK, US, EU], ids=lambda p: p.name)
def test_gate_allows_when_every_precondition_holds(profile: Profile) -> None:
    decision = gate(profile, **good_gate_args(profile))
    assert decision == Decision(
        True, "allowed", profile.consent_rule, "all checks passed; event 42: valid opt-in"
    )


@pytest.mark.parametrize(
    ("reasons", "expected"),
    [pytest.param((r,), r, id=f"only-{r}") for r in GATE_ORDER]
    + [
        pytest.param(tuple(GATE_ORDER[i:]), GATE_ORDER[i], id=f"all-from-{GATE_ORDER[i]}")
        for i in range(len(GATE_ORDER))
    ]
    + [
        pytest.param(("stale_list", "no_consent"), "stale_list", id="stale-list-beats-consent"),
        pytest.param(
            ("caller_id_missing", "invalid_number"), "invalid_number", id="invalid-number-first"
        ),
    ],
)
def test_gate_order(reasons: tuple[str, ...], expected: str) -> None:
    decision = gate(US, **broken(*reasons))
    assert decision.allowed is False
    assert decision.reason == expected


@pytest.mark.parametrize(
    ("profile", "snapshots"),
    [
        (UK, {"tps": ago(29), "ctps": ago(1)}),
        (UK, {"ctps": ago(1)}),
        (US, {"us-dnc": ago(32)}),
        (US, {"us-dnc": None}),
    ],
    ids=["uk-tps-stale", "uk-tps-missing", "us-dnc-stale", "us-dnc-none"],
)
def test_stale_snapshot_refuses_all_dialling_despite_valid_consent(
    profile: Profile, snapshots: dict[str, date | None]
) -> None:
    args = good_gate_args(profile) | {"snapshots": snapshots, "today": TODAY}
    assert evaluate_consent(
        profile, args["latest"], organisation=ORG, call_started_at=START
    ).allowed
    assert gate(profile, **args).reason == "stale_list"


def test_gate_today_defaults_to_utc_date_of_call() -> None:
    # us-dnc snapshot 31 days before the UTC date of START is fresh, 32 is stale.
    fresh = good_gate_args() | {"snapshots": {"us-dnc": START.date() - timedelta(days=31)}}
    stale = good_gate_args() | {"snapshots": {"us-dnc": START.date() - timedelta(days=32)}}
    assert gate(US, **fresh).allowed is True
    assert gate(US, **stale).reason == "stale_list"


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        pytest.param({"latest": event(at=START)}, "consent_not_before_call", id="consent-at-start"),
        pytest.param({"latest": event(consent_channel="live_call")}, "wrong_channel",
                     id="live-only"),
        pytest.param({"latest": event(decision="opt_out")}, "opted_out", id="opted-out"),
        pytest.param(
            {"last_attempt_at": START - timedelta(minutes=30)},
            "retry_too_soon",
            id="retry-too-soon",
        ),
        pytest.param(
            {
                "number_e164": US_AMBIGUOUS,
                "call_started_at": utc(2026, 6, 15, 14, 30),
                "latest": event(at=utc(2026, 6, 14)),
                "last_attempt_at": utc(2026, 6, 15, 12),
            },
            "outside_hours",
            id="ambiguous-zone",
        ),
        pytest.param({"number_e164": INTL_FREEPHONE}, "unknown_timezone", id="unknown-zone"),
        pytest.param(
            {"campaign_window": (time(13), time(17))}, "outside_hours", id="campaign-window"
        ),
        # A failed lookup that yields None instead of a bool must not read as "not listed".
        pytest.param({"suppressed": None}, "error", id="suppressed-none"),
        pytest.param({"do_not_call": 0}, "error", id="dnc-zero"),
        pytest.param({"call_started_at": START.replace(tzinfo=None)}, "error", id="naive-start"),
        pytest.param({"latest": {"decision": "opt_in"}}, "error", id="latest-not-an-event"),
        pytest.param({"snapshots": None}, "error", id="snapshots-none"),
        pytest.param({"attempts_made": "1"}, "error", id="attempts-str"),
        pytest.param({"retry_spacing": 3600}, "error", id="spacing-int"),
        pytest.param({"today": "2026-06-15"}, "error", id="today-str"),
        pytest.param({"campaign_window": "08-21"}, "error", id="window-str"),
        pytest.param({"number_e164": 12125551234}, "invalid_number", id="number-int"),
    ],
)
def test_gate_refusals(change: dict[str, Any], reason: str) -> None:
    decision = gate(US, **(good_gate_args() | change))
    assert decision.allowed is False
    assert decision.reason == reason


def test_gate_rejects_a_profile_name_instead_of_a_profile() -> None:
    decision = gate("us-tcpa", **good_gate_args())  # type: ignore[arg-type]
    assert (decision.allowed, decision.reason) == (False, "error")


def test_gate_turns_an_unexpected_exception_into_a_refusal(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*_a: object, **_k: object) -> Decision:
        raise RuntimeError("database fell over")

    monkeypatch.setattr(policy, "check_caller_id", boom)
    decision = gate(US, **good_gate_args())
    assert (decision.allowed, decision.reason) == (False, "error")
    assert "database fell over" in decision.detail


@pytest.mark.parametrize(
    "bogus",
    [
        Decision(True, "opted_out", "x"),  # allowed with a refusal code
        Decision(False, "allowed", "x"),  # refused with the allowed code
        Decision(False, "maybe", "x"),  # unknown code
        True,  # not a Decision at all
        None,
    ],
    ids=["allowed-refusal-code", "refused-allowed-code", "unknown-code", "bool", "none"],
)
def test_gate_refuses_when_a_check_answers_nonsense(
    monkeypatch: pytest.MonkeyPatch, bogus: object
) -> None:
    monkeypatch.setattr(policy, "check_attempts", lambda *_a, **_k: bogus)
    decision = gate(US, **good_gate_args())
    assert (decision.allowed, decision.reason) == (False, "error")


PLAYBACK_KEYS = (
    "number_e164",
    "latest",
    "organisation",
    "call_started_at",
    "suppressed",
    "do_not_call",
)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        pytest.param({}, "allowed", id="valid"),
        # Playback re-checks only consent and lists; hours, attempts and caller ID were settled
        # when the call was dialled.
        pytest.param(
            {"call_started_at": utc(2026, 6, 15, 4, 0), "latest": event(at=utc(2026, 6, 14))},
            "allowed",
            id="hours-not-rechecked",
        ),
        pytest.param({"number_e164": "anonymous"}, "invalid_number", id="withheld"),
        pytest.param({"do_not_call": True, "latest": None}, "do_not_call", id="dnc-first"),
        pytest.param({"suppressed": True}, "suppressed", id="suppressed"),
        pytest.param(
            {"latest": event(decision="opt_out", before=-timedelta(seconds=3))},
            "opted_out",
            id="opted-out-mid-call",
        ),
        pytest.param({"latest": event(at=START)}, "consent_not_before_call", id="consent-at-start"),
        pytest.param({"latest": None}, "no_consent", id="no-consent"),
        pytest.param({"suppressed": None}, "error", id="suppressed-none"),
    ],
)
def test_gate_playback(change: dict[str, Any], reason: str) -> None:
    args = {k: v for k, v in good_gate_args().items() if k in PLAYBACK_KEYS} | change
    decision = gate_playback(US, **args)
    assert decision.reason == reason
    assert decision.allowed is (reason == "allowed")


# --- property: the gate cannot fail open ---------------------------------------------------------

# Each component is drawn as (value, reason it breaks, or None if it is good).  The gate must
# allow exactly when every component is good, and otherwise report the first broken one in order.

CONSENT_VARIANTS: list[tuple[dict[str, Any], str | None]] = [
    ({}, None),
    ({"captured_by": "third_party", "names_org": True, "before": timedelta(days=30)}, None),
    ({"before": timedelta(microseconds=1)}, None),
    ({"before": timedelta(0)}, "consent_not_before_call"),
    ({"before": -timedelta(hours=1)}, "consent_not_before_call"),
    ({"decision": "opt_out"}, "opted_out"),
    ({"channel": "live_call"}, "wrong_channel"),
    ({"organisation": "Other Co"}, "wrong_organisation"),
    ({"captured_by": "third_party"}, "third_party_unnamed"),
]


@st.composite
def gate_case(draw: st.DrawFn) -> tuple[Profile, dict[str, Any], str]:
    profile = draw(st.sampled_from([UK, US, EU]))
    order: list[tuple[str, bool]] = []

    number_ok = draw(st.booleans())
    number = (
        US_NY
        if number_ok
        else draw(
            st.sampled_from(["+15555550100", "anonymous", "", "+1 212 555 1234", "2125551234"])
        )
    )
    order.append(("invalid_number", not number_ok))

    hours_ok = draw(st.booleans())
    use_campaign_window = draw(st.booleans())
    local_hour = draw(st.integers(9, 19) if hours_ok else st.sampled_from([0, 3, 6, 7, 21, 23]))
    local_minute = draw(st.integers(0, 59))
    day = draw(st.dates(date(2026, 1, 1), date(2027, 12, 31)))
    ny = ZoneInfo("America/New_York")
    start = datetime.combine(day, time(local_hour, local_minute), ny).astimezone(UTC)
    today = start.date()

    snaps_ok = draw(st.booleans()) or not profile.required_lists
    snapshots: dict[str, date | None] = {
        name: today - timedelta(days=draw(st.integers(0, profile.list_max_age_days[name])))
        for name in profile.required_lists
    }
    if not snaps_ok:
        victim = draw(st.sampled_from(profile.required_lists))
        how = draw(st.sampled_from(["missing", "none", "old", "future"]))
        if how == "missing":
            del snapshots[victim]
        elif how == "none":
            snapshots[victim] = None
        elif how == "old":
            snapshots[victim] = today - timedelta(days=profile.list_max_age_days[victim] + 1)
        else:
            snapshots[victim] = today + timedelta(days=1)
    order.append(("stale_list", not snaps_ok))

    dnc = draw(st.booleans())
    suppressed = draw(st.booleans())
    order += [("do_not_call", dnc), ("suppressed", suppressed)]

    latest: ConsentEvent | None
    consent_fault: str | None
    if draw(st.integers(0, 9)) == 0:
        latest, consent_fault = None, "no_consent"
    else:
        overrides, consent_fault = draw(st.sampled_from(CONSENT_VARIANTS))
        overrides = dict(overrides)
        latest = ConsentEvent(
            decision=overrides.get("decision", "opt_in"),
            recorded_at=start - overrides.get("before", timedelta(days=1)),
            consent_channel=overrides.get("channel", "automated_call"),
            organisation=overrides.get("organisation", ORG),
            captured_by=overrides.get("captured_by", "first_party"),
            third_party_names_organisation=overrides.get("names_org", False),
            event_id=1,
        )
    order.append(("consent", consent_fault is not None))

    has_window = profile.calling_window is not None or use_campaign_window
    order.append(("outside_hours", has_window and not hours_ok))

    max_attempts = draw(st.integers(0, 5))
    attempts_made = draw(st.integers(0, 6))
    spacing = timedelta(minutes=draw(st.integers(0, 120)))
    since = timedelta(minutes=draw(st.integers(-10, 240)))
    last = None if attempts_made == 0 else start - since
    exhausted = attempts_made >= max_attempts
    too_soon = last is not None and since < spacing
    order += [("attempts_exhausted", exhausted), ("retry_too_soon", not exhausted and too_soon)]

    caller_ok = draw(st.booleans())
    caller = (
        US_CALLER_ID
        if caller_ok
        else draw(st.sampled_from([None, "", "anonymous", "+449098790000", "+1 212 736 5000"]))
    )
    order.append(("caller_id_missing", not caller_ok))

    expected = "allowed"
    for reason, broken_ in order:
        if broken_:
            expected = reason if reason != "consent" else str(consent_fault)
            break
    args = {
        "number_e164": number,
        "latest": latest,
        "organisation": ORG,
        "call_started_at": start,
        "suppressed": suppressed,
        "do_not_call": dnc,
        "snapshots": snapshots,
        "attempts_made": attempts_made,
        "max_attempts": max_attempts,
        "last_attempt_at": last,
        "retry_spacing": spacing,
        "caller_id": caller,
        "campaign_window": US_HOURS if use_campaign_window else None,
    }
    return profile, args, expected


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(gate_case())
def test_gate_allows_exactly_when_every_precondition_holds(
    case: tuple[Profile, dict[str, Any], str],
) -> None:
    profile, args, expected = case
    decision = gate(profile, **args)
    assert decision.reason == expected, decision
    assert decision.allowed is (expected == "allowed")


# Values of a wrong type for each parameter (never a value that is valid for it).
_junk = st.one_of(
    st.floats(allow_nan=True),
    st.binary(max_size=8),
    st.lists(st.integers(), max_size=3),
    st.builds(object),
    st.complex_numbers(),
)
JUNK: dict[str, st.SearchStrategy[Any]] = {
    "number_e164": st.one_of(_junk, st.integers()),
    "latest": st.one_of(_junk, st.text(max_size=5), st.integers()),
    "organisation": st.one_of(_junk, st.integers()),
    "call_started_at": st.one_of(_junk, st.datetimes(), st.dates(), st.text(max_size=5)),
    "suppressed": st.one_of(_junk, st.integers(), st.text(max_size=5)),
    "do_not_call": st.one_of(_junk, st.integers(), st.text(max_size=5)),
    "snapshots": st.one_of(_junk, st.text(max_size=5), st.integers()),
    "attempts_made": st.one_of(_junk, st.booleans(), st.text(max_size=5)),
    "max_attempts": st.one_of(_junk, st.booleans(), st.text(max_size=5)),
    "last_attempt_at": st.one_of(_junk, st.datetimes(), st.text(max_size=5)),
    "retry_spacing": st.one_of(_junk, st.integers(), st.text(max_size=5)),
    "caller_id": st.one_of(_junk, st.integers()),
    "today": st.one_of(_junk, st.datetimes(), st.text(max_size=5), st.integers()),
    "campaign_window": st.one_of(
        _junk, st.text(max_size=5), st.tuples(st.integers(), st.integers())
    ),
}


@settings(max_examples=400, deadline=None)
@given(
    profile=st.sampled_from([UK, US, EU]),
    garbage=st.dictionaries(
        st.sampled_from(sorted(JUNK)), st.none(), min_size=1, max_size=4
    ).flatmap(lambda keys: st.fixed_dictionaries({k: JUNK[k] for k in keys})),
)
def test_gate_never_fails_open_on_garbage(profile: Profile, garbage: dict[str, Any]) -> None:
    args = good_gate_args(profile) | garbage
    decision = gate(profile, **args)  # must not raise
    assert isinstance(decision, Decision)
    assert decision.allowed is False
    assert decision.reason in REASONS - {"allowed"}
