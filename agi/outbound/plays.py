"""The marketing route's records: the dial attempt a call names, what played, what was refused.

One aggregate of the outbound store (asyncpg), written from inside a call by
:mod:`agi.calls.marketing` (it implements that module's ``MarketingPlayStore``).  The
``marketing_play`` row naming the consent relied on is written before any campaign audio and
verified by the database itself (``marketing_consent_ok``), independently of the Python gate.
"""

from __future__ import annotations

from dataclasses import KW_ONLY, dataclass
from datetime import datetime

import asyncpg

from agi.outbound import policy
from agi.outbound.model import Campaign, DialledAttempt

__all__ = ["MarketingPlays"]


@dataclass(frozen=True, slots=True)
class MarketingPlays:
    """``marketing_play`` and ``marketing_refused`` rows and the call's ``dial_attempt`` result."""

    pool: asyncpg.Pool
    _: KW_ONLY
    timeout: float = 3.0

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
