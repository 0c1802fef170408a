"""Contact lists and suppression lists: what a campaign may dial and who must never be dialled.

One aggregate of the outbound store (asyncpg): the CSV import of a campaign's contacts (every
row accounted for in the :class:`~agi.outbound.model.ImportReport`) and the full snapshots of
the suppression lists (TPS, CTPS, US DNC, internal), each loaded by COPY into its own partition
and swapped in whole, so a half-loaded list is never in force.  The as-of date of each current
snapshot is what the staleness rule of the gate reads (:meth:`ContactLists.snapshots`).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator
from dataclasses import KW_ONLY, dataclass
from datetime import UTC, date, datetime
from typing import Any, Final

import asyncpg

from agi.ledger.numbers import fast_e164, normalise_number
from agi.outbound import policy
from agi.outbound.model import (
    LISTS,
    Campaign,
    CampaignError,
    ImportReport,
    RejectedRow,
    SuppressionReport,
)

__all__ = ["ContactLists", "parse_contacts_csv"]

_NUMBER_HEADERS: Final = frozenset(
    {"number", "phone", "phone_number", "msisdn", "telephone", "tel"}
)


def parse_contacts_csv(
    text: str, region: str
) -> tuple[list[tuple[str, tuple[str, ...], int]], ImportReport]:
    """Parse a contacts CSV into (E.164, time zones, line) rows plus the report of the rest.

    The number is the column headed number/phone/msisdn/telephone, or the first column when
    the first line is not such a header.  Every row that does not become a contact appears in
    the report with its line number: rejected (empty, not a valid number) or a duplicate of an
    earlier line.
    """
    report = ImportReport()
    rows: list[tuple[str, tuple[str, ...], int]] = []
    seen: dict[str, int] = {}
    reader = csv.reader(io.StringIO(text))
    column = 0
    for index, record in enumerate(reader):
        line = reader.line_num
        if index == 0 and record:
            headers = [c.strip().lower() for c in record]
            found = [i for i, h in enumerate(headers) if h in _NUMBER_HEADERS]
            if found:
                column = found[0]
                continue
        if not record or all(not c.strip() for c in record):
            report.rows += 1
            report.rejected.append(RejectedRow(line, "", "empty row"))
            continue
        report.rows += 1
        raw = record[column] if column < len(record) else ""
        if not raw.strip():
            report.rejected.append(RejectedRow(line, ",".join(record), "no number in the row"))
            continue
        try:
            e164 = normalise_number(raw, region)
        except ValueError as exc:
            raise CampaignError(str(exc)) from None
        if e164 is None:
            report.rejected.append(
                RejectedRow(line, raw, f"not a valid phone number for region {region}")
            )
            continue
        if e164 in seen:
            report.duplicates.append(
                RejectedRow(line, raw, f"duplicate of line {seen[e164]} ({e164})")
            )
            continue
        seen[e164] = line
        rows.append((e164, policy.time_zones_for(e164), line))
    return rows, report


def _suppression_records(
    lines: Iterable[str], region: str, report: SuppressionReport
) -> Iterator[tuple[str]]:
    """The numbers of a suppression file as COPY records; what is not a number goes in the report.

    The first cell of each line is the number (a list may carry more columns); a first line
    without a digit is a header.
    """
    seen_header = False
    for lineno, raw in enumerate(lines, start=1):
        cell = raw.split(",", 1)[0].strip()
        if not cell:
            continue
        number = fast_e164(cell, region)
        if number is None:
            if lineno == 1 and not seen_header and not any(c.isdigit() for c in cell):
                seen_header = True  # a header line
                continue
            report.rejected.append(RejectedRow(lineno, cell, "not a phone number"))
            continue
        yield (number,)


@dataclass(frozen=True, slots=True)
class ContactLists:
    """A campaign's ``contact`` rows and the suppression snapshots, over an asyncpg pool."""

    pool: asyncpg.Pool
    _: KW_ONLY
    timeout: float = 3.0

    async def import_contacts(
        self, campaign: Campaign, text: str, *, source: str | None = None
    ) -> ImportReport:
        """Validate, normalise and add; numbers already in the campaign add nothing."""
        rows, report = parse_contacts_csv(text, campaign.default_region)
        if not rows:
            return report
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(
                """CREATE TEMP TABLE contact_in (number_e164 text, time_zones text[],
                       source_line integer) ON COMMIT DROP"""
            )
            await conn.copy_records_to_table(
                "contact_in", records=[(n, list(z), line) for n, z, line in rows]
            )
            added = await conn.fetchval(
                """WITH ins AS (
                       INSERT INTO contact (campaign_id, number_e164, time_zones, source_file,
                                            source_line)
                       SELECT $1, number_e164, time_zones, $2, source_line FROM contact_in
                       ON CONFLICT (campaign_id, number_e164) DO NOTHING
                       RETURNING 1)
                   SELECT count(*) FROM ins""",
                campaign.id,
                source,
            )
        report.added = int(added)
        report.already_present = len(rows) - report.added
        return report

    async def import_suppression(
        self,
        list_name: str,
        as_of: date,
        lines: Iterable[str],
        *,
        region: str = "GB",
        source: str | None = None,
    ) -> SuppressionReport:
        """Load a full snapshot of one list (COPY into its own partition) and make it current.

        The previous snapshot of the list stays in force until the new one is complete, then
        both swap in one short transaction; the old partition is dropped.
        """
        if list_name not in LISTS:
            raise CampaignError(f"unknown list {list_name!r}; known: {', '.join(LISTS)}")
        if as_of > datetime.now(UTC).date():
            raise CampaignError(f"--as-of {as_of} is in the future")
        report = SuppressionReport(list_name=list_name, as_of=as_of)
        records = _suppression_records(lines, region.upper(), report)
        async with self.pool.acquire() as conn:
            snap = int(await conn.fetchval(
                """INSERT INTO suppression_snapshot (list, as_of, source_file)
                   VALUES ($1, $2, $3) RETURNING id""",
                list_name, as_of, source,
            ))
            table = f"suppression_entry_s{snap}"
            try:
                await self._load_partition(conn, table, snap, records)
                old, count = await self._make_current(conn, list_name, snap, table, report)
            except BaseException:
                await conn.execute(f"DROP TABLE IF EXISTS {table}")
                await conn.execute("DELETE FROM suppression_snapshot WHERE id = $1", snap)
                raise
        report.snapshot_id = snap
        report.numbers = int(count)
        report.replaced_snapshot = int(old) if old is not None else None
        return report

    @staticmethod
    async def _load_partition(
        conn: Any, table: str, snap: int, records: Iterator[tuple[str]]
    ) -> None:
        """COPY the numbers into a table of their own, indexed and analysed, not yet attached.

        Loading outside the list's partitioned table keeps the current snapshot in force, and
        readable, for however long a list of millions takes.
        """
        await conn.execute(
            f"""CREATE TABLE {table} (
                    snapshot_id bigint NOT NULL DEFAULT {snap}
                        CHECK (snapshot_id = {snap}),
                    number_e164 text NOT NULL)"""
        )
        await conn.copy_records_to_table(table, records=records, columns=["number_e164"])
        await conn.execute(f"CREATE INDEX ON {table} (number_e164)")
        await conn.execute(f"ANALYZE {table}")

    @staticmethod
    async def _make_current(
        conn: Any, list_name: str, snap: int, table: str, report: SuppressionReport
    ) -> tuple[int | None, int]:
        """Swap the loaded snapshot in for the list's current one, in one short transaction.

        Returns (the replaced snapshot's id or None, the numbers loaded).  The old partition
        is detached and dropped in the same transaction: no moment has two or no snapshot.
        """
        async with conn.transaction():
            await conn.execute(
                f"ALTER TABLE suppression_entry ATTACH PARTITION {table} "
                f"FOR VALUES IN ({snap})"
            )
            old = await conn.fetchval(
                """UPDATE suppression_snapshot SET current = false
                   WHERE list = $1 AND current RETURNING id""",
                list_name,
            )
            count = await conn.fetchval(f"SELECT count(*) FROM {table}")  # noqa: S608
            await conn.execute(
                """UPDATE suppression_snapshot SET current = true, numbers = $2,
                       rejected = $3 WHERE id = $1""",
                snap, count, len(report.rejected),
            )
            if old is not None:
                await conn.execute(
                    f"ALTER TABLE suppression_entry DETACH PARTITION "
                    f"suppression_entry_s{int(old)}"
                )
                await conn.execute(f"DROP TABLE suppression_entry_s{int(old)}")
        return old, int(count)

    async def snapshots(self, conn: Any = None) -> dict[str, date]:
        """As-of date of the current snapshot of each list."""
        runner = conn or self.pool
        rows = await runner.fetch(
            "SELECT list, as_of FROM suppression_snapshot WHERE current", timeout=self.timeout
        )
        return {r["list"]: r["as_of"] for r in rows}
