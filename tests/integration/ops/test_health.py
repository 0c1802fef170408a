"""``/readyz`` against a real PostgreSQL that stops, a schema that lags, a journal that backs up;
and ``consent-ivr serve`` exposing the listener at ``CONSENT_IVR_METRICS_ADDR``."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
from pathlib import Path

import asyncpg

from agi.ledger.database import connect_pool
from agi.ledger.journal import Journal
from agi.ledger.migrations import apply_migrations, pending_migrations
from agi.ops.config import repo_root
from agi.ops.metrics import Metrics, MetricsServer, Readiness
from agi.ops.pgembed import EmbeddedPostgres
from tests.integration.ops.test_metrics import http_get, scrape, value


async def _ready(port: int) -> tuple[int, dict[str, object]]:
    status, body = await http_get(port, "/readyz")
    return status, json.loads(body)


async def test_readyz_turns_unready_when_the_database_stops(
    own_pg: EmbeddedPostgres, tmp_path: Path
) -> None:
    url = own_pg.url
    conn = await asyncpg.connect(url)
    try:
        await apply_migrations(conn)
    finally:
        await conn.close()
    pool = await connect_pool(url, min_size=1, max_size=2, timeout=2.0)
    metrics = Metrics()
    exporter = MetricsServer(
        metrics, "127.0.0.1", 0,
        Readiness(pool, Journal(tmp_path / "j"), pending_migrations=pending_migrations,
                  timeout=2.0, metrics=metrics),
    )
    await exporter.start()
    try:
        status, body = await _ready(exporter.port)
        assert (status, body["ready"]) == (200, True), body

        await asyncio.to_thread(own_pg.stop)
        status, body = await _ready(exporter.port)
        assert status == 503
        assert body["ready"] is False
        assert str(body["checks"]["database"]).startswith("unreachable")  # type: ignore[index]
        assert (await http_get(exporter.port, "/healthz"))[0] == 200  # the process is still up
        samples = await scrape(exporter.port)
        assert value(samples, "consent_ivr_ready") == 0
        assert value(samples, "consent_ivr_db_up") == 0
        errors = sum(v for (name, labels), v in samples.items()
                     if name == "consent_ivr_db_errors_total"
                     and ("operation", "readiness") in labels)
        assert errors >= 1

        await asyncio.to_thread(own_pg.start)
        status, body = await _ready(exporter.port)
        assert (status, body["ready"]) == (200, True), body
    finally:
        await exporter.close()
        await pool.close()


async def test_readyz_unready_while_migrations_pending(
    pool: asyncpg.Pool, tmp_path: Path
) -> None:
    exporter = MetricsServer(Metrics(), "127.0.0.1", 0,
                             Readiness(pool, pending_migrations=pending_migrations, timeout=2.0))
    await exporter.start()
    try:
        assert (await _ready(exporter.port))[0] == 200
        latest = await pool.fetchval("SELECT max(name) FROM schema_migration")
        await pool.execute("DELETE FROM schema_migration WHERE name = $1", latest)
        status, body = await _ready(exporter.port)
        assert status == 503
        assert "pending" in str(body["checks"]["database"])  # type: ignore[index]
        assert latest in str(body["checks"]["database"])  # type: ignore[index]
    finally:
        await exporter.close()


async def test_readyz_unready_when_the_journal_backs_up(
    pool: asyncpg.Pool, tmp_path: Path
) -> None:
    journal = Journal(tmp_path / "journal")
    metrics = Metrics()
    exporter = MetricsServer(
        metrics, "127.0.0.1", 0,
        Readiness(pool, journal, pending_migrations=pending_migrations, max_journal_depth=3,
                  timeout=2.0, metrics=metrics),
    )
    metrics.watch_journal(journal)
    await exporter.start()
    try:
        for n in range(2):
            journal.append("attempt", {"n": n})
        assert (await _ready(exporter.port))[0] == 200
        assert value(await scrape(exporter.port), "consent_ivr_journal_depth") == 2
        journal.append("attempt", {"n": 2})
        status, body = await _ready(exporter.port)
        assert status == 503
        assert "3 entries" in str(body["checks"]["journal"])  # type: ignore[index]
        assert value(await scrape(exporter.port), "consent_ivr_journal_depth") == 3
    finally:
        await exporter.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_serve_exposes_metrics_and_readiness(db_url: str, tmp_path: Path) -> None:
    agi_port, metrics_port = _free_port(), _free_port()
    env = {
        **os.environ,
        "DATABASE_URL": db_url,
        "CONSENT_IVR_PORT": str(agi_port),
        "CONSENT_IVR_METRICS_ADDR": f"127.0.0.1:{metrics_port}",
        "CONSENT_IVR_JOURNAL_DIR": str(tmp_path / "journal"),
        "CONSENT_IVR_LOG_FORMAT": "json",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agi", "serve", env=env, cwd=repo_root(),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stderr is not None
        while True:  # the banner is printed once both listeners are up
            line = await asyncio.wait_for(proc.stderr.readline(), 60)
            assert line, "serve exited before listening"
            if b"listening on agi://" in line:
                break
        status, body = await _ready(metrics_port)
        assert status == 200, body
        samples = await scrape(metrics_port)
        assert ("consent_ivr_marketing_played_without_consent_total", frozenset()) in samples
        assert value(samples, "consent_ivr_active_calls") == 0
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
