"""Part 5: dialer pacing on a fake AMI, and gate decisions per second.

The real dialer (``agi.outbound.dialer.Dialer`` with its ``AmiClient`` over panoramisk) dials a
campaign of opted-in numbers against ``tests/fake_ami.FakeAMI`` — real AMI over TCP,
every call answered and hung up at once — in one process with the fake AMI (the
dialer is the thing measured; the fake only stamps each Originate as it arrives).

Achieved rate: Originates received per second between the first and the last (the
token bucket starts with one second's worth, so the first second's burst is excluded:
the window starts once the bucket is empty), against the campaign's ``pacing_cps``.

Gate decisions per second: a campaign whose contacts hold no consent — every claim is
a gate decision (``no_consent``) and a ``dial_attempt`` row, nothing is dialled — run
to completion by the same dialer loop.
"""

from __future__ import annotations

import asyncio
import sys
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from bench import procs

ORG = "Example Energy Ltd"
PURPOSE = "marketing-calls"


async def _setup(url: str, name: str, cps: float, n: int, consented: bool,
                 tag: int) -> Any:
    from agi.ledger.database import connect_pool
    from agi.outbound.model import CampaignSpec
    from agi.outbound.stores import OutboundStores

    pool = await connect_pool(url, min_size=1, max_size=10, timeout=30)
    stores = OutboundStores.over(pool, timeout=30)
    campaign = await stores.campaigns.create_campaign(CampaignSpec(
        name=name, organisation=ORG, purpose=PURPOSE, caller_id="+442079460000",
        dial_template="PJSIP/{number}@trunk", profile="uk-pecr", pacing_cps=cps,
        max_concurrent=10_000, max_attempts=1, retry_spacing=timedelta(0), ring_seconds=25))
    day = datetime.now(UTC).date()
    for lst in ("tps", "ctps"):
        await stores.lists.import_suppression(lst, day, ["+441632960999"])
    numbers = [f"+4474{tag:02d}{i:06d}" for i in range(n)]
    await stores.lists.import_contacts(campaign, "\n".join(numbers) + "\n")
    if consented:
        earlier = datetime.now(UTC) - timedelta(days=1)
        # bulk, like gen_screen_data: benchmark data, not evidence (chain trigger bypassed)
        async with pool.acquire() as conn:
            await conn.execute("SET session_replication_role = replica")
            await conn.copy_records_to_table(
                "consent_event",
                records=((earlier, earlier, num, ORG, PURPOSE, "automated_call", "opt_in",
                          "ivr_inbound", "first_party", "caller_id", "bench", "import",
                          f"pacing-{tag}-{num}", bytes(32), bytes(32)) for num in numbers),
                columns=["decided_at", "recorded_at", "number_e164", "organisation",
                         "purpose", "channel", "decision", "method", "captured_by",
                         "evidence_strength", "instance", "source", "idempotency_key",
                         "prev_hash", "hash"])
            await conn.execute("SET session_replication_role = DEFAULT")
    return pool, stores, campaign


async def _dial(url: str, workdir: Any, cps: float, n: int, consented: bool,
                tag: int) -> dict[str, Any]:
    from agi.outbound.ami import AmiClient
    from agi.outbound.dialer import Dialer, DialerConfig
    from agi.testing.fake_ami import FakeAMI

    pool, stores, campaign = await _setup(url, f"pacing-{tag}", cps, n, consented, tag)
    fake = await FakeAMI().start()
    stamps: list[float] = []
    seen = 0

    async def watch() -> None:
        nonlocal seen
        while True:
            k = len(fake.originates)
            if k > seen:
                t = time.perf_counter()
                stamps.extend([t] * (k - seen))
                seen = k
            await asyncio.sleep(0.001)

    watcher = asyncio.create_task(watch())
    client = AmiClient("127.0.0.1", fake.port, fake.username, fake.secret, reconnect_timeout=1)
    await client.connect(within=10)
    dialer = Dialer(stores.campaigns, stores.claims, client,
                    DialerConfig(worker=f"bench-{tag}", journal_dir=workdir / "dial-journal",
                                 poll_s=0.05))
    t0 = time.perf_counter()
    why = await dialer.run_campaign(campaign.id)
    elapsed = time.perf_counter() - t0
    watcher.cancel()
    await client.close()
    await fake.close()
    decisions = await pool.fetchval(
        "SELECT count(*) FROM dial_attempt WHERE campaign_id = $1", campaign.id)
    await pool.close()
    out: dict[str, Any] = {"configured_cps": cps, "contacts": n, "why": why,
                           "seconds": round(elapsed, 2), "originates": len(stamps),
                           "decisions": int(decisions),
                           "decisions_per_s": round(decisions / elapsed, 1)}
    burst = int(max(1.0, cps))  # the bucket's initial second's worth
    steady = stamps[burst:]
    if len(steady) >= 2:
        achieved = (len(steady) - 1) / (steady[-1] - steady[0])
        out["achieved_cps"] = round(achieved, 2)
        out["error_pct"] = round(100 * (achieved - cps) / cps, 2)
    return out


def run(ctx: dict[str, Any]) -> dict[str, Any]:
    db = ctx["db"]
    url = procs.run(db.create("bench_dial"))
    rates = [(20.0, 200)] if ctx["quick"] else [(10.0, 160), (50.0, 750), (100.0, 1500)]
    out: dict[str, Any] = {"runs": []}
    try:
        for k, (cps, n) in enumerate(rates):
            r = procs.run(_dial(url, ctx["workdir"], cps, n, True, k + 1))
            out["runs"].append(r)
            print(f"  .. pacing {cps}/s: achieved {r.get('achieved_cps')} "
                  f"({r.get('error_pct')} %)", file=sys.stderr, flush=True)
        g = procs.run(_dial(url, ctx["workdir"], 1000.0, 500 if ctx["quick"] else 3000,
                            False, 90))
        out["gate_run"] = g
        out["gate_decisions_per_s"] = g["decisions_per_s"]
        out["gate_note"] = (f"{g['decisions']} unconsented contacts refused by the dialer "
                            f"loop (claim + gate + dial_attempt row each) in {g['seconds']} s")
        print(f"  .. gate decisions: {g['decisions_per_s']}/s", file=sys.stderr, flush=True)
    finally:
        procs.run(db.drop(url))
    return out
