"""Dial jobs: claim a due contact and decide, follow the attempt to its end, lease and reap.

One aggregate of the outbound store (asyncpg): the ``dial_attempt`` rows and the dialling
state of ``contact`` rows (lease, attempts, next attempt), plus the campaign's pacing bucket.
Every decision the gate makes at dial time is a ``dial_attempt`` row, allowed or not.  A
contact being dialled is *leased* to one worker (``lease_owner``/``lease_expires_at``), never
row-locked for the length of a call; a worker that dies leaves a lease that runs out, and
:meth:`Claims.reap_expired` closes its attempt as ``unknown``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import KW_ONLY, dataclass
from datetime import datetime, timedelta
from typing import Any, Final

import asyncpg

from agi.outbound import policy
from agi.outbound.campaigns import CAMPAIGN_COLUMNS, campaign_from_row
from agi.outbound.gate import CAMPAIGN_BLOCKING, PERMANENT, decide_dial
from agi.outbound.lists import ContactLists
from agi.outbound.model import Campaign, CampaignError, Claim, ContactFacts, DialJob
from agi.outbound.screening import Screening

__all__ = ["Claims", "refill"]


def refill(tokens: float, updated_at: datetime, now: datetime, rate: float) -> float:
    """Token bucket: ``rate`` tokens a second, capacity one second's worth (at least 1)."""
    elapsed = max((now - updated_at).total_seconds(), 0.0)
    return min(max(1.0, rate), tokens + elapsed * rate)


# How long a refused contact waits before the gate is asked again, by reason.
_RETRY_AFTER: Final = {
    policy.OUTSIDE_HOURS: timedelta(minutes=15),
    policy.ERROR: timedelta(minutes=1),
}


@dataclass(frozen=True, slots=True)
class _Leased:
    """The contact a claim took: ``dialling`` and leased to the claiming worker."""

    contact_id: int
    number_e164: str
    attempts: int


