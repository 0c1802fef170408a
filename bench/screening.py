"""Part 4: ``consent-ivr screen`` over 495,000 numbers vs the naive per-number gate.

Data: ``bench/gen_screen_data.py`` (the dialer engineer's generator, deterministic, seed
3): 495,000 campaign contacts, 1,000,000 consent events, 2,000,000 TPS numbers. It is
built once per day in a database named ``bench_screen_<date>`` and reused (the TPS
snapshot is dated today; the gate refuses stale lists), so only the first run of the day
pays for the load (about a minute here).

Timed: the real command, ``consent-ivr screen CAMPAIGN --at T`` in its own process
(interpreter start, pool, migration check and the one set-based query included), best
of ``runs``; and the naive way, one gate query per number (``facts_for_contact`` —
the dialer's per-claim query — then ``decide_dial``) over a sample of contacts,
extrapolated to the whole list (the sample and the extrapolation are reported).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from datetime import UTC, date, datetime
from types import SimpleNamespace
from typing import Any

from bench import procs

FULL = {"contacts": 495_000, "events": 1_000_000, "suppression": 2_000_000}
QUICK = {"contacts": 20_000, "events": 40_000, "suppression": 80_000}
SEED = 3


async def _exists(root_url: str, name: str) -> bool:
    import asyncpg

    conn = await asyncpg.connect(root_url)
    try:
        return bool(await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name))
    finally:
        await conn.close()


async def _ready(url: str, sizes: dict[str, int]) -> bool:
    import asyncpg

    try:
        conn = await asyncpg.connect(url)
    except Exception:
        return False
    try:
        n = await conn.fetchval("SELECT count(*) FROM contact")
        s = await conn.fetchval("SELECT count(*) FROM suppression_entry")
        return bool(n == sizes["contacts"] and s >= sizes["suppression"] * 0.99)
    except Exception:
        return False
    finally:
        await conn.close()


async def _prepare(ctx: dict[str, Any], sizes: dict[str, int]) -> tuple[str, float | None]:
    """The screening database (built if missing); returns its URL and the load seconds."""
    import asyncpg

    db = ctx["db"]
    tag = "q" if ctx["quick"] else "f"
    name = f"bench_screen_{tag}_{date.today():%Y%m%d}"
    url = procs.with_db(db.root_url, name)
    if await _exists(db.root_url, name) and await _ready(url, sizes):
        return url, None
    conn = await asyncpg.connect(db.root_url)
    try:
        for row in await conn.fetch(
                "SELECT datname FROM pg_database WHERE datname LIKE $1", f"bench_screen_{tag}_%"):
            await conn.execute(f'DROP DATABASE IF EXISTS "{row["datname"]}" WITH (FORCE)')
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    sys.path.insert(0, str(procs.ROOT / "bench"))
    import gen_screen_data  # type: ignore[import-not-found]

    args = SimpleNamespace(seed=SEED, runs=1, keep=True, **sizes)
    t = time.monotonic()
    with contextlib.redirect_stdout(sys.stderr):  # its progress is not the result table
        await gen_screen_data.generate(url, args)
    return url, time.monotonic() - t


async def _naive(url: str, sample: int, at: datetime) -> dict[str, Any]:
    """One gate query per number, as a dialer checking each contact would do it."""
    from agi.ledger.database import connect_pool
    from agi.outbound.gate import decide_dial
    from agi.outbound.stores import OutboundStores

    pool = await connect_pool(url, min_size=1, max_size=2, timeout=60)
    try:
        stores = OutboundStores.over(pool, timeout=60)
        campaign = await stores.campaigns.require_campaign(f"bench-{SEED}")
        snaps = await stores.lists.snapshots()
        ids = [r["id"] for r in await pool.fetch(
            "SELECT id FROM contact WHERE campaign_id = $1 ORDER BY id LIMIT $2",
            campaign.id, sample)]
        total = await pool.fetchval("SELECT count(*) FROM contact WHERE campaign_id = $1",
                                    campaign.id)
        allowed = 0
        async with pool.acquire() as conn:
            t = time.perf_counter()
            for cid in ids:
                facts = await stores.screening.facts_for_contact(conn, campaign, cid, at)
                if decide_dial(campaign, facts, snapshots=snaps, now=at).allowed:
                    allowed += 1
            seconds = time.perf_counter() - t
    finally:
        await pool.close()
    rate = len(ids) / seconds
    return {"sample": len(ids), "sample_seconds": round(seconds, 2),
            "numbers_per_s": round(rate, 1), "extrapolated_seconds": round(total / rate, 1),
            "allowed_in_sample": allowed, "list": int(total)}


def run(ctx: dict[str, Any]) -> dict[str, Any]:
    sizes = QUICK if ctx["quick"] else FULL
    url, load_s = procs.run(_prepare(ctx, sizes))
    at = datetime.now(UTC).replace(hour=12, minute=0, second=0, microsecond=0)
    env = {**os.environ, "DATABASE_URL": url, "CONSENT_IVR_LOG_LEVEL": "warning",
           "CONSENT_IVR_JOURNAL_DIR": str(ctx["workdir"] / "screen-journal"),
           "CONSENT_IVR_DATA_DIR": str(ctx["workdir"] / "var")}
    cmd = [sys.executable, "-m", "agi", "screen", f"bench-{SEED}", "--at", at.isoformat()]
    # first with the shipped settings (CONSENT_IVR_DB_TIMEOUT defaults to 3 s)
    t = time.monotonic()
    proc = subprocess.run(cmd, cwd=procs.ROOT, env=env, capture_output=True, text=True,
                          timeout=600, check=False)
    default_run = {"seconds": round(time.monotonic() - t, 2), "exit": proc.returncode,
                   "error": (proc.stderr.strip().splitlines() or [""])[-1][-300:]
                   if proc.returncode else None}
    env["CONSENT_IVR_DB_TIMEOUT"] = "600"
    times = []
    out = ""
    for _ in range(1 if ctx["quick"] else 3):
        t = time.monotonic()
        proc = subprocess.run(cmd, cwd=procs.ROOT, env=env, capture_output=True, text=True,
                              timeout=600, check=False)
        times.append(time.monotonic() - t)
        if proc.returncode != 0:
            raise RuntimeError(f"consent-ivr screen failed: {proc.stderr[-600:]}")
        out = proc.stdout
    best = min(times)
    naive = procs.run(_naive(url, 500 if ctx["quick"] else 5000, at))
    result = {
        "method": "consent-ivr screen (set-based SQL, its own process)",
        "numbers": sizes["contacts"], "ledger_events": sizes["events"],
        "suppression_numbers": sizes["suppression"],
        "seconds": round(best, 2), "all_runs_s": [round(x, 2) for x in times],
        "numbers_per_s": round(sizes["contacts"] / best, 1),
        "output": out.strip().splitlines()[-12:],
        "data_load_seconds": None if load_s is None else round(load_s, 1),
        "naive": naive,
        "speedup": round(naive["extrapolated_seconds"] / best, 1),
        "note": ("best of 3" if not ctx["quick"] else "quick: small data")
        + ("" if default_run["exit"] == 0 else
           "; with the default 3 s CONSENT_IVR_DB_TIMEOUT it failed: "
           f"{default_run['error']} (timed with CONSENT_IVR_DB_TIMEOUT=600)"),
        "default_settings_run": default_run,
    }
    print(f"  .. screen {sizes['contacts']:,}: {best:.2f} s; naive {naive['numbers_per_s']}/s "
          f"→ {naive['extrapolated_seconds']} s extrapolated", file=sys.stderr, flush=True)
    return result


