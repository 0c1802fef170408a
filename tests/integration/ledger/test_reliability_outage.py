"""PostgreSQL stopped in the middle of a burst of calls, then started again.

Real TCP (the strict fake Asterisk), a real PostgreSQL of this test's own that is
really stopped (``pg_ctl stop -m fast``: in-flight queries get ``57P01``, new
connections are refused) and started again. Proven:

* every decision a caller made is in the ledger exactly once after the replay;
* a caller heard "recorded" only for a decision that was durable (ledger or journal);
* replaying again (the CLI, after the server's replay) adds nothing;
* no marketing audio was played while the ledger could not be read.

The figures are printed (``pytest -s``) and kept in ``FIGURES`` for the report.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import structlog

from agi.calls.consent import ConsentFlow
from agi.calls.prompts import PromptCatalogue
from agi.cli.main import main
from agi.cli.marketing import marketing_route
from agi.cli.table import RouteDeps
from agi.ledger.chain import verify_chain
from agi.ledger.database import connect_pool
from agi.ledger.decisions import LedgerDecisionStore, replay_journal
from agi.ledger.journal import Journal
from agi.ledger.ledger import Ledger
from agi.ledger.migrations import apply_migrations
from agi.ledger.records import LedgerUnavailable
from agi.ledger.sessions import CallSessions
from agi.ops.config import Settings
from agi.ops.pgembed import EmbeddedPostgres
from agi.outbound.stores import OutboundStores
from agi.server.fastagi import AGIServer
from tests.campaign_helpers import consent, fresh_lists, make_campaign
from tests.fakes import OPT_IN, SILENCE, CallRecord, FakeAsterisk

FIGURES: dict[str, int] = {}

SCRIPTS: list[tuple[str, list[Any]]] = [
    ("opt_in", [SILENCE, *OPT_IN]),
    ("opt_out", [SILENCE, "2"]),
    ("opt_out", ["2"]),  # during the identification
    ("none", [SILENCE, "7", SILENCE, SILENCE]),  # invalid key then silence: no decision
]
CONFIRMATIONS = {"consent-ivr/opted-in", "consent-ivr/opted-out"}
MARKETED = ["+447400123401", "+447400123402"]


@pytest.fixture
async def outage_db(own_pg: EmbeddedPostgres) -> AsyncIterator[str]:
    conn = await asyncpg.connect(own_pg.url)
    try:
        await apply_migrations(conn)
    finally:
        await conn.close()
    yield own_pg.url


async def wait_for(predicate: Callable[[], Any], timeout: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await predicate():
        assert loop.time() < deadline, "condition not reached"
        await asyncio.sleep(0.05)


@pytest.fixture
def private_dir() -> Iterator[Path]:
    """The journal outside pytest's shared basetemp, which a concurrent pytest run of the
    same user may prune mid-test."""
    path = Path(tempfile.mkdtemp(prefix="consent-ivr-journal-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


async def test_database_stopped_during_a_burst_loses_no_decision(
    own_pg: EmbeddedPostgres, outage_db: str, make_settings: Callable[..., Settings],
    private_dir: Path,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    settings = make_settings(db_timeout=1.0, instance="outage-test", journal_dir=private_dir)
    pool = await connect_pool(outage_db, min_size=1, max_size=10, timeout=1.0)
    ledger = Ledger(pool, timeout=1.0)
    journal = Journal(settings.journal_dir)
    store = LedgerDecisionStore(ledger, journal)
    prompts = PromptCatalogue.load(settings.sounds_dir, prefix=settings.prompt_prefix)
    sessions = CallSessions(pool, instance=settings.instance, timeout=1.0)
    routes = {"consent": ConsentFlow(settings, store, prompts),
              "marketing": marketing_route(settings, RouteDeps(pool, store, prompts))}
    server = AGIServer(settings, routes, sessions=sessions)
    await server.start()

    # a campaign whose two numbers opted in, both already claimed by the dialer
    stores = OutboundStores.over(pool, timeout=5.0)
    campaign = await make_campaign(stores.campaigns)
    await fresh_lists(stores.lists)
    await stores.lists.import_contacts(campaign, "07400123401\n07400123402\n")
    for number in MARKETED:
        await consent(ledger, number)
    attempts = []
    for _ in MARKETED:
        claim = await stores.claims.claim_next(campaign.id, "w1", timedelta(minutes=5))
        assert claim.job is not None
        attempts.append(claim.job.attempt_id)
    baseline_events = await pool.fetchval("SELECT count(*) FROM consent_event")

    async def consent_call(i: int) -> tuple[str, str, CallRecord]:
        kind, presses = SCRIPTS[i % len(SCRIPTS)]
        uniqueid = f"1800000000.{i}"
        rec = await FakeAsterisk(
            "127.0.0.1", server.port, uniqueid=uniqueid, channel=f"PJSIP/in-{i:08d}",
            callerid=f"+447400{200000 + i}", presses=presses,
        ).run()
        return kind, uniqueid, rec

    async def marketing_call(attempt: int, i: int) -> CallRecord:
        fake = FakeAsterisk(
            "127.0.0.1", server.port, network_script=f"marketing?campaign={campaign.id}"
            f"&attempt={attempt}", answered=True, callerid="+442079460000",
            uniqueid=f"1800000001.{i}", channel=f"PJSIP/trunk-{i:08d}", presses=[SILENCE] * 3)
        return await fake.run()

    total = 40
    stopped = asyncio.Event()

    async def stop_database() -> None:
        await asyncio.to_thread(own_pg.stop, "fast")
        stopped.set()

    calls: list[asyncio.Task[tuple[str, str, CallRecord]]] = []
    stopper: asyncio.Task[None] | None = None
    for i in range(total):
        calls.append(asyncio.create_task(consent_call(i)))
        if i == 8:
            stopper = asyncio.create_task(stop_database())  # while calls are in flight
        await asyncio.sleep(0.03)
    assert stopper is not None
    await stopper
    # the rest of the burst, entirely inside the outage, plus the dialer's two calls
    for i in range(total, total + 12):
        calls.append(asyncio.create_task(consent_call(i)))
    marketing = await asyncio.gather(*(marketing_call(a, i) for i, a in enumerate(attempts)))
    results = await asyncio.gather(*calls)
    during_outage = total + 12 - 9  # calls started after the stop began, at least

    # ---- what the callers heard, decided while the database was (going) down
    confirmed = {}
    for kind, uniqueid, rec in results:
        heard = set(rec.prompt_names()) & CONFIRMATIONS
        result = rec.variables.get("CONSENT_RESULT")
        assert not rec.errors, rec.errors
        if kind == "none":
            assert result == "no_decision" and not heard, rec.dialogue()
        else:
            # journaled decisions are durable, so the caller is told; never "error" here
            assert result == ("opted_in" if kind == "opt_in" else "opted_out"), rec.dialogue()
            assert heard == {f"consent-ivr/{result.replace('_', '-')}"}
            confirmed[f"{uniqueid}|PJSIP/in-{uniqueid.split('.')[1].zfill(8)}|decision"] = kind
    journaled = {e.data["idempotency_key"] for e in journal.entries("decision")}
    journaled_attempts = sum(1 for _ in journal.entries("attempt"))
    assert journaled and journaled <= set(confirmed)
    for rec in marketing:
        played = [p.name for p in rec.prompts]
        assert not any("campaign" in n or "marketing" in n for n in played), played
        assert rec.variables.get("CONSENT_RESULT") in {"refused", "error"}

    # ---- the database comes back; the server's replayer catches up
    await asyncio.to_thread(own_pg.start)
    counts: dict[str, int] = {}

    async def replayed() -> bool:
        try:
            counts.update(await replay_journal(ledger, journal))
        except LedgerUnavailable:
            return False
        return True

    await wait_for(replayed)
    assert journal.depth() == 0
    await sessions.flush()

    rows = await pool.fetch(
        "SELECT idempotency_key, source, count(*) OVER (PARTITION BY uniqueid) AS n "
        "FROM consent_event WHERE uniqueid LIKE '1800000000.%'")
    stored = {r["idempotency_key"]: r["source"] for r in rows}
    assert all(r["n"] == 1 for r in rows)  # one event per call, never two
    missing = set(confirmed) - set(stored)
    assert not missing, (missing, counts, sorted(journaled),
                         (settings.journal_dir / "rejected.jsonl").exists())
    assert set(stored) == set(confirmed)  # every decision a caller heard confirmed, no other
    # A write cut by the shutdown ("connection closed in the middle of operation") may have
    # committed after all: the decision was journaled too, and the replay found it already
    # stored (a duplicate, not a second row). Every other journaled decision came from the
    # journal, and nothing came from the journal that was not journaled.
    from_journal = {k for k, s in stored.items() if s == "journal"}
    committed_before_cut = journaled - from_journal
    assert from_journal <= journaled
    assert all(stored[k] == "live" for k in committed_before_cut)
    assert len(committed_before_cut) <= counts["duplicates"]
    assert len(committed_before_cut) <= 3  # only writes in flight at the moment of the stop
    assert await pool.fetchval("SELECT count(*) FROM consent_event") == (
        baseline_events + len(confirmed))
    assert counts["replayed"] + counts["duplicates"] == len(journaled) + journaled_attempts
    assert counts["rejected"] == 0
    no_decision_calls = [u for k, u, _ in results if k == "none"]
    assert await pool.fetchval(
        "SELECT count(*) FROM consent_event WHERE uniqueid = ANY($1)", no_decision_calls) == 0
    assert await pool.fetchval(
        "SELECT count(*) FROM consent_attempt WHERE uniqueid = ANY($1)", no_decision_calls
    ) == len(no_decision_calls)
    assert await pool.fetchval("SELECT count(*) FROM marketing_play") == 0
    assert (await verify_chain(pool)).ok

    # ---- `consent-ivr journal replay` afterwards: nothing new, nothing doubled
    monkeypatch.setenv("DATABASE_URL", outage_db)
    monkeypatch.setenv("CONSENT_IVR_JOURNAL_DIR", str(settings.journal_dir))
    assert await asyncio.to_thread(main, ["journal", "replay"]) == 0
    assert "replayed 0 new" in capsys.readouterr().out
    assert await pool.fetchval("SELECT count(*) FROM consent_event") == (
        baseline_events + len(confirmed))

    await server.drain(timeout=2)
    await pool.close()
    FIGURES.update(
        calls=len(results) + len(marketing), calls_during_outage=during_outage,
        decisions=len(confirmed), decisions_journaled=len(journaled),
        decisions_live=len(confirmed) - len(journaled), attempts_journaled=journaled_attempts,
        replayed_new=counts["replayed"], replay_duplicates_skipped=counts["duplicates"],
        duplicated_rows=0, marketing_calls_during_outage=len(marketing), marketing_played=0,
    )
    with capsys.disabled():
        print("\nFAULT RUN (database stopped mid-burst): " + json.dumps(FIGURES))
    Path(settings.journal_dir / "figures.json").write_text(json.dumps(FIGURES))


async def test_database_down_and_journal_disk_full_never_confirms(
    own_pg: EmbeddedPostgres, outage_db: str, make_settings: Callable[..., Settings],
) -> None:
    """The control: when nothing can hold the decision, the caller hears the error prompt."""
    settings = make_settings(db_timeout=1.0)
    pool = await connect_pool(outage_db, min_size=1, max_size=4, timeout=1.0)
    journal = Journal(settings.journal_dir)
    journal._ensure()
    journal.active.symlink_to("/dev/full")  # ENOSPC on every append
    store = LedgerDecisionStore(Ledger(pool, timeout=1.0), journal)
    prompts = PromptCatalogue.load(settings.sounds_dir, prefix=settings.prompt_prefix)
    server = AGIServer(settings, {"consent": ConsentFlow(settings, store, prompts)})
    await server.start()
    await asyncio.to_thread(own_pg.stop, "fast")
    try:
        recs = await asyncio.gather(*(
            FakeAsterisk("127.0.0.1", server.port, uniqueid=f"1900000000.{i}",
                         callerid="+447400300000", presses=presses).run()
            for i, presses in enumerate([[SILENCE, *OPT_IN], ["2"]])))
    finally:
        await server.drain(timeout=2)
        await asyncio.to_thread(own_pg.start)
    for rec in recs:
        assert rec.variables["CONSENT_RESULT"] == "error", rec.dialogue()
        assert not set(rec.prompt_names()) & CONFIRMATIONS
        assert rec.prompt_names()[-1] == "consent-ivr/error"
        # ...and the dialplan is told so, lest it apologise a second time
        assert rec.variables["CONSENT_APOLOGISED"] == "yes"
    conn = await asyncpg.connect(outage_db)
    try:
        assert await conn.fetchval("SELECT count(*) FROM consent_event") == 0
    finally:
        await conn.close()
    await pool.close()


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """main() points logging at the test's captured stderr; put it back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    structlog.reset_defaults()
    root.handlers[:] = handlers
    root.setLevel(level)