@dataclass(frozen=True, slots=True)
class Claims:
    """Dial attempts and the contacts' dialling state, over an asyncpg pool.

    ``screening`` reads the gate's facts and ``lists`` the current suppression snapshots,
    both on the claim's own connection, inside its transaction.
    """

    pool: asyncpg.Pool
    screening: Screening
    lists: ContactLists
    _: KW_ONLY
    timeout: float = 3.0

    # ----------------------------------------------------------------- claim

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
        is a ``dial_attempt`` row.  Each step below may end the claim; their order is the
        order the statements run in.
        """
        async with self.pool.acquire(timeout=self.timeout) as conn, conn.transaction():
            campaign, tokens, now = await self._lock_campaign(conn, campaign_id)
            if campaign.status != "active":
                return Claim(campaign.status)
            if await self._halt_on_unverified_play(conn, campaign_id):
                return Claim("halted")
            held = await self._hold_for_capacity(conn, campaign, tokens)
            if held is not None:
                return held
            contact = await self._lease_due_contact(conn, campaign_id, worker, now, lease)
            if contact is None:
                return await self._idle(conn, campaign_id)
            facts, decision = await self._decide(conn, campaign, contact, now, journal_numbers)
            event_id = facts.latest.event_id if facts.latest else None
            attempt_no = contact.attempts + (1 if decision.allowed else 0)
            attempt_id = await self._insert_attempt(
                conn, campaign, contact, attempt_no, decision, event_id, now, worker
            )
            if decision.allowed:
                job = await self._start_dial(
                    conn, campaign, contact, attempt_id, attempt_no, event_id, tokens, now
                )
                return Claim("dial", job=job, decision=decision)
            return await self._put_back(conn, campaign, contact, facts, decision, now)

    async def _lock_campaign(
        self, conn: Any, campaign_id: int
    ) -> tuple[Campaign, float, datetime]:
        """Lock the campaign row; (the campaign, its pacing tokens refilled, the DB's now).

        The lock serialises every worker's claims on this campaign, so the token bucket and
        the in-flight count below are read and written by one claim at a time.  ``now`` is
        the database's clock: every worker decides on the same time.
        """
        row = await conn.fetchrow(
            f"""SELECT {CAMPAIGN_COLUMNS}, pace_tokens, pace_updated_at,
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
        return campaign_from_row(data), tokens, now

    @staticmethod
    async def _halt_on_unverified_play(conn: Any, campaign_id: int) -> bool:
        """Halt the campaign if any of its plays lacked a consent the database could verify.

        Such a row means the Python gate and the database disagreed: a defect.  Nothing more
        is dialled until an administrator resumes the campaign.
        """
        unverified = await conn.fetchval(
            """SELECT count(*) FROM marketing_play
               WHERE campaign_id = $1 AND NOT consent_verified""",
            campaign_id,
        )
        if not unverified:
            return False
        await conn.execute(
            """UPDATE campaign SET status = 'halted', halted_at = clock_timestamp(),
                   halt_reason = 'unverified consent on marketing_play'
               WHERE id = $1""",
            campaign_id,
        )
        return True

    @staticmethod
    async def _hold_for_capacity(conn: Any, campaign: Campaign, tokens: float) -> Claim | None:
        """``busy`` at the campaign's max concurrent calls, ``wait`` without a pacing token.

        Both are checked before a contact is taken, so a held claim consumes nothing.
        """
        active = await conn.fetchval(
            """SELECT count(*) FROM dial_attempt
               WHERE campaign_id = $1 AND state IN ('originating', 'answered')""",
            campaign.id,
        )
        if active >= campaign.max_concurrent:
            return Claim("busy", in_flight=int(active))
        if tokens < 1.0:
            return Claim("wait", wait_s=(1.0 - tokens) / campaign.pacing_cps)
        return None

    @staticmethod
    async def _lease_due_contact(
        conn: Any, campaign_id: int, worker: str, now: datetime, lease: timedelta
    ) -> _Leased | None:
        """Take the longest-due ready contact and lease it to ``worker`` until ``now + lease``.

        ``SKIP LOCKED`` lets concurrent workers take different contacts; the lease, not a row
        lock, marks it taken while the call lasts (renewed by the dialer, reaped if it runs
        out).
        """
        row = await conn.fetchrow(
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
        if row is None:
            return None
        return _Leased(row["id"], row["number_e164"], int(row["attempts"]))

    @staticmethod
    async def _idle(conn: Any, campaign_id: int) -> Claim:
        """Nothing due: when the next contact is due, and how many are still being dialled.

        The dialer sleeps until then, and knows the campaign is done when neither is left.
        """
        nxt = await conn.fetchrow(
            """SELECT min(next_attempt_at) FILTER (WHERE state = 'ready') AS due,
                      count(*) FILTER (WHERE state = 'dialling') AS dialling
               FROM contact WHERE campaign_id = $1""",
            campaign_id,
        )
        assert nxt is not None
        return Claim("idle", next_due=nxt["due"], in_flight=int(nxt["dialling"]))

    async def _decide(
        self,
        conn: Any,
        campaign: Campaign,
        contact: _Leased,
        now: datetime,
        journal_numbers: Sequence[str],
    ) -> tuple[ContactFacts, policy.Decision]:
        """The gate on facts read in this transaction: what is dialled is what was checked."""
        facts = await self.screening.facts_for_contact(
            conn, campaign, contact.contact_id, now, journal_numbers
        )
        snapshots = await self.lists.snapshots(conn)
        decision = decide_dial(
            campaign, facts, snapshots=snapshots, now=now, journal_numbers=journal_numbers
        )
        return facts, decision

    @staticmethod
    async def _insert_attempt(
        conn: Any,
        campaign: Campaign,
        contact: _Leased,
        attempt_no: int,
        decision: policy.Decision,
        event_id: int | None,
        now: datetime,
        worker: str,
    ) -> int:
        """The ``dial_attempt`` row of this decision, allowed (``originating``) or ``refused``.

        Written before anything is sent: the record of why a number was or was not called
        exists even if the process dies next.
        """
        attempt_id = await conn.fetchval(
            """INSERT INTO dial_attempt (campaign_id, contact_id, number_e164, attempt_no,
                   decided_at, allowed, reason, rule, detail, consent_event_id, worker,
                   state)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
               RETURNING id""",
            campaign.id, contact.contact_id, contact.number_e164, attempt_no, now,
            decision.allowed, decision.reason, decision.rule, decision.detail[:1000],
            event_id, worker, "originating" if decision.allowed else "refused",
        )
        return int(attempt_id)

    @staticmethod
    async def _start_dial(
        conn: Any,
        campaign: Campaign,
        contact: _Leased,
        attempt_id: int,
        attempt_no: int,
        event_id: int | None,
        tokens: float,
        now: datetime,
    ) -> DialJob:
        """Count the attempt and spend a pacing token; the job the dialer originates.

        The ``action_id`` names the attempt on the AMI side (ActionID and ChannelId), so AMI
        events find their attempt again after a reconnect.
        """
        action_id = f"consent-{attempt_id}"
        await conn.execute(
            "UPDATE dial_attempt SET action_id = $2 WHERE id = $1", attempt_id, action_id
        )
        await conn.execute(
            """UPDATE contact SET attempts = attempts + 1, last_attempt_at = $2
               WHERE id = $1""",
            contact.contact_id, now,
        )
        await conn.execute(
            """UPDATE campaign SET pace_tokens = $2, pace_updated_at = $3
               WHERE id = $1""",
            campaign.id, tokens - 1.0, now,
        )
        return DialJob(
            attempt_id=attempt_id,
            action_id=action_id,
            contact_id=contact.contact_id,
            campaign_id=campaign.id,
            number_e164=contact.number_e164,
            attempt_no=attempt_no,
            dial_string=campaign.dial_string(contact.number_e164),
            caller_id=campaign.caller_id,
            organisation=campaign.organisation,
            ring_seconds=max(campaign.ring_seconds, campaign.policy_profile.min_ring_seconds),
            consent_event_id=event_id,
        )

    @staticmethod
    async def _put_back(
        conn: Any,
        campaign: Campaign,
        contact: _Leased,
        facts: ContactFacts,
        decision: policy.Decision,
        now: datetime,
    ) -> Claim:
        """Release a refused contact: untouched, ended, or due again when retrying can help.

        A campaign-level block (stale list, caller ID) is not the contact's fault and leaves it
        as it was; a permanent refusal ends it; any other waits for its rule to allow it
        again (the retry spacing, or a delay by reason).
        """
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
            contact.contact_id, state, due, decision.reason,
        )
        kind = "blocked" if decision.reason in CAMPAIGN_BLOCKING else "refused"
        return Claim(kind, decision=decision)

    # ----------------------------------------------------------------- the attempt's end

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
