"""Run the real FastAGI server in-process, wired like ``consent-ivr serve``."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping
from typing import Any

import asyncpg

from agi.call import RouteHandler
from agi.config import Settings
from agi.flows.consent import ConsentFlow
from agi.journal import Journal
from agi.ledger import Ledger
from agi.prompts import PromptCatalogue
from agi.server import AGIServer
from agi.store import LedgerStore


@contextlib.asynccontextmanager
async def running_server(
    settings: Settings,
    routes: Mapping[str, RouteHandler],
    **kwargs: Any,
) -> AsyncIterator[AGIServer]:
    server = AGIServer(settings, routes, **kwargs)
    await server.start()
    try:
        yield server
    finally:
        await server.drain(timeout=2.0)


def consent_stack(
    settings: Settings, pool: asyncpg.Pool, *, journal: bool = True, store: Any = None
) -> tuple[ConsentFlow, LedgerStore, PromptCatalogue]:
    """The consent flow over the real ledger (and journal), as ``serve`` builds it."""
    prompts = PromptCatalogue.load(settings.sounds_dir, prefix=settings.prompt_prefix)
    ledger = Ledger(pool, timeout=settings.db_timeout)
    real_store = LedgerStore(ledger, Journal(settings.journal_dir) if journal else None)
    flow = ConsentFlow(settings, store or real_store, prompts)
    return flow, real_store, prompts
