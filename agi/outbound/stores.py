"""The outbound store's aggregates, built once over one pool and wired to each other.

Callers that need several (the CLI, the tests, the benchmarks) build an
:class:`OutboundStores` and hand each consumer only the aggregates it uses: the dialer takes
``campaigns`` and ``claims``, the marketing route ``campaigns``, ``screening`` and ``plays``.
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from agi.outbound.campaigns import Campaigns
from agi.outbound.claims import Claims
from agi.outbound.lists import ContactLists
from agi.outbound.plays import MarketingPlays
from agi.outbound.screening import Screening

__all__ = ["OutboundStores"]


@dataclass(frozen=True, slots=True)
class OutboundStores:
    """One of each aggregate, sharing a pool (and ``lists``/``screening`` where they read)."""

    campaigns: Campaigns
    lists: ContactLists
    screening: Screening
    claims: Claims
    plays: MarketingPlays

    @classmethod
    def over(
        cls, pool: asyncpg.Pool, *, timeout: float = 3.0, screen_timeout: float = 900.0
    ) -> OutboundStores:
        """Every aggregate on ``pool``.

        ``timeout`` is each statement's budget; ``screen_timeout`` that of the dry run over a
        whole list, one long query.
        """
        lists = ContactLists(pool, timeout=timeout)
        screening = Screening(pool, lists, timeout=timeout, screen_timeout=screen_timeout)
        return cls(
            campaigns=Campaigns(pool, timeout=timeout),
            lists=lists,
            screening=screening,
            claims=Claims(pool, screening, lists, timeout=timeout),
            plays=MarketingPlays(pool, timeout=timeout),
        )
