"""Route ``marketing``: the consent-gated outbound playback (see :mod:`agi.calls.marketing`)."""

from __future__ import annotations

import asyncio

from agi.calls.marketing import MarketingFlow
from agi.cli.table import RouteDeps
from agi.ops.config import Settings
from agi.outbound.gate import journal_opt_outs
from agi.outbound.stores import OutboundStores

__all__ = ["marketing_route"]


def marketing_route(settings: Settings, deps: RouteDeps) -> MarketingFlow:
    """Wire the flow to the outbound stores it reads and writes, and this process's journal."""

    async def opt_outs(organisation: str) -> frozenset[str]:
        return await asyncio.to_thread(journal_opt_outs, settings.journal_dir, organisation)

    stores = OutboundStores.over(deps.pool, timeout=settings.db_timeout)
    return MarketingFlow(
        settings,
        stores.campaigns,
        stores.screening,
        stores.plays,
        deps.store,
        deps.prompts,
        journal_opt_outs=opt_outs,
        metrics=deps.metrics,
    )
