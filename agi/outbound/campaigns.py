"""The campaign rows: define, look up, pause/resume/halt, and count what each campaign did.

One aggregate of the outbound store (asyncpg, domain types in and out); its siblings are
:mod:`agi.outbound.lists` (contacts, suppression), :mod:`agi.outbound.screening` (the gate's
facts and the dry run), :mod:`agi.outbound.claims` (dial jobs) and :mod:`agi.outbound.plays`
(the marketing route's records).  The campaign row's columns and its mapping to
:class:`~agi.outbound.model.Campaign` are defined here once; :mod:`agi.outbound.claims` reads
the same row under lock when it claims a contact.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import KW_ONLY, dataclass
from typing import Any

import asyncpg

from agi.outbound import policy
from agi.outbound.model import Campaign, CampaignError, CampaignSpec

__all__ = ["CAMPAIGN_COLUMNS", "Campaigns", "campaign_from_row"]

#: every column of ``campaign`` that :func:`campaign_from_row` maps
CAMPAIGN_COLUMNS = """id, name, organisation, purpose, profile, audio_prompt, window_start,
    window_end, caller_id, dial_template, default_region, pacing_cps, max_concurrent,
    max_attempts, retry_spacing, ring_seconds, opt_out_key, status, halted_at, halt_reason,
    created_at, reconfirm"""


_INSERT_CAMPAIGN = f"""
    INSERT INTO campaign (name, organisation, purpose, profile, audio_prompt, window_start,
        window_end, caller_id, dial_template, default_region, pacing_cps, max_concurrent,
        max_attempts, retry_spacing, ring_seconds, opt_out_key, reconfirm)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)
    RETURNING {CAMPAIGN_COLUMNS}"""  # noqa: S608


def campaign_from_row(row: Mapping[str, Any]) -> Campaign:
    """A :data:`CAMPAIGN_COLUMNS` row as a :class:`Campaign` (the window is two columns)."""
    data = dict(row)
    start, end = data.pop("window_start"), data.pop("window_end")
    return Campaign(window=None if start is None else (start, end), **data)


@dataclass(frozen=True, slots=True)
class Campaigns:
    """The ``campaign`` rows and their counters, over an asyncpg pool."""

    pool: asyncpg.Pool
    _: KW_ONLY
    timeout: float = 3.0

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
        return campaign_from_row(row)

    async def get_campaign(self, key: str | int) -> Campaign | None:
        """By id (int or digits) or by name."""
        if isinstance(key, int) or (isinstance(key, str) and key.isdigit()):
            row = await self.pool.fetchrow(
                f"SELECT {CAMPAIGN_COLUMNS} FROM campaign WHERE id = $1", int(key),  # noqa: S608
                timeout=self.timeout,
            )
        else:
            row = await self.pool.fetchrow(
                f"SELECT {CAMPAIGN_COLUMNS} FROM campaign WHERE name = $1", key,  # noqa: S608
                timeout=self.timeout,
            )
        return campaign_from_row(row) if row else None

    async def require_campaign(self, key: str | int) -> Campaign:
        found = await self.get_campaign(key)
        if found is None:
            raise CampaignError(f"no campaign {key!r}")
        return found

    async def list_campaigns(self) -> list[Campaign]:
        rows = await self.pool.fetch(
            f"SELECT {CAMPAIGN_COLUMNS} FROM campaign ORDER BY id"  # noqa: S608
        )
        return [campaign_from_row(r) for r in rows]

    async def active_campaigns(self) -> list[Campaign]:
        rows = await self.pool.fetch(
            f"SELECT {CAMPAIGN_COLUMNS} FROM campaign WHERE status = 'active' ORDER BY id"  # noqa: S608
        )
        return [campaign_from_row(r) for r in rows]

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
