"""Campaigns, contact lists, suppression lists and the facts the marketing gate decides on.

Every SQL statement about campaigns, contacts, suppression, do-not-call, dial attempts and
marketing playback lives here (asyncpg); domain types go in and out.  The *decisions* are not
made here: :mod:`agi.outbound.policy` is the one place that says yes or no.  This module fetches the
facts, set-based (one query over a whole list for the dry run, the same query for one number at
dial time and in the call), so the screen and the dialer cannot disagree about what the ledger
says.

The "effective" consent event of a number for a campaign is, in order:

1. the newest opt-out from the campaign's organisation, on any channel and for any purpose, if it
   is newer than the newest automated-channel event for the campaign's purpose (withdrawal is
   never narrower than the person meant: fail closed);
2. else the newest automated-channel event for the campaign's purpose;
3. else the newest event for the purpose on any channel (so "consent for live calls only" is
   refused as ``wrong_channel`` rather than as a bare ``no_consent``).

"Newest" is by ``decided_at`` then ``id`` (the ledger's own rule), among events the ledger held
at the time asked about.
"""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any, Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import asyncpg

from agi.ledger.ledger import DB_UNAVAILABLE
from agi.ledger.numbers import fast_e164, normalise_number
from agi.ledger.records import LedgerUnavailable
from agi.outbound import policy
from agi.outbound.gate import CAMPAIGN_BLOCKING, PERMANENT, decide_dial
from agi.outbound.model import (
    LISTS,
    Campaign,
    CampaignError,
    CampaignSpec,
    Claim,
    ContactFacts,
    DialJob,
    DialledAttempt,
    ImportReport,
    RejectedRow,
    ScreenRow,
    SuppressionReport,
    _campaign,
)

__all__ = ["CampaignStore", "db_failure", "parse_contacts_csv"]  # records: agi.outbound.model

_NUMBER_HEADERS: Final = frozenset(
    {"number", "phone", "phone_number", "msisdn", "telephone", "tel"}
)



_CAMPAIGN_COLUMNS = """id, name, organisation, purpose, profile, audio_prompt, window_start,
    window_end, caller_id, dial_template, default_region, pacing_cps, max_concurrent,
    max_attempts, retry_spacing, ring_seconds, opt_out_key, status, halted_at, halt_reason,
    created_at, reconfirm"""


_INSERT_CAMPAIGN = f"""
    INSERT INTO campaign (name, organisation, purpose, profile, audio_prompt, window_start,
        window_end, caller_id, dial_template, default_region, pacing_cps, max_concurrent,
        max_attempts, retry_spacing, ring_seconds, opt_out_key, reconfirm)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)
    RETURNING {_CAMPAIGN_COLUMNS}"""  # noqa: S608


def refill(tokens: float, updated_at: datetime, now: datetime, rate: float) -> float:
    """Token bucket: ``rate`` tokens a second, capacity one second's worth (at least 1)."""
    elapsed = max((now - updated_at).total_seconds(), 0.0)
    return min(max(1.0, rate), tokens + elapsed * rate)


# How long a refused contact waits before the gate is asked again, by reason.
_RETRY_AFTER: Final = {
    policy.OUTSIDE_HOURS: timedelta(minutes=15),
    policy.ERROR: timedelta(minutes=1),
}


# --------------------------------------------------------------------------- numbers


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


# --------------------------------------------------------------------------- facts SQL

# The facts of every target number (``targets``: contact_id, number_e164, time_zones, state,
# attempts, last_attempt_at) for one organisation ($1), purpose ($2), at time $3, with the
# numbers the durable journal holds opt-outs for ($4) counted as do-not-call.
_FACTS_SQL = """
SELECT t.contact_id, t.number_e164, t.time_zones, t.state, t.attempts, t.last_attempt_at,
       ev.id AS ev_id, ev.decision AS ev_decision, ev.recorded_at AS ev_recorded_at,
       ev.channel AS ev_channel, ev.organisation AS ev_organisation,
       ev.captured_by AS ev_captured_by,
       (EXISTS (SELECT 1 FROM do_not_call d
                 WHERE d.number_e164 = t.number_e164 AND d.organisation = $1)
        OR t.number_e164 = ANY($4::text[])) AS dnc,
       EXISTS (SELECT 1 FROM suppression_entry s
                WHERE s.number_e164 = t.number_e164
                  AND s.snapshot_id = ANY(ARRAY(
                      SELECT id FROM suppression_snapshot WHERE current))) AS suppressed
FROM ({targets}) t
LEFT JOIN LATERAL (
    SELECT e.id, e.decided_at FROM consent_event e
     WHERE e.number_e164 = t.number_e164 AND e.purpose = $2 AND e.organisation = $1
       AND e.channel = 'automated_call' AND e.recorded_at <= $3
     ORDER BY e.decided_at DESC, e.id DESC LIMIT 1) a ON true
LEFT JOIN LATERAL (
    SELECT e.id, e.decided_at FROM consent_event e
     WHERE e.number_e164 = t.number_e164 AND e.organisation = $1
       AND e.decision = 'opt_out' AND e.recorded_at <= $3
     ORDER BY e.decided_at DESC, e.id DESC LIMIT 1) o ON true
LEFT JOIN LATERAL (
    SELECT e.id FROM consent_event e
     WHERE a.id IS NULL
       AND e.number_e164 = t.number_e164 AND e.purpose = $2 AND e.organisation = $1
       AND e.recorded_at <= $3
     ORDER BY e.decided_at DESC, e.id DESC LIMIT 1) l ON true
LEFT JOIN consent_event ev ON ev.id = CASE
    WHEN o.id IS NOT NULL AND (a.id IS NULL OR (o.decided_at, o.id) > (a.decided_at, a.id))
        THEN o.id
    ELSE COALESCE(a.id, l.id) END
"""

