"""Generate a large campaign, ledger and suppression list, then time ``screen`` on it.

    python bench/gen_screen_data.py                      # 495k contacts, 1M events, 2M TPS
    python bench/gen_screen_data.py --contacts 50000 --events 100000 --suppression 200000
    DATABASE_URL=postgresql://… python bench/gen_screen_data.py --keep

Without ``DATABASE_URL`` an embedded PostgreSQL is started in a temporary directory (removed
at the end unless ``--keep``).  Loading goes through COPY; the ledger's hash-chain and
append-only triggers are bypassed for the bulk load (``session_replication_role = replica``),
because this is benchmark data, not evidence.  The suppression list goes through the real
``suppression import`` path (so its timing is the product's), and ``screen`` is timed both as
counts (one GROUP BY query) and with the per-number detail streamed as CSV.

Deterministic (``--seed``), so the lead's benchmark issue can reuse the same data.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import sys
import tempfile
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import asyncpg

from agi.ledger.migrations import apply_migrations
from agi.outbound.model import CampaignSpec
from agi.outbound.policy import time_zones_for
from agi.outbound.stores import OutboundStores

ORG = "Example Energy Ltd"
PURPOSE = "marketing-calls"


def numbers(rng: random.Random, n: int, prefix: str, width: int) -> list[str]:
    picked = rng.sample(range(10**width), n)
    return [f"{prefix}{x:0{width}d}" for x in picked]


async def generate(url: str, args: argparse.Namespace) -> None:
    rng = random.Random(args.seed)
    conn = await asyncpg.connect(url)
    await apply_migrations(conn)
    store_pool = await asyncpg.create_pool(url, min_size=1, max_size=4, command_timeout=None)
    assert store_pool is not None
    stores = OutboundStores.over(store_pool, timeout=600)
    timings: dict[str, float] = {}

    t = time.monotonic()
    name = f"bench-{args.seed}"
    campaign = await stores.campaigns.get_campaign(name)
    if campaign is None:
        campaign = await stores.campaigns.create_campaign(CampaignSpec(
            name=name, organisation=ORG, purpose=PURPOSE, caller_id="+442079460000",
            dial_template="PJSIP/{number}@trunk", max_attempts=3,
            window=(datetime.strptime("09:00", "%H:%M").time(),
                    datetime.strptime("20:00", "%H:%M").time()),
        ))
    mobiles = numbers(rng, args.contacts, "+447", 9)
    zones = list(time_zones_for("+447400123456"))
    await conn.copy_records_to_table(
        "contact",
        records=((campaign.id, n, zones, i + 2) for i, n in enumerate(mobiles)),
        columns=["campaign_id", "number_e164", "time_zones", "source_line"],
    )
    timings["contacts_copy"] = time.monotonic() - t

    # ~60% of events about contact numbers (some with several events), the rest elsewhere
    t = time.monotonic()
    others = numbers(rng, max(args.events // 3, 1), "+447", 9)
    start = datetime(2025, 1, 1, tzinfo=UTC)
    recorded = datetime.now(UTC) - timedelta(days=1)
    zero = bytes(32)  # hash-chain columns: not evidence, not chained

    def events():  # type: ignore[no-untyped-def]
        for i in range(args.events):
            number = rng.choice(mobiles) if rng.random() < 0.6 else rng.choice(others)
            r = rng.random()
            decision = "opt_in" if r < 0.7 else "opt_out"
            channel = "automated_call" if r < 0.95 else "live_call"
            purpose = PURPOSE if rng.random() < 0.9 else "other-offers"
            decided = start + timedelta(seconds=rng.randrange(0, 300 * 86400))
            yield (decided, recorded, number, ORG, purpose, channel, decision, "ivr_inbound",
                   "first_party", "caller_id", "bench", "import", f"bench-{args.seed}-{i}",
                   zero, zero)

    await conn.execute("SET session_replication_role = replica")
    await conn.copy_records_to_table(
        "consent_event",
        records=events(),
        columns=["decided_at", "recorded_at", "number_e164", "organisation", "purpose",
                 "channel", "decision", "method", "captured_by", "evidence_strength",
                 "instance", "source", "idempotency_key", "prev_hash", "hash"],
    )
    await conn.execute("SET session_replication_role = DEFAULT")
    await conn.execute("ANALYZE consent_event; ANALYZE contact")
    timings["events_copy"] = time.monotonic() - t

    # suppression: 2M numbers, ~10% of the contacts among them, national format like TPS
    t = time.monotonic()
    tps_path = Path(tempfile.mkdtemp(prefix="bench-tps-")) / "tps.txt"
    hit = set(rng.sample(mobiles, len(mobiles) // 10))
    with tps_path.open("w") as fh:
        for n in hit:
            fh.write("0" + n[3:] + "\n")
        for n in numbers(rng, args.suppression - len(hit), "+441", 9):
            fh.write("0" + n[3:] + "\n")
    timings["tps_file_write"] = time.monotonic() - t
    t = time.monotonic()
    with tps_path.open() as fh:
        report = await stores.lists.import_suppression("tps", date.today(), fh, region="GB")
    timings["suppression_import"] = time.monotonic() - t
    with tps_path.open() as fh:
        await stores.lists.import_suppression("ctps", date.today(), (next(fh),), region="GB")
    shutil.rmtree(tps_path.parent)
    print(f"loaded: {args.contacts} contacts, {args.events} events, "
          f"{report.numbers} TPS numbers ({len(report.rejected)} rejected)")

    at = datetime.now(UTC).replace(hour=12, minute=0, second=0, microsecond=0)
    for run in range(args.runs):
        t = time.monotonic()
        counts = await stores.screening.screen_counts(campaign, at)
        timings[f"screen_counts_run{run + 1}"] = time.monotonic() - t
    print("screen counts:", dict(sorted(counts.items(), key=lambda kv: -kv[1])))
    t = time.monotonic()
    rows = 0
    with open(os.devnull, "w") as sink:
        async for row in stores.screening.screen_rows(campaign, at):
            sink.write(f"{row.number_e164},{row.reason},{row.consent_event_id or ''}\n")
            rows += 1
    timings["screen_rows_csv"] = time.monotonic() - t
    assert rows == args.contacts
    for key, value in timings.items():
        print(f"{key:<24} {value:8.2f} s")
    await store_pool.close()
    await conn.close()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--contacts", type=int, default=495_000)
    p.add_argument("--events", type=int, default=1_000_000)
    p.add_argument("--suppression", type=int, default=2_000_000)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--seed", type=int, default=3)
    p.add_argument("--keep", action="store_true", help="keep the embedded database")
    args = p.parse_args()
    url = os.environ.get("DATABASE_URL")
    pg = tmp = None
    if not url:
        from agi.ops.pgembed import EmbeddedPostgres

        tmp = Path(tempfile.mkdtemp(prefix="bench-screen-"))
        pg = EmbeddedPostgres(tmp / "pg")
        url = pg.start()
        print(f"embedded PostgreSQL: {url}")
    try:
        asyncio.run(generate(url, args))
    finally:
        if pg is not None and not args.keep:
            pg.destroy()
            shutil.rmtree(tmp or "", ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
