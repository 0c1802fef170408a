"""Contact import and suppression snapshots (agi.outbound.lists) on real PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from agi.outbound.lists import parse_contacts_csv
from agi.outbound.model import CampaignError
from agi.outbound.stores import OutboundStores
from tests.campaign_helpers import make_campaign

CSV = """name,number
Alice,07400 123456
Bob,+44 20 7946 0018
Carol,not a number
,
Dan,07400123456
Eve,+1 212 555 010
Fay,0740012345
"""


async def test_contacts_import_reports_every_row_and_is_idempotent(
    pool: asyncpg.Pool, stores: OutboundStores
) -> None:
    c = await make_campaign(stores.campaigns)
    report = await stores.lists.import_contacts(c, CSV, source="list.csv")
    assert report.added == 2  # Alice, Bob
    rejected = {(r.line, r.reason.split(" for")[0]) for r in report.rejected}
    assert (4, "not a valid phone number") in rejected
    assert (5, "empty row") in rejected
    assert (7, "not a valid phone number") in rejected  # one digit short
    assert (8, "not a valid phone number") in rejected  # one digit short
    assert len(report.rejected) == 4
    assert [(d.line, d.reason) for d in report.duplicates] == [
        (6, "duplicate of line 2 (+447400123456)")
    ]
    # every data line is accounted for: added + rejected + duplicates
    assert report.rows == 7 == report.added + len(report.rejected) + len(report.duplicates)
    rows = await pool.fetch(
        "SELECT number_e164, time_zones, source_line FROM contact ORDER BY source_line"
    )
    assert [(r["number_e164"], r["time_zones"], r["source_line"]) for r in rows] == [
        ("+447400123456", ["Europe/Guernsey", "Europe/Isle_of_Man", "Europe/Jersey",
                           "Europe/London"], 2),
        ("+442079460018", ["Europe/London"], 3),
    ]
    second = await stores.lists.import_contacts(c, CSV, source="list.csv")
    assert second.added == 0 and second.already_present == 2
    assert await pool.fetchval("SELECT count(*) FROM contact") == 2


def test_csv_without_header_uses_first_column() -> None:
    rows, report = parse_contacts_csv("07400123456\n07400123457,x\n", "GB")
    assert [r[0] for r in rows] == ["+447400123456", "+447400123457"]
    assert report.rejected == []




async def test_suppression_snapshot_replaces_the_previous_one(
    pool: asyncpg.Pool, stores: OutboundStores
) -> None:
    today = datetime.now(UTC).date()
    first = await stores.lists.import_suppression(
        "tps", today - timedelta(days=3), ["number", "07700900123", "7700900124", "junk!"]
    )
    assert first.numbers == 2
    assert [(r.line, r.raw) for r in first.rejected] == [(4, "junk!")]
    assert await stores.lists.snapshots() == {"tps": today - timedelta(days=3)}
    second = await stores.lists.import_suppression("tps", today, ["07700900125"])
    assert second.replaced_snapshot == first.snapshot_id
    numbers = await pool.fetch("SELECT number_e164 FROM suppression_entry")
    assert [r["number_e164"] for r in numbers] == ["+447700900125"]
    assert await stores.lists.snapshots() == {"tps": today}
    with pytest.raises(CampaignError, match="future"):
        await stores.lists.import_suppression("tps", today + timedelta(days=2), [])
    with pytest.raises(CampaignError, match="unknown list"):
        await stores.lists.import_suppression("robinson", today, [])
