"""The hash chain: Python and SQL agree byte for byte, and tampering is caught.

Tampering is done the way a superuser would: ``SET session_replication_role =
replica`` (no ordinary trigger fires) or ``ALTER TABLE … DISABLE TRIGGER``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import string
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
import structlog
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agi.cli.main import main
from agi.ledger.chain import GENESIS, canonical, event_hash, jsonb_text, verify_chain
from agi.ledger.ledger import Ledger
from agi.ledger.records import ConsentDecision, DigitPress, PromptHeard


def decision(i: int, **changes: Any) -> ConsentDecision:
    base: dict[str, Any] = dict(
        number_e164=f"+4477009001{i:02d}",
        organisation="Example Energy Ltd",
        purpose="marketing-calls",
        decision="opt_in" if i % 2 else "opt_out",
        method="ivr_inbound",
        evidence_strength="caller_id",
        decided_at=datetime(2025, 1, 1, 12, 0, tzinfo=UTC) + timedelta(seconds=i, microseconds=7),
        idempotency_key=f"call-{i}|PJSIP/x-{i}|decision",
        instance="test",
        digits=(DigitPress("question", "1", 5230), DigitPress("confirm", "1", 9100)),
        prompts=(PromptHeard("identify", "en", "ab" * 32, 'We are "Example" \\ Ltd.\n'),),
        uniqueid=f"1700000000.{i}",
        linkedid=f"1700000000.{i}",
        channel_name=f"PJSIP/x-{i}",
        callerid_num=f"+4477009001{i:02d}",
        callerid_name="Zoë 'O\u2019Neil'; DROP TABLE consent_event;--",
        call_started_at=datetime(2025, 1, 1, 11, 59, tzinfo=UTC),
    )
    base.update(changes)
    return ConsentDecision(**base)


async def seed(ledger: Ledger, n: int = 5) -> None:
    for i in range(1, n + 1):
        await ledger.record_decision(decision(i))


async def superuser(db_url: str) -> asyncpg.Connection:
    conn = await asyncpg.connect(db_url)
    await conn.execute("SET session_replication_role = replica")
    return conn


# --------------------------------------------------------------------------- agreement


async def test_python_canonical_and_hash_match_the_database(ledger: Ledger, pool: Any) -> None:
    await seed(ledger, 4)
    await ledger.record_decision(decision(9, callerid_name=None, linkedid=None, digits=(),
                                          call_started_at=None, third_party_name="Agency\tX"))
    rows = await pool.fetch(
        "SELECT consent_event_canonical(e) AS sql_canon, e.*, e.digits::text AS dtext, "
        "e.prompts::text AS ptext FROM consent_event e ORDER BY id"
    )
    prev = GENESIS
    for row in rows:
        event = dict(row)
        # the parsed-JSON path (evidence exports) and the raw-text path must agree
        event["digits"] = json.loads(row["dtext"])
        event["prompts"] = json.loads(row["ptext"])
        assert canonical(event) == row["sql_canon"]
        event["digits"], event["prompts"] = row["dtext"], row["ptext"]
        assert canonical(event) == row["sql_canon"]
        assert bytes(row["prev_hash"]) == prev
        assert event_hash(prev, event) == bytes(row["hash"])
        prev = bytes(row["hash"])
    report = await verify_chain(pool)
    assert report.ok and report.checked == 5 and report.head_hash == prev.hex()


_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
                max_size=40)
_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**15), 10**15) | _text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_text, inner, max_size=4),
    max_leaves=12,
)
_ts = st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(2200, 1, 1),
                   timezones=st.just(UTC))


def _run_in_thread_loop(db_url: str, body: Any) -> None:
    """Hypothesis drives a sync function; give it its own loop and connection."""
    loop = asyncio.new_event_loop()
    conn = loop.run_until_complete(asyncpg.connect(db_url))
    try:
        body(loop, conn)
    finally:
        loop.run_until_complete(conn.close())
        loop.close()


async def test_jsonb_text_matches_postgresql(db_url: str) -> None:
    def body(loop: asyncio.AbstractEventLoop, conn: asyncpg.Connection) -> None:
        @settings(max_examples=150, deadline=None, database=None,
                  suppress_health_check=[HealthCheck.too_slow])
        @given(_json)
        def check(value: Any) -> None:
            pg = loop.run_until_complete(
                conn.fetchval("SELECT $1::jsonb::text", json.dumps(value))
            )
            assert jsonb_text(value) == pg

        check()

    await asyncio.to_thread(_run_in_thread_loop, db_url, body)


async def test_canonical_form_agrees_with_sql_for_arbitrary_rows(db_url: str) -> None:
    def body(loop: asyncio.AbstractEventLoop, conn: asyncpg.Connection) -> None:
        counter = iter(range(10**9))

        @settings(max_examples=60, deadline=None, database=None,
                  suppress_health_check=[HealthCheck.too_slow])
        @given(
            text=_text,
            maybe=st.none() | _text,
            when=_ts,
            started=st.none() | _ts,
            digits=st.lists(st.fixed_dictionaries(
                {"step": _text, "digit": st.sampled_from(list("0123456789*#")),
                 "offset_ms": st.integers(0, 10**9)}), max_size=3),
            prompts=st.lists(_json, max_size=3),
            purpose=st.from_regex(r"\A[a-z0-9][a-z0-9._-]{0,20}\Z"),
            enum=st.tuples(st.sampled_from(["automated_call", "live_call"]),
                           st.sampled_from(["opt_in", "opt_out"]),
                           st.sampled_from(["caller_id", "keyed_in", "import"])),
        )
        def check(text: str, maybe: str | None, when: datetime, started: datetime | None,
                  digits: list[Any], prompts: list[Any], purpose: str,
                  enum: tuple[str, str, str]) -> None:
            values = {
                "decided_at": when, "number_e164": "+447700900123", "organisation": text or "x",
                "purpose": purpose, "channel": enum[0], "decision": enum[1],
                "method": "admin", "captured_by": "third_party", "third_party_name": maybe,
                "evidence_strength": enum[2], "digits": digits, "prompts": prompts,
                "uniqueid": maybe, "linkedid": text, "channel_name": maybe,
                "callerid_num": text, "callerid_name": maybe, "call_started_at": started,
                "instance": text or "i", "source": "import",
                "idempotency_key": f"k{next(counter)}",
            }
            row = loop.run_until_complete(conn.fetchrow(
                """INSERT INTO consent_event (decided_at, number_e164, organisation, purpose,
                       channel, decision, method, captured_by, third_party_name,
                       evidence_strength, digits, prompts, uniqueid, linkedid, channel_name,
                       callerid_num, callerid_name, call_started_at, instance, source,
                       idempotency_key)
                   VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11::jsonb,$12::jsonb,$13,$14,$15,
                           $16,$17,$18,$19,$20,$21)
                   RETURNING id, recorded_at, prev_hash, hash, consent_event_canonical(
                       consent_event) AS canon""",
                *[json.dumps(v) if k in ("digits", "prompts") else v
                  for k, v in values.items()],
            ))
            # Python computes from the values it sent, not from what it read back
            event = {**values, "id": row["id"], "recorded_at": row["recorded_at"]}
            assert canonical(event) == row["canon"]
            assert event_hash(bytes(row["prev_hash"]), event) == bytes(row["hash"])

        check()

    await asyncio.to_thread(_run_in_thread_loop, db_url, body)
    conn = await asyncpg.connect(db_url)
    try:
        assert (await verify_chain(conn)).ok
    finally:
        await conn.close()


# --------------------------------------------------------------------------- tampering


async def test_edited_row_is_caught(ledger: Ledger, db_url: str, pool: Any) -> None:
    await seed(ledger)
    assert (await verify_chain(pool)).ok
    su = await superuser(db_url)
    try:
        await su.execute("UPDATE consent_event SET decision = 'opt_in' WHERE id = 2")
    finally:
        await su.close()
    report = await verify_chain(pool)
    assert not report.ok
    assert report.first_break is not None
    assert (report.first_break.id, report.first_break.kind) == (2, "content_mismatch")
    assert report.checked == 1


async def test_edited_and_rehashed_row_breaks_the_next_link(
    ledger: Ledger, db_url: str, pool: Any
) -> None:
    await seed(ledger)
    su = await superuser(db_url)
    try:
        await su.execute(
            "UPDATE consent_event SET callerid_name = 'someone else' WHERE id = 3;"
            "UPDATE consent_event e SET hash = consent_event_hash(e.prev_hash, e) WHERE id = 3"
        )
    finally:
        await su.close()
    brk = (await verify_chain(pool)).first_break
    assert brk is not None and (brk.id, brk.kind) == (4, "broken_link")


async def test_deleted_row_is_caught(ledger: Ledger, db_url: str, pool: Any) -> None:
    await seed(ledger)
    su = await superuser(db_url)
    try:
        await su.execute("DELETE FROM consent_event WHERE id = 3")
    finally:
        await su.close()
    brk = (await verify_chain(pool)).first_break
    assert brk is not None and (brk.id, brk.kind) == (4, "broken_link")


async def test_deleted_last_row_is_caught_by_the_head(
    ledger: Ledger, db_url: str, pool: Any
) -> None:
    await seed(ledger)
    su = await asyncpg.connect(db_url)
    try:
        await su.execute("ALTER TABLE consent_event DISABLE TRIGGER consent_event_no_update_delete")
        await su.execute("DELETE FROM consent_event WHERE id = 5")
        await su.execute("ALTER TABLE consent_event ENABLE TRIGGER consent_event_no_update_delete")
    finally:
        await su.close()
    report = await verify_chain(pool)
    assert report.first_break is not None and report.first_break.kind == "head_mismatch"
    assert report.checked == 4


async def test_inserted_rows_bypassing_the_trigger_are_caught(
    ledger: Ledger, db_url: str, pool: Any
) -> None:
    await seed(ledger)
    su = await superuser(db_url)
    try:
        # before the first event, with a hash that is self-consistent
        await su.execute(
            """INSERT INTO consent_event (id, decided_at, number_e164, organisation, purpose,
                   channel, decision, method, evidence_strength, instance, idempotency_key,
                   prev_hash, hash)
               OVERRIDING SYSTEM VALUE
               VALUES (0, now(), '+447700900999', 'Example Energy Ltd', 'marketing-calls',
                       'automated_call', 'opt_in', 'admin', 'import', 'x', 'forged-0',
                       '\\x00'::bytea, '\\x00'::bytea)"""
        )
        await su.execute(
            """UPDATE consent_event e SET prev_hash = $1,
                   hash = consent_event_hash($1, e) WHERE id = 0""",
            GENESIS,
        )
    finally:
        await su.close()
    brk = (await verify_chain(pool)).first_break
    assert brk is not None and (brk.id, brk.kind) == (1, "broken_link")


async def test_appended_row_bypassing_the_trigger_is_caught(
    ledger: Ledger, db_url: str, pool: Any
) -> None:
    await seed(ledger)
    su = await asyncpg.connect(db_url)
    try:
        await su.execute("ALTER TABLE consent_event DISABLE TRIGGER consent_event_chain_link")
        await su.execute("ALTER TABLE consent_event DISABLE TRIGGER consent_event_chain_advance")
        await su.execute("ALTER TABLE consent_event DISABLE TRIGGER consent_event_no_update_delete")
        # a forger who knows the algorithm links it correctly, but cannot fake the head
        # without also rewriting consent_chain_head (see docs/security.md on anchoring)
        await su.execute(
            """INSERT INTO consent_event (decided_at, number_e164, organisation, purpose,
                   channel, decision, method, evidence_strength, instance, idempotency_key,
                   prev_hash, hash)
               SELECT now(), '+447700900999', 'Example Energy Ltd', 'marketing-calls',
                      'automated_call', 'opt_in', 'admin', 'import', 'x', 'forged-1',
                      (SELECT hash FROM consent_event ORDER BY id DESC LIMIT 1), '\\x00'"""
        )
        await su.execute(
            "UPDATE consent_event e SET hash = consent_event_hash(e.prev_hash, e) "
            "WHERE idempotency_key = 'forged-1'"
        )
    finally:
        await su.close()
    brk = (await verify_chain(pool)).first_break
    assert brk is not None and brk.kind == "head_mismatch"


async def test_concurrent_writers_keep_one_chain_in_id_order(ledger: Ledger, pool: Any) -> None:
    await asyncio.gather(*(ledger.record_decision(decision(i)) for i in range(1, 41)))
    # duplicate deliveries fire the BEFORE trigger but must not move the head
    await asyncio.gather(*(ledger.record_decision(decision(i)) for i in range(1, 11)))
    report = await verify_chain(pool)
    assert report.ok, report.first_break
    assert report.checked == 40


async def test_repeatable_read_writer_cannot_fork_the_chain(ledger: Ledger, db_url: str) -> None:
    await seed(ledger, 1)
    a = await asyncpg.connect(db_url)
    try:
        tx = a.transaction(isolation="repeatable_read")
        await tx.start()
        await a.fetchval("SELECT count(*) FROM consent_event")  # snapshot taken now
        await ledger.record_decision(decision(2))  # commits after a's snapshot
        with pytest.raises(asyncpg.SerializationError):
            await a.execute(
                """INSERT INTO consent_event (decided_at, number_e164, organisation, purpose,
                       channel, decision, method, evidence_strength, instance, idempotency_key)
                   VALUES (now(), '+447700900999', 'o', 'p', 'automated_call', 'opt_in',
                           'admin', 'import', 'x', 'rr')"""
            )
        await tx.rollback()
    finally:
        await a.close()
    assert (await verify_chain(ledger.pool)).ok


# --------------------------------------------------------------------------- the CLI


async def test_verify_ledger_command(
    ledger: Ledger, db_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DATABASE_URL", db_url)
    await seed(ledger, 3)
    assert await asyncio.to_thread(main, ["verify-ledger"]) == 0
    assert "ledger OK: 3 event(s) verified" in capsys.readouterr().out
    su = await superuser(db_url)
    try:
        await su.execute("UPDATE consent_event SET number_e164 = '+447700900555' WHERE id = 2")
    finally:
        await su.close()
    assert await asyncio.to_thread(main, ["verify-ledger"]) == 1
    out = capsys.readouterr().out
    assert "ledger BROKEN at event 2 (content_mismatch)" in out
    assert await asyncio.to_thread(main, ["verify-ledger", "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["first_break"]["id"] == 2


def test_canonical_is_stable() -> None:
    """The documented example: if this changes, every stored hash stops verifying."""
    event = {c: None for c in ("third_party_name", "uniqueid", "linkedid", "channel_name",
                               "callerid_num", "callerid_name", "call_started_at")}
    event.update(id=1, recorded_at=datetime(2025, 1, 1, tzinfo=UTC),
                 decided_at=datetime(2025, 1, 1, tzinfo=UTC) - timedelta(microseconds=1),
                 number_e164="+447700900123", organisation="Org é", purpose="p",
                 channel="automated_call", decision="opt_in", method="ivr_inbound",
                 captured_by="first_party", evidence_strength="caller_id",
                 digits=[{"step": "q", "digit": "1", "offset_ms": 1}], prompts=[],
                 instance="i", source="live", idempotency_key="k")
    text = canonical(event)
    assert text.startswith("consent_event.v1\nid=1:1\nrecorded_at=16:1735689600000000\n"
                           "decided_at=16:1735689599999999\n")
    assert "organisation=6:Org é\n" in text
    assert 'digits=45:[{"step": "q", "digit": "1", "offset_ms": 1}]\n' in text
    assert "callerid_name=~\n" in text
    assert event_hash(GENESIS, event).hex() == event_hash(bytes(32), event).hex()
    assert set(string.hexdigits) >= set(event_hash(GENESIS, event).hex())


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """main() points logging at the test's captured stderr; put it back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    structlog.reset_defaults()
    root.handlers[:] = handlers
    root.setLevel(level)
