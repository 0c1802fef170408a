"""Shared helpers for the campaign, screen, dialer and marketing tests (issue 3)."""

from __future__ import annotations

import itertools
from dataclasses import replace
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from agi.ledger.ledger import Ledger
from agi.ledger.records import ConsentDecision
from agi.outbound.campaigns import Campaigns
from agi.outbound.lists import ContactLists
from agi.outbound.model import Campaign, CampaignSpec

ORG = "Example Energy Ltd"
PURPOSE = "marketing-calls"
CALLER_ID = "+442079460000"  # London fixed line: callable back

_keys = itertools.count(1)

BASE_SPEC = CampaignSpec(
    name="winter",
    organisation=ORG,
    purpose=PURPOSE,
    caller_id=CALLER_ID,
    dial_template="PJSIP/{number}@trunk",
    profile="uk-pecr",
    pacing_cps=1000.0,
    max_concurrent=50,
    max_attempts=2,
    retry_spacing=timedelta(0),
    ring_seconds=25,
)


async def make_campaign(campaigns: Campaigns, **changes: Any) -> Campaign:
    return await campaigns.create_campaign(replace(BASE_SPEC, **changes))


async def fresh_lists(
    contact_lists: ContactLists, *lists: str, as_of: date | None = None
) -> None:
    """Load (empty-ish) current snapshots so the staleness rule passes."""
    day = as_of or datetime.now(UTC).date()
    for name in lists or ("tps", "ctps"):
        await contact_lists.import_suppression(name, day, ["+441632960999"])


async def consent(
    ledger: Ledger,
    number: str,
    decision: str = "opt_in",
    *,
    organisation: str = ORG,
    purpose: str = PURPOSE,
    consent_channel: str = "automated_call",
    method: str = "ivr_inbound",
    captured_by: str = "first_party",
    decided_at: datetime | None = None,
) -> int:
    event_id, _ = await ledger.record_decision(
        ConsentDecision(
            number_e164=number,
            organisation=organisation,
            purpose=purpose,
            decision=decision,
            method=method,
            evidence_strength="caller_id",
            decided_at=decided_at or datetime.now(UTC),
            idempotency_key=f"test-{next(_keys)}-{number}-{decision}",
            instance="test",
            consent_channel=consent_channel,
            captured_by=captured_by,
        )
    )
    return event_id


def window(start: str, end: str) -> tuple[time, time]:
    return time.fromisoformat(start), time.fromisoformat(end)