_CONTACT_TARGETS = """SELECT id AS contact_id, number_e164, time_zones, state, attempts,
    last_attempt_at FROM contact WHERE campaign_id = $5"""
_ONE_CONTACT_TARGETS = """SELECT id AS contact_id, number_e164, time_zones, state, attempts,
    last_attempt_at FROM contact WHERE id = $5"""
_NUMBER_TARGETS = """SELECT NULL::bigint AS contact_id, $5::text AS number_e164,
    '{}'::text[] AS time_zones, 'ready'::text AS state, 0 AS attempts,
    NULL::timestamptz AS last_attempt_at"""


def _facts(row: Mapping[str, Any]) -> ContactFacts:
    latest = None
    if row["ev_id"] is not None:
        latest = policy.ConsentEvent(
            decision=row["ev_decision"],
            recorded_at=row["ev_recorded_at"],
            consent_channel=row["ev_channel"],
            organisation=row["ev_organisation"],
            captured_by=row["ev_captured_by"],
            # the event is stored under this organisation's name: it names it
            third_party_names_organisation=True,
            event_id=int(row["ev_id"]),
        )
    return ContactFacts(
        contact_id=row["contact_id"],
        number_e164=row["number_e164"],
        time_zones=tuple(row["time_zones"]),
        state=row["state"],
        attempts=row["attempts"],
        last_attempt_at=row["last_attempt_at"],
        latest=latest,
        do_not_call=bool(row["dnc"]),
        suppressed=bool(row["suppressed"]),
    )


def zone_verdicts(
    profile: policy.Profile,
    window: tuple[time, time] | None,
    zones: Iterable[str],
    at: datetime,
) -> dict[str, str]:
    """Per IANA zone: ``allowed``, ``outside_hours`` or ``unknown_timezone`` at ``at``.

    The same windows and half-open rule as
    :func:`agi.outbound.policy.check_calling_hours`, evaluated once per distinct zone instead
    of once per number.
    """
    windows = [w for w in (profile.calling_window, window) if w is not None]
    out: dict[str, str] = {}
    for name in zones:
        try:
            local = at.astimezone(ZoneInfo(name)).time()
        except (ZoneInfoNotFoundError, ValueError):
            out[name] = policy.UNKNOWN_TIMEZONE
            continue
        inside = all(start <= local < end for start, end in windows)
        out[name] = policy.ALLOWED if inside else policy.OUTSIDE_HOURS
    return out


