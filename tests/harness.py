"""Run the real FastAGI server: in-process, wired like ``consent-ivr serve``, or as a real
``consent-ivr serve`` subprocess (:class:`Serve`)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import asyncpg

from agi.calls.consent import ConsentFlow
from agi.calls.prompts import PromptCatalogue
from agi.ledger.decisions import LedgerDecisionStore
from agi.ledger.journal import Journal
from agi.ledger.ledger import Ledger
from agi.ops.config import Settings, repo_root
from agi.server.call import RouteHandler
from agi.server.fastagi import AGIServer


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
) -> tuple[ConsentFlow, LedgerDecisionStore, PromptCatalogue]:
    """The consent flow over the real ledger (and journal), as ``serve`` builds it."""
    prompts = PromptCatalogue.load(settings.sounds_dir, prefix=settings.prompt_prefix)
    ledger = Ledger(pool, timeout=settings.db_timeout)
    real_store = LedgerDecisionStore(ledger, Journal(settings.journal_dir) if journal else None)
    flow = ConsentFlow(settings, store or real_store, prompts)
    return flow, real_store, prompts


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Serve:
    """One ``consent-ivr serve`` subprocess (logs to a file: no pipe to fill)."""

    def __init__(self, db_url: str, tmp: Path, port: int, **env: str) -> None:
        self.port = port
        self.log = tmp / f"serve-{port}-{len(list(tmp.glob('serve-*')))}.log"
        full = {
            **os.environ,
            "DATABASE_URL": db_url,
            "CONSENT_IVR_PORT": str(port),
            "CONSENT_IVR_METRICS_ADDR": "",
            "CONSENT_IVR_JOURNAL_DIR": str(tmp / "journal"),
            "CONSENT_IVR_DATA_DIR": str(tmp / "var"),
            "CONSENT_IVR_INSTANCE": "process-test",
            "CONSENT_IVR_LOG_FORMAT": "json",
            "CONSENT_IVR_DB_TIMEOUT": "2",
            **env,
        }
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "agi", "serve"], env=full, cwd=repo_root(),
                stdout=out, stderr=subprocess.STDOUT,
            )

    async def ready(self, timeout: float = 30.0) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while b"consent-ivr listening" not in self.log.read_bytes():
            assert self.proc.poll() is None, self.log.read_text()
            assert loop.time() < deadline, self.log.read_text()
            await asyncio.sleep(0.05)

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    async def wait(self, timeout: float = 20.0) -> int:
        return await asyncio.to_thread(self.proc.wait, timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
