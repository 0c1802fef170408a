"""The facts the marketing gate decides on, and the dry run over a whole list.

One aggregate of the outbound store (asyncpg): it reads the ledger, the do-not-call and
suppression lists and a contact's attempts, and stores nothing.  The *decisions* are not made
here: :mod:`agi.outbound.policy` is the one place that says yes or no.  This module fetches the
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

from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import KW_ONLY, dataclass
from datetime import UTC, datetime, time
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import asyncpg

from agi.outbound import policy
from agi.outbound.lists import ContactLists
from agi.outbound.model import Campaign, ContactFacts, ScreenRow

__all__ = ["Screening", "zone_verdicts"]

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
# probes per contact). test_screening checks it agrees with _FACTS_SQL + the Python gate.
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


@dataclass(frozen=True, slots=True)
class Screening:
    """The gate's facts for one number or contact, and the dry run over a campaign's list.

    Reads only; the current suppression snapshots come from ``lists`` (the staleness rule).
    """

    pool: asyncpg.Pool
    lists: ContactLists
    _: KW_ONLY
    timeout: float = 3.0
    #: a dry run over a whole list is one long query (seconds for 495k numbers): the
    #: per-statement budget of the call path would kill it
    screen_timeout: float = 900.0

    async def facts_for_number(
        self,
        campaign: Campaign,
        number_e164: str,
        at: datetime,
        journal_opt_outs: Sequence[str] = (),
        conn: Any = None,
    ) -> ContactFacts:
        """The gate's facts for one number (in a call: no contact row needed)."""
        return await self._facts_of(
            conn or self.pool, _NUMBER_TARGETS, campaign, number_e164, at, journal_opt_outs
        )

    async def facts_for_contact(
        self,
        conn: Any,
        campaign: Campaign,
        contact_id: int,
        at: datetime,
        journal_opt_outs: Sequence[str] = (),
    ) -> ContactFacts:
        """The gate's facts for one contact row, on ``conn`` (the claim's transaction)."""
        return await self._facts_of(
            conn, _ONE_CONTACT_TARGETS, campaign, contact_id, at, journal_opt_outs
        )

    async def _facts_of(
        self,
        runner: Any,
        targets: str,
        campaign: Campaign,
        target: int | str,
        at: datetime,
        journal_opt_outs: Sequence[str],
    ) -> ContactFacts:
        """:data:`_FACTS_SQL` over one target (``$5``: a contact id or a number)."""
        row = await runner.fetchrow(
            _FACTS_SQL.format(targets=targets),
            campaign.organisation, campaign.purpose, at, list(journal_opt_outs), target,
            timeout=self.timeout,
        )
        assert row is not None
        return _facts(row)

    # ----------------------------------------------------------------- dry run

    async def _screen_args(
        self, campaign: Campaign, at: datetime, journal_opt_outs: Sequence[str]
    ) -> tuple[Any, ...]:
        profile = campaign.policy_profile
        snaps = await self.lists.snapshots()
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