# The same facts for a whole list, set-based: the ledger rows of the organisation for the
# list's numbers are read once and ranked with DISTINCT ON (hash joins instead of 3 index
# probes per contact). test_screen checks it agrees with _FACTS_SQL + the Python gate.
_LIST_FACTS_SQL = """
WITH t AS MATERIALIZED (
    SELECT id AS contact_id, number_e164, time_zones, state, attempts, last_attempt_at
      FROM contact WHERE campaign_id = $5),
ev AS MATERIALIZED (
    SELECT e.id, e.number_e164, e.decided_at, e.purpose, e.channel, e.decision,
           e.recorded_at, e.organisation, e.captured_by
      FROM consent_event e
     WHERE e.organisation = $1 AND e.recorded_at <= $3
       AND e.number_e164 IN (SELECT number_e164 FROM t)),
a AS (SELECT DISTINCT ON (number_e164) number_e164, id, decided_at FROM ev
       WHERE purpose = $2 AND channel = 'automated_call'
       ORDER BY number_e164, decided_at DESC, id DESC),
o AS (SELECT DISTINCT ON (number_e164) number_e164, id, decided_at FROM ev
       WHERE decision = 'opt_out'
       ORDER BY number_e164, decided_at DESC, id DESC),
l AS (SELECT DISTINCT ON (number_e164) number_e164, id FROM ev
       WHERE purpose = $2
       ORDER BY number_e164, decided_at DESC, id DESC),
sup AS (SELECT DISTINCT s.number_e164 FROM suppression_entry s
         WHERE s.snapshot_id = ANY(ARRAY(SELECT id FROM suppression_snapshot WHERE current))
           AND s.number_e164 IN (SELECT number_e164 FROM t)),
eff AS (
    SELECT t.*, CASE
        WHEN o.id IS NOT NULL AND (a.id IS NULL OR (o.decided_at, o.id) > (a.decided_at, a.id))
            THEN o.id
        ELSE COALESCE(a.id, l.id) END AS eff_id
      FROM t
      LEFT JOIN a ON a.number_e164 = t.number_e164
      LEFT JOIN o ON o.number_e164 = t.number_e164
      LEFT JOIN l ON l.number_e164 = t.number_e164)
SELECT eff.contact_id, eff.number_e164, eff.time_zones, eff.state, eff.attempts,
       eff.last_attempt_at,
       ev.id AS ev_id, ev.decision AS ev_decision, ev.recorded_at AS ev_recorded_at,
       ev.channel AS ev_channel, ev.organisation AS ev_organisation,
       ev.captured_by AS ev_captured_by,
       (d.number_e164 IS NOT NULL OR eff.number_e164 = ANY($4::text[])) AS dnc,
       (sup.number_e164 IS NOT NULL) AS suppressed
  FROM eff
  LEFT JOIN ev ON ev.id = eff.eff_id
  LEFT JOIN do_not_call d ON d.number_e164 = eff.number_e164 AND d.organisation = $1
  LEFT JOIN sup ON sup.number_e164 = eff.number_e164
"""


# The dry run: the gate's order (agi.outbound.policy.gate) as one CASE over the facts of every
# contact.
# $6 campaign-level refusal (stale list, caller ID) or NULL; $7 consent channels; $8 third-party
# max age or NULL; $9 whether a calling window applies; $10/$11 zones and their verdicts;
# $12 max attempts; $13 retry spacing.
_SCREEN_SQL = """
WITH f AS ({facts}),
zv AS (SELECT * FROM unnest($10::text[], $11::text[]) AS z(name, verdict)),
failing AS (SELECT array_agg(name) AS names FROM zv WHERE verdict <> 'allowed')
SELECT f.number_e164, f.state, f.ev_id,
  CASE
    WHEN $6::text IS NOT NULL THEN $6::text
    WHEN f.dnc THEN 'do_not_call'
    WHEN f.suppressed THEN 'suppressed'
    WHEN f.ev_id IS NULL THEN 'no_consent'
    WHEN f.ev_decision = 'opt_out' THEN 'opted_out'
    WHEN f.ev_decision <> 'opt_in' THEN 'no_consent'
    WHEN f.ev_recorded_at >= $3 THEN 'consent_not_before_call'
    WHEN NOT (f.ev_channel = ANY($7::text[])) THEN 'wrong_channel'
    WHEN f.ev_organisation <> $1 THEN 'wrong_organisation'
    WHEN f.ev_captured_by = 'third_party' AND $8::interval IS NOT NULL
         AND $3 - f.ev_recorded_at > $8::interval THEN 'third_party_stale'
    WHEN f.ev_captured_by NOT IN ('first_party', 'third_party') THEN 'no_consent'
    WHEN $9 AND cardinality(f.time_zones) = 0 THEN 'unknown_timezone'
    WHEN $9 AND f.time_zones && (SELECT names FROM failing) THEN (
        SELECT zv.verdict FROM unnest(f.time_zones) WITH ORDINALITY AS z(name, ord)
          JOIN zv ON zv.name = z.name
         WHERE zv.verdict <> 'allowed' ORDER BY z.ord LIMIT 1)
    WHEN f.attempts >= $12 THEN 'attempts_exhausted'
    WHEN f.last_attempt_at IS NOT NULL AND $3 - f.last_attempt_at < $13::interval
        THEN 'retry_too_soon'
    ELSE 'allowed'
  END AS reason
FROM f
"""


# --------------------------------------------------------------------------- store


class CampaignStore:
    """Campaign, list, dial-attempt and playback SQL over an asyncpg pool."""

    def __init__(
        self, pool: asyncpg.Pool, *, timeout: float = 3.0, screen_timeout: float = 900.0
    ) -> None:
        self.pool = pool
        self.timeout = timeout
        # a dry run over a whole list is one long query (seconds for 495k numbers): the
        # per-statement budget of the call path would kill it
        self.screen_timeout = screen_timeout

    # ----------------------------------------------------------------- campaigns

    async def create_campaign(self, spec: CampaignSpec) -> Campaign:
        spec.validate()
        try:
            row = await self.pool.fetchrow(
                _INSERT_CAMPAIGN,
                spec.name,
                spec.organisation.strip(),
                spec.purpose,
                policy.get_profile(spec.profile).name,
                spec.audio_prompt,
                spec.window[0] if spec.window else None,
                spec.window[1] if spec.window else None,
                spec.caller_id,
                spec.dial_template,
                spec.default_region.upper(),
                spec.pacing_cps,
                spec.max_concurrent,
                spec.max_attempts,
                spec.retry_spacing,
                spec.ring_seconds,
                spec.opt_out_key,
                spec.reconfirm,
            )
        except asyncpg.UniqueViolationError:
            raise CampaignError(f"a campaign named {spec.name!r} already exists") from None
        assert row is not None
        return _campaign(row)

    async def get_campaign(self, key: str | int) -> Campaign | None:
        """By id (int or digits) or by name."""
        if isinstance(key, int) or (isinstance(key, str) and key.isdigit()):
            row = await self.pool.fetchrow(
                f"SELECT {_CAMPAIGN_COLUMNS} FROM campaign WHERE id = $1", int(key),  # noqa: S608
                timeout=self.timeout,
            )
        else:
            row = await self.pool.fetchrow(
                f"SELECT {_CAMPAIGN_COLUMNS} FROM campaign WHERE name = $1", key,  # noqa: S608
                timeout=self.timeout,
            )
        return _campaign(row) if row else None

    async def require_campaign(self, key: str | int) -> Campaign:
        found = await self.get_campaign(key)
        if found is None:
            raise CampaignError(f"no campaign {key!r}")
        return found

    async def list_campaigns(self) -> list[Campaign]:
        rows = await self.pool.fetch(
            f"SELECT {_CAMPAIGN_COLUMNS} FROM campaign ORDER BY id"  # noqa: S608
        )
        return [_campaign(r) for r in rows]

    async def set_status(self, campaign_id: int, status: str, reason: str | None = None) -> None:
        """Pause, resume or halt.  Resuming clears a halt (an administrator's decision)."""
        await self.pool.execute(
            """UPDATE campaign SET status = $2,
                   halted_at = CASE WHEN $2 = 'halted' THEN clock_timestamp() END,
                   halt_reason = CASE WHEN $2 = 'halted' THEN $3 END
               WHERE id = $1""",
            campaign_id, status, reason,
        )

    async def campaign_stats(self, campaign_id: int) -> dict[str, Any]:
        """Contact states, attempts by state and the playback counters of one campaign."""
        contacts = await self.pool.fetch(
            "SELECT state, count(*) AS n FROM contact WHERE campaign_id = $1 GROUP BY state",
            campaign_id,
        )
        attempts = await self.pool.fetch(
            """SELECT state, reason, count(*) AS n FROM dial_attempt WHERE campaign_id = $1
               GROUP BY state, reason ORDER BY state, reason""",
            campaign_id,
        )
        plays = await self.pool.fetchrow(
            """SELECT count(*) AS plays,
                      count(*) FILTER (WHERE NOT consent_verified AND status <> 'blocked')
                          AS unconsented,
                      count(*) FILTER (WHERE status = 'blocked') AS blocked
               FROM marketing_play WHERE campaign_id = $1""",
            campaign_id,
        )
        refused = await self.pool.fetchval(
            "SELECT count(*) FROM marketing_refused WHERE campaign_id = $1", campaign_id
        )
        assert plays is not None
        return {
            "contacts": {r["state"]: r["n"] for r in contacts},
            "dial_attempts": [dict(r) for r in attempts],
            "marketing_plays": plays["plays"],
            "marketing_refused": refused,
            "plays_blocked": plays["blocked"],
            "unconsented_plays": plays["unconsented"],
        }

    async def unconsented_plays(self, campaign_id: int | None = None) -> int:
        """Marketing audio played without a consent the database could verify. Must be 0."""
        value = await self.pool.fetchval(
            """SELECT count(*) FROM marketing_play
               WHERE NOT consent_verified AND status <> 'blocked'
                 AND ($1::bigint IS NULL OR campaign_id = $1)""",
            campaign_id,
            timeout=self.timeout,
        )
        return int(value)

    # ----------------------------------------------------------------- contacts

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

    # ----------------------------------------------------------------- suppression

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
        region = region.upper()

        def records() -> Iterator[tuple[str]]:
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

        async with self.pool.acquire() as conn:
            snap = await conn.fetchval(
                """INSERT INTO suppression_snapshot (list, as_of, source_file)
                   VALUES ($1, $2, $3) RETURNING id""",
                list_name, as_of, source,
            )
            table = f"suppression_entry_s{int(snap)}"
            try:
                await conn.execute(
                    f"""CREATE TABLE {table} (
                            snapshot_id bigint NOT NULL DEFAULT {int(snap)}
                                CHECK (snapshot_id = {int(snap)}),
                            number_e164 text NOT NULL)"""
                )
                await conn.copy_records_to_table(
                    table, records=records(), columns=["number_e164"]
                )
                await conn.execute(f"CREATE INDEX ON {table} (number_e164)")
                await conn.execute(f"ANALYZE {table}")
                async with conn.transaction():
                    await conn.execute(
                        f"ALTER TABLE suppression_entry ATTACH PARTITION {table} "
                        f"FOR VALUES IN ({int(snap)})"
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
            except BaseException:
                await conn.execute(f"DROP TABLE IF EXISTS {table}")
                await conn.execute("DELETE FROM suppression_snapshot WHERE id = $1", snap)
                raise
        report.snapshot_id = int(snap)
        report.numbers = int(count)
        report.replaced_snapshot = int(old) if old is not None else None
        return report

    async def snapshots(self, conn: Any = None) -> dict[str, date]:
        """As-of date of the current snapshot of each list."""
        runner = conn or self.pool
        rows = await runner.fetch(
            "SELECT list, as_of FROM suppression_snapshot WHERE current", timeout=self.timeout
        )
        return {r["list"]: r["as_of"] for r in rows}

    # ----------------------------------------------------------------- facts

    async def facts_for_number(
        self,
        campaign: Campaign,
        number_e164: str,
        at: datetime,
        journal_opt_outs: Sequence[str] = (),
        conn: Any = None,
    ) -> ContactFacts:
        """The gate's facts for one number (in a call: no contact row needed)."""
        runner = conn or self.pool
        row = await runner.fetchrow(
            _FACTS_SQL.format(targets=_NUMBER_TARGETS),
            campaign.organisation, campaign.purpose, at, list(journal_opt_outs), number_e164,
            timeout=self.timeout,
        )
        assert row is not None
        return _facts(row)

    async def facts_for_contact(
        self,
        conn: Any,
        campaign: Campaign,
        contact_id: int,
        at: datetime,
        journal_opt_outs: Sequence[str] = (),
    ) -> ContactFacts:
        row = await conn.fetchrow(
            _FACTS_SQL.format(targets=_ONE_CONTACT_TARGETS),
            campaign.organisation, campaign.purpose, at, list(journal_opt_outs), contact_id,
            timeout=self.timeout,
        )
        assert row is not None
        return _facts(row)

    # ----------------------------------------------------------------- dry run

    async def _screen_args(
        self, campaign: Campaign, at: datetime, journal_opt_outs: Sequence[str]
    ) -> tuple[Any, ...]:
        profile = campaign.policy_profile
        snaps = await self.snapshots()
        blocked: str | None = None
        lists = policy.check_snapshot_freshness(profile, snaps, at.astimezone(UTC).date())
        if not lists.allowed:
            blocked = lists.reason
        else:
            cid = policy.check_caller_id(profile, campaign.caller_id)
            if not cid.allowed:
                blocked = cid.reason
        window_applies = profile.calling_window is not None or campaign.window is not None
        zones = await self.pool.fetchval(
            """SELECT coalesce(array_agg(DISTINCT z), '{}') FROM contact, unnest(time_zones) z
               WHERE campaign_id = $1""",
            campaign.id,
        )
        verdicts = zone_verdicts(profile, campaign.window, zones, at)
        return (
            campaign.organisation,
            campaign.purpose,
            at,
            list(journal_opt_outs),
            campaign.id,
            blocked,
            sorted(profile.consent_channels),
            profile.third_party_max_age,
            window_applies,
            list(verdicts),
            list(verdicts.values()),
            campaign.max_attempts,
            campaign.retry_spacing,
        )

    def _screen_sql(self) -> str:
        return _SCREEN_SQL.format(facts=_LIST_FACTS_SQL)

    async def screen_counts(
        self, campaign: Campaign, at: datetime, journal_opt_outs: Sequence[str] = ()
    ) -> dict[str, int]:
        """Counts by gate outcome over the whole list: one query."""
        args = await self._screen_args(campaign, at, journal_opt_outs)
        rows = await self.pool.fetch(
            f"SELECT reason, count(*) AS n FROM ({self._screen_sql()}) s GROUP BY reason",  # noqa: S608
            *args,
            timeout=self.screen_timeout,
        )
        return {r["reason"]: int(r["n"]) for r in rows}

    async def screen_rows(
        self, campaign: Campaign, at: datetime, journal_opt_outs: Sequence[str] = ()
    ) -> AsyncIterator[ScreenRow]:
        """Per-number outcome over the whole list (one query, streamed with a cursor)."""
        args = await self._screen_args(campaign, at, journal_opt_outs)
        async with self.pool.acquire() as conn, conn.transaction():
            async for r in conn.cursor(
                self._screen_sql() + " ORDER BY number_e164", *args, prefetch=5000,
                timeout=self.screen_timeout,
            ):
                yield ScreenRow(r["number_e164"], r["state"], r["reason"], r["ev_id"])

    # ----------------------------------------------------------------- dialer jobs

    async def claim_next(
        self,
        campaign_id: int,
        worker: str,
        lease: timedelta,
        journal_numbers: Sequence[str] = (),
    ) -> Claim:
        """Claim one due contact and decide, in the same short transaction.

        The campaign row is locked for the length of this transaction only (pacing and the
        concurrency count are campaign-wide, across workers); the contact is taken with
        ``FOR UPDATE SKIP LOCKED`` and leased, never locked during the call.  Every decision
        is a ``dial_attempt`` row.
        """
        async with self.pool.acquire(timeout=self.timeout) as conn, conn.transaction():
            row = await conn.fetchrow(
                f"""SELECT {_CAMPAIGN_COLUMNS}, pace_tokens, pace_updated_at,
                           clock_timestamp() AS now
                    FROM campaign WHERE id = $1 FOR UPDATE""",  # noqa: S608
                campaign_id,
                timeout=self.timeout,
            )
            if row is None:
                raise CampaignError(f"no campaign {campaign_id}")
            data = dict(row)
            now: datetime = data.pop("now")
            tokens = refill(data.pop("pace_tokens"), data.pop("pace_updated_at"), now,
                            float(data["pacing_cps"]))
            campaign = _campaign(data)
            if campaign.status != "active":
                return Claim(campaign.status)
            unverified = await conn.fetchval(
                """SELECT count(*) FROM marketing_play
                   WHERE campaign_id = $1 AND NOT consent_verified""",
                campaign_id,
            )
            if unverified:
                await conn.execute(
                    """UPDATE campaign SET status = 'halted', halted_at = clock_timestamp(),
                           halt_reason = 'unverified consent on marketing_play'
                       WHERE id = $1""",
                    campaign_id,
                )
                return Claim("halted")
            active = await conn.fetchval(
                """SELECT count(*) FROM dial_attempt
                   WHERE campaign_id = $1 AND state IN ('originating', 'answered')""",
                campaign_id,
            )
            if active >= campaign.max_concurrent:
                return Claim("busy", in_flight=int(active))
            if tokens < 1.0:
                return Claim("wait", wait_s=(1.0 - tokens) / campaign.pacing_cps)
            contact = await conn.fetchrow(
                """UPDATE contact SET state = 'dialling', lease_owner = $2,
                       lease_expires_at = $3::timestamptz + $4::interval
                   WHERE id IN (
                       SELECT id FROM contact
                        WHERE campaign_id = $1 AND state = 'ready' AND next_attempt_at <= $3
                        ORDER BY next_attempt_at, id
                        LIMIT 1
                        FOR UPDATE SKIP LOCKED)
                   RETURNING id, number_e164, attempts""",
                campaign_id, worker, now, lease,
            )
            if contact is None:
                nxt = await conn.fetchrow(
                    """SELECT min(next_attempt_at) FILTER (WHERE state = 'ready') AS due,
                              count(*) FILTER (WHERE state = 'dialling') AS dialling
                       FROM contact WHERE campaign_id = $1""",
                    campaign_id,
                )
                assert nxt is not None
                return Claim("idle", next_due=nxt["due"], in_flight=int(nxt["dialling"]))
            facts = await self.facts_for_contact(
                conn, campaign, contact["id"], now, journal_numbers
            )
            snapshots = await self.snapshots(conn)
            decision = decide_dial(
                campaign, facts, snapshots=snapshots, now=now, journal_numbers=journal_numbers
            )
            event_id = facts.latest.event_id if facts.latest else None
            attempt_no = int(contact["attempts"]) + (1 if decision.allowed else 0)
            attempt_id = await conn.fetchval(
                """INSERT INTO dial_attempt (campaign_id, contact_id, number_e164, attempt_no,
                       decided_at, allowed, reason, rule, detail, consent_event_id, worker,
                       state)
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
                   RETURNING id""",
                campaign_id, contact["id"], contact["number_e164"], attempt_no, now,
                decision.allowed, decision.reason, decision.rule, decision.detail[:1000],
                event_id, worker, "originating" if decision.allowed else "refused",
            )
            if decision.allowed:
                action_id = f"consent-{attempt_id}"
                await conn.execute(
                    "UPDATE dial_attempt SET action_id = $2 WHERE id = $1", attempt_id, action_id
                )
                await conn.execute(
                    """UPDATE contact SET attempts = attempts + 1, last_attempt_at = $2
                       WHERE id = $1""",
                    contact["id"], now,
                )
                await conn.execute(
                    """UPDATE campaign SET pace_tokens = $2, pace_updated_at = $3
                       WHERE id = $1""",
                    campaign_id, tokens - 1.0, now,
                )
                job = DialJob(
                    attempt_id=int(attempt_id),
                    action_id=action_id,
                    contact_id=int(contact["id"]),
                    campaign_id=campaign_id,
                    number_e164=contact["number_e164"],
                    attempt_no=attempt_no,
                    dial_string=campaign.dial_string(contact["number_e164"]),
                    caller_id=campaign.caller_id,
                    organisation=campaign.organisation,
                    ring_seconds=max(campaign.ring_seconds,
                                     campaign.policy_profile.min_ring_seconds),
                    consent_event_id=event_id,
                )
                return Claim("dial", job=job, decision=decision)
            if decision.reason in CAMPAIGN_BLOCKING:
                state, due = "ready", now  # not this contact's fault: leave it as it was
            elif decision.reason in PERMANENT:
                state = "exhausted" if decision.reason == policy.ATTEMPTS_EXHAUSTED else "refused"
                due = now
            else:
                state = "ready"
                if decision.reason == policy.RETRY_TOO_SOON and facts.last_attempt_at:
                    due = facts.last_attempt_at + campaign.retry_spacing
                else:
                    due = now + _RETRY_AFTER.get(decision.reason, timedelta(minutes=5))
            await conn.execute(
                """UPDATE contact SET state = $2, next_attempt_at = $3, outcome = $4,
                       lease_owner = NULL, lease_expires_at = NULL
                   WHERE id = $1""",
                contact["id"], state, due, decision.reason,
            )
            kind = "blocked" if decision.reason in CAMPAIGN_BLOCKING else "refused"
            return Claim(kind, decision=decision)

    async def mark_answered(self, attempt_id: int, uniqueid: str | None) -> None:
        await self.pool.execute(
            """UPDATE dial_attempt SET state = 'answered', uniqueid = coalesce($2, uniqueid),
                   answered_at = coalesce(answered_at, clock_timestamp())
               WHERE id = $1 AND state = 'originating'""",
            attempt_id, uniqueid,
            timeout=self.timeout,
        )

    async def finish_attempt(
        self,
        attempt_id: int,
        state: str,
        *,
        originate_reason: int | None = None,
        hangup_cause: int | None = None,
        uniqueid: str | None = None,
    ) -> str | None:
        """Close one attempt (once) and release its contact.  Returns the contact's state.

        The contact is done when the marketing route recorded an outcome (the callee heard
        something or was refused); otherwise it waits ``retry_spacing`` for another attempt,
        or is exhausted.
        """
        async with self.pool.acquire(timeout=self.timeout) as conn, conn.transaction():
            att = await conn.fetchrow(
                """UPDATE dial_attempt SET state = $2,
                       originate_reason = coalesce($3, originate_reason),
                       hangup_cause = coalesce($4, hangup_cause),
                       uniqueid = coalesce($5, uniqueid), ended_at = clock_timestamp()
                   WHERE id = $1 AND state IN ('originating', 'answered')
                   RETURNING contact_id, result""",
                attempt_id, state, originate_reason, hangup_cause, uniqueid,
            )
            if att is None:
                return None
            return await self._release(conn, att["contact_id"], att["result"], state)

    @staticmethod
    async def _release(conn: Any, contact_id: int, result: str | None, outcome: str) -> str | None:
        value = await conn.fetchval(
            """UPDATE contact c SET
                   state = CASE WHEN $2::text IS NOT NULL AND $2 <> 'error' THEN 'done'
                                WHEN c.attempts >= cp.max_attempts THEN 'exhausted'
                                ELSE 'ready' END,
                   outcome = coalesce($2, $3),
                   next_attempt_at = clock_timestamp() + cp.retry_spacing,
                   lease_owner = NULL, lease_expires_at = NULL
               FROM campaign cp
               WHERE c.id = $1 AND cp.id = c.campaign_id AND c.state = 'dialling'
               RETURNING c.state""",
            contact_id, result, outcome,
        )
        return str(value) if value is not None else None

    async def renew_leases(self, contact_ids: Sequence[int], worker: str, lease: timedelta) -> int:
        if not contact_ids:
            return 0
        status = await self.pool.execute(
            """UPDATE contact SET lease_expires_at = clock_timestamp() + $3
               WHERE id = ANY($1::bigint[]) AND lease_owner = $2 AND state = 'dialling'""",
            list(contact_ids), worker, lease,
            timeout=self.timeout,
        )
        return int(status.split()[-1])

    async def reap_expired(self, campaign_id: int | None = None) -> int:
        """Release contacts whose worker's lease ran out (the worker died or lost the DB).

        The attempt is closed as ``unknown`` -- it may have rung -- and counts; the contact
        waits ``retry_spacing`` like after any attempt.  Nothing is re-sent.
        """
        async with self.pool.acquire(timeout=self.timeout) as conn, conn.transaction():
            rows = await conn.fetch(
                """SELECT id FROM contact
                   WHERE state = 'dialling' AND lease_expires_at < clock_timestamp()
                     AND ($1::bigint IS NULL OR campaign_id = $1)
                   FOR UPDATE SKIP LOCKED""",
                campaign_id,
            )
            for r in rows:
                att = await conn.fetchrow(
                    """UPDATE dial_attempt SET state = 'unknown', ended_at = clock_timestamp(),
                           detail = detail || ' [lease expired]'
                       WHERE contact_id = $1 AND state IN ('originating', 'answered')
                       RETURNING result""",
                    r["id"],
                )
                await self._release(conn, r["id"], att["result"] if att else None,
                                    "lease_expired")
        return len(rows)

    async def active_campaigns(self) -> list[Campaign]:
        rows = await self.pool.fetch(
            f"SELECT {_CAMPAIGN_COLUMNS} FROM campaign WHERE status = 'active' ORDER BY id"  # noqa: S608
        )
        return [_campaign(r) for r in rows]

    # ----------------------------------------------------------------- marketing route

    async def attempt_for_call(self, attempt_id: int) -> DialledAttempt | None:
        """The dial attempt an outbound call names in its AGI URL (``attempt=N``)."""
        row = await self.pool.fetchrow(
            """SELECT id, campaign_id, number_e164, decided_at, state, allowed
               FROM dial_attempt WHERE id = $1""",
            attempt_id,
            timeout=self.timeout,
        )
        return DialledAttempt(**dict(row)) if row else None

    async def set_attempt_result(self, attempt_id: int, result: str) -> None:
        await self.pool.execute(
            """UPDATE dial_attempt SET result = $2,
                   answered_at = coalesce(answered_at, clock_timestamp())
               WHERE id = $1""",
            attempt_id, result,
            timeout=self.timeout,
        )

    async def start_play(
        self,
        *,
        campaign: Campaign,
        attempt_id: int | None,
        number_e164: str,
        consent_event_id: int,
        call_started_at: datetime,
        prompts_json: str,
        uniqueid: str | None,
        channel_name: str | None,
        instance: str,
        idempotency_key: str,
    ) -> tuple[int, bool]:
        """Record the playback about to start, verified independently in SQL.

        Returns (play id, verified).  When the database cannot verify the consent the row is
        stored as ``blocked`` (nothing may play) and the campaign halts (trigger).
        """
        row = await self.pool.fetchrow(
            """WITH v AS (SELECT marketing_consent_ok($3, $4, $5, $6, $7, clock_timestamp())
                              AS ok)
               INSERT INTO marketing_play (campaign_id, dial_attempt_id, number_e164,
                   consent_event_id, consent_verified, call_started_at, status, audio_prompt,
                   prompts, uniqueid, channel_name, instance, idempotency_key)
               SELECT $1, $2, $3, $6, v.ok, $7,
                      CASE WHEN v.ok THEN 'playing' ELSE 'blocked' END, $8, $9::jsonb, $10,
                      $11, $12, $13
                 FROM v
               ON CONFLICT (idempotency_key)
                   DO UPDATE SET idempotency_key = EXCLUDED.idempotency_key
               RETURNING id, consent_verified""",
            campaign.id, attempt_id, number_e164, campaign.organisation, campaign.purpose,
            consent_event_id, call_started_at, campaign.audio_prompt, prompts_json, uniqueid,
            channel_name, instance, idempotency_key,
            timeout=self.timeout,
        )
        assert row is not None
        return int(row["id"]), bool(row["consent_verified"])

    async def finish_play(self, play_id: int, status: str, prompts_json: str) -> None:
        await self.pool.execute(
            """UPDATE marketing_play SET status = $2, ended_at = clock_timestamp(),
                   prompts = $3::jsonb
               WHERE id = $1 AND status = 'playing'""",
            play_id, status, prompts_json,
            timeout=self.timeout,
        )

    async def record_refused(
        self,
        *,
        campaign_id: int | None,
        attempt_id: int | None,
        number_e164: str | None,
        decision: policy.Decision,
        consent_event_id: int | None,
        uniqueid: str | None,
        channel_name: str | None,
        instance: str,
        idempotency_key: str,
    ) -> None:
        await self.pool.execute(
            """INSERT INTO marketing_refused (campaign_id, dial_attempt_id, number_e164, reason,
                   rule, detail, consent_event_id, uniqueid, channel_name, instance,
                   idempotency_key)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
               ON CONFLICT (idempotency_key) DO NOTHING""",
            campaign_id, attempt_id, number_e164, decision.reason, decision.rule,
            decision.detail[:1000], consent_event_id, uniqueid, channel_name, instance,
            idempotency_key,
            timeout=self.timeout,
        )


def db_failure(exc: BaseException) -> bool:
    """Whether ``exc`` means "the database did not answer" (fail closed, not a bug)."""
    return isinstance(exc, (*DB_UNAVAILABLE, LedgerUnavailable, asyncpg.PostgresError))


def read_lines(path: Path) -> Iterator[str]:
    with path.open(encoding="utf-8", errors="replace") as fh:
        yield from fh
