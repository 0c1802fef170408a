"""The consent ledger's SQL: decisions and attempts written with group commit, point-in-time reads.

The consent writes (decisions, attempts) and the point-in-time reads (``consent_at``, attempts
for a number) live here. Other modules of :mod:`agi.ledger` hold their own statements:
:mod:`agi.ledger.sessions` (call sessions, crash recovery), :mod:`agi.ledger.evidence` and
:mod:`agi.ledger.chain` (the evidence document and the hash chain); outside it,
:mod:`agi.reports.campaign` (campaign reports) and :mod:`agi.outbound.campaigns` and its siblings
(the dialer's facts). Domain records (:mod:`agi.ledger.records`) go in and out, never asyncpg
records. Writes are idempotent on a natural key, so a retried or replayed write never creates a
second row; the database itself refuses UPDATE and DELETE of consent events.
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any, Final, Generic, TypeVar

import asyncpg

from agi.ledger.records import (
    AttemptRecord,
    ConsentDecision,
    ConsentStatus,
    DigitPress,
    LedgerUnavailable,
    PromptHeard,
    StoredEvent,
)

_Item = TypeVar("_Item")
_Result = TypeVar("_Result")

def _prompts_json(prompts: Sequence[PromptHeard]) -> str:
    """``json.dumps`` of the prompts heard, from memoised items (the same text exactly)."""
    return "[" + ", ".join(map(_prompt_json, prompts)) + "]"


@functools.lru_cache(maxsize=1024)
def _prompt_json(p: PromptHeard) -> str:
    # a call hears prompts from a small catalogue: each (prompt, language, interrupted)
    # is encoded once, not once per decision
    return json.dumps({"id": p.id, "lang": p.lang, "sha256": p.sha256, "text": p.text,
                       "interrupted": p.interrupted, "heard_ms": p.heard_ms,
                       "length_ms": p.length_ms}, ensure_ascii=False)


def _digits_json(digits: Sequence[DigitPress]) -> str:
    return json.dumps([{"step": d.step, "digit": d.digit, "offset_ms": d.offset_ms,
                        "ignored": d.ignored} for d in digits])


_EVENT_COLUMNS = """id, recorded_at, decided_at, number_e164, organisation, purpose, channel,
    decision, method, evidence_strength, captured_by, third_party_name, digits, prompts,
    uniqueid, linkedid, channel_name, callerid_num, callerid_name, call_started_at,
    instance, source, idempotency_key"""


# the column list is a constant of this module, never input
_CONSENT_AT_SQL = f"""SELECT {_EVENT_COLUMNS} FROM consent_event
    WHERE number_e164 = $1 AND purpose = $2 AND channel = $3
      AND ($4::text IS NULL OR organisation = $4)
      AND recorded_at <= $5 AND decided_at <= $5
    ORDER BY decided_at DESC, id DESC
    LIMIT $6"""  # noqa: S608


def _event(row: asyncpg.Record) -> StoredEvent:
    data = dict(row)
    data["digits"] = json.loads(data["digits"])
    data["prompts"] = json.loads(data["prompts"])
    data["consent_channel"] = data.pop("channel")
    return StoredEvent(**data)


# --------------------------------------------------------------------------- ledger


_RECORD_DECISION_SQL = """
    WITH ins AS (
        INSERT INTO consent_event (
            decided_at, number_e164, organisation, purpose, channel, decision, method,
            captured_by, third_party_name, evidence_strength, digits, prompts, uniqueid,
            linkedid, channel_name, callerid_num, callerid_name, call_started_at,
            instance, source, idempotency_key)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11::jsonb, $12::jsonb, $13,
                $14, $15, $16, $17, $18, $19, $20, $21)
        ON CONFLICT (idempotency_key) DO NOTHING
        RETURNING id)
    SELECT id, true AS created FROM ins
    UNION ALL
    SELECT id, false FROM consent_event WHERE idempotency_key = $21
    LIMIT 1"""

#: the same row for many decisions (column arrays, in arrival order): the chain trigger
#: sees the rows this statement inserted before each one, so it links them in order
_RECORD_DECISIONS_SQL = """
    INSERT INTO consent_event (
        decided_at, number_e164, organisation, purpose, channel, decision, method,
        captured_by, third_party_name, evidence_strength, digits, prompts, uniqueid,
        linkedid, channel_name, callerid_num, callerid_name, call_started_at,
        instance, source, idempotency_key)
    SELECT c1, c2, c3, c4, c5, c6, c7, c8, c9, c10, c11::jsonb, c12::jsonb, c13, c14, c15,
           c16, c17, c18, c19, c20, c21
    FROM unnest($1::timestamptz[], $2::text[], $3::text[], $4::text[], $5::text[],
                $6::text[], $7::text[], $8::text[], $9::text[], $10::text[], $11::text[],
                $12::text[], $13::text[], $14::text[], $15::text[], $16::text[],
                $17::text[], $18::timestamptz[], $19::text[], $20::text[], $21::text[])
         WITH ORDINALITY AS u(c1, c2, c3, c4, c5, c6, c7, c8, c9, c10, c11, c12, c13, c14,
                              c15, c16, c17, c18, c19, c20, c21, ord)
    ORDER BY ord
    ON CONFLICT (idempotency_key) DO NOTHING
    RETURNING id, idempotency_key"""

#: What the driver raises when the database is unreachable, too slow, or cancelled the
#: statement: "the database could not confirm it" (never "the data is wrong"). The one tuple
#: every caller uses: a decision then goes to the journal, a dialer backs off, a gate refuses.
DB_UNAVAILABLE: Final = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.QueryCanceledError,
)
#: most decisions one group commit carries (one statement, one WAL flush): large, because
#: a loaded event loop takes long to come back to the committer, and everything that
#: queued meanwhile should go in the next statement, not wait for several more
_GROUP_MAX = 1000


def _decision_args(d: ConsentDecision) -> tuple[Any, ...]:
    return (
        d.decided_at, d.number_e164, d.organisation, d.purpose, d.consent_channel, d.decision,
        d.method, d.captured_by, d.third_party_name, d.evidence_strength,
        _digits_json(d.digits), _prompts_json(d.prompts), d.uniqueid, d.linkedid,
        d.channel_name, d.callerid_num, d.callerid_name, d.call_started_at, d.instance,
        d.source, d.idempotency_key,
    )


_ATTEMPT_COLUMNS = """route, outcome, reason, number_e164, organisation, purpose, digits,
    prompts, uniqueid, linkedid, channel_name, callerid_num, callerid_name,
    call_started_at, ended_at, instance, idempotency_key"""

#: attempts in one statement (column arrays, in arrival order); the column list is a
#: constant of this module, never input
_RECORD_ATTEMPTS_SQL = f"""
    INSERT INTO consent_attempt ({_ATTEMPT_COLUMNS})
    SELECT c1, c2, c3, c4, c5, c6, c7::jsonb, c8::jsonb, c9, c10, c11, c12, c13, c14, c15,
           c16, c17
    FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                $7::text[], $8::text[], $9::text[], $10::text[], $11::text[], $12::text[],
                $13::text[], $14::timestamptz[], $15::timestamptz[], $16::text[],
                $17::text[])
         WITH ORDINALITY AS u(c1, c2, c3, c4, c5, c6, c7, c8, c9, c10, c11, c12, c13, c14,
                              c15, c16, c17, ord)
    ORDER BY ord
    ON CONFLICT (idempotency_key) DO NOTHING
    RETURNING id, idempotency_key"""  # noqa: S608


def _attempt_args(a: AttemptRecord) -> tuple[Any, ...]:
    return (
        a.route, a.outcome, a.reason, a.number_e164, a.organisation, a.purpose,
        _digits_json(a.digits), _prompts_json(a.prompts), a.uniqueid, a.linkedid,
        a.channel_name, a.callerid_num, a.callerid_name, a.call_started_at, a.ended_at,
        a.instance, a.idempotency_key,
    )


class _GroupWriter(Generic[_Item, _Result]):
    """Group commit: writes that arrive while one is in flight go together in the next.

    ``one(item)`` writes a single item (and raises :class:`LedgerUnavailable` on an
    outage); ``many(items)`` writes a batch in one statement and returns the result of
    each item by its index — an index it leaves out is written again alone. A batch the
    database refuses as data is retried one item at a time, so a bad row fails alone;
    an outage fails the whole batch with :class:`LedgerUnavailable`. Every caller is
    answered only once its statement committed.
    """

    def __init__(self, one: Callable[[_Item], Awaitable[_Result]],
                 many: Callable[[list[_Item]], Awaitable[dict[int, _Result]]]) -> None:
        self._one = one
        self._many = many
        self._queue: list[tuple[_Item, asyncio.Future[_Result]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def submit(self, item: _Item) -> _Result:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[_Result] = loop.create_future()
        self._queue.append((item, future))
        writer = self._writer
        if writer is None or writer.done() or writer.get_loop() is not loop:
            self._writer = loop.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        batch: list[tuple[_Item, asyncio.Future[_Result]]] = []
        try:
            while self._queue:
                batch = [(i, f) for i, f in self._queue[:_GROUP_MAX] if not f.done()]
                del self._queue[:_GROUP_MAX]
                if len(batch) == 1:
                    await self._settle(*batch[0])
                elif batch:
                    await self._group(batch)
        except BaseException:
            # stopped (cancelled at shutdown): nobody may wait forever for an answer
            for _, future in [*batch, *self._queue]:
                if not future.done():
                    future.set_exception(LedgerUnavailable("the ledger writer stopped"))
            self._queue.clear()
            raise

    async def _settle(self, item: _Item, future: asyncio.Future[_Result]) -> None:
        try:
            result = await self._one(item)
        except Exception as exc:  # noqa: BLE001 - handed to the waiting caller as is
            if not future.done():
                future.set_exception(exc)
            return
        if not future.done():
            future.set_result(result)

    async def _group(self, batch: list[tuple[_Item, asyncio.Future[_Result]]]) -> None:
        try:
            results = await self._many([item for item, _ in batch])
        except DB_UNAVAILABLE as exc:
            for _, future in batch:
                if not future.done():
                    future.set_exception(LedgerUnavailable(str(exc) or type(exc).__name__))
            return
        except Exception:  # noqa: BLE001 - one bad item: each alone, for its own answer
            for item, future in batch:
                await self._settle(item, future)
            return
        for i, (item, future) in enumerate(batch):
            if i not in results:
                await self._settle(item, future)
            elif not future.done():
                future.set_result(results[i])


class Ledger:
    """Consent reads and writes over an asyncpg pool; failures become LedgerUnavailable.

    Decisions are group-committed. The hash chain (migration 003) makes every writer take
    one advisory lock and hold it through its COMMIT, WAL flush included, so separate
    transactions commit one flush at a time (~450 a second on the 2-core benchmark
    machine, whatever the concurrency). Decisions that arrive while a commit is in
    flight therefore wait and go together in the next one — a single multi-row INSERT,
    in arrival order, which the chain trigger links row by row exactly as separate
    statements — and every caller is answered only once that statement committed. A
    lone decision is the single statement it always was. A batch that fails on the
    data is retried one decision at a time, so a bad row fails alone. Attempts (calls
    that ended without a decision: hang-ups, timeouts, cancels) go the same way, in a
    group of their own.
    """

    def __init__(self, pool: asyncpg.Pool, *, timeout: float = 3.0) -> None:
        self.pool = pool
        self.timeout = timeout
        self._decisions = _GroupWriter(self._record_one, self._decision_group)
        self._attempts = _GroupWriter(self._attempt_one, self._attempt_group)

    async def record_decision(self, d: ConsentDecision) -> tuple[int, bool]:
        """Store one decision exactly once. Returns (event id, True if newly stored).

        Raises :class:`LedgerUnavailable` when the database cannot confirm the write:
        the caller must then not be told the decision was stored (or must journal it).
        """
        return await self._decisions.submit(d)

    async def _decision_group(self, batch: list[ConsentDecision]) -> dict[int, tuple[int, bool]]:
        # one statement, one round trip, one WAL flush: a loaded event loop delays every
        # round trip, so N statements in one transaction would hold the chain lock N times
        # as long
        columns = list(zip(*map(_decision_args, batch), strict=True))
        keys = [d.idempotency_key for d in batch]
        inserted = await self.pool.fetch(_RECORD_DECISIONS_SQL, *columns, timeout=self.timeout)
        created = {r["idempotency_key"]: int(r["id"]) for r in inserted}
        existing: dict[str, int] = {}
        if len(created) < len(set(keys)):  # retried deliveries: already in the ledger
            existing = {r["idempotency_key"]: int(r["id"]) for r in await self.pool.fetch(
                "SELECT idempotency_key, id FROM consent_event "
                "WHERE idempotency_key = ANY($1::text[])",
                [k for k in set(keys) if k not in created], timeout=self.timeout)}
        answered: set[str] = set()
        results: dict[int, tuple[int, bool]] = {}
        for i, key in enumerate(keys):
            if key in created and key not in answered:
                results[i] = (created[key], True)  # the first delivery of a key stored it
            elif key in created or key in existing:
                results[i] = (created.get(key) or existing[key], False)
            else:  # cannot happen (the key is unique and never deleted): asked again alone
                continue
            answered.add(key)
        return results

    async def _insert(self, runner: Any, d: ConsentDecision) -> tuple[int, bool]:
        row = await runner.fetchrow(_RECORD_DECISION_SQL, *_decision_args(d),
                                    timeout=self.timeout)
        if row is None:  # concurrent insert committed between the two halves: read it
            existing = await runner.fetchval(
                "SELECT id FROM consent_event WHERE idempotency_key = $1", d.idempotency_key
            )
            return int(existing), False
        return int(row["id"]), bool(row["created"])

    async def _record_one(self, d: ConsentDecision) -> tuple[int, bool]:
        try:
            return await self._insert(self.pool, d)
        except DB_UNAVAILABLE as exc:
            raise LedgerUnavailable(str(exc) or type(exc).__name__) from exc

    async def record_attempt(self, a: AttemptRecord) -> int | None:
        """Store a call that ended without a decision; idempotent. Returns its id (None
        when that attempt was stored already). Group-committed as decisions are."""
        return await self._attempts.submit(a)

    async def _attempt_one(self, a: AttemptRecord) -> int | None:
        """A lone attempt: the group statement with one row."""
        try:
            return (await self._attempt_group([a]))[0]
        except DB_UNAVAILABLE as exc:
            raise LedgerUnavailable(str(exc) or type(exc).__name__) from exc

    async def _attempt_group(self, batch: list[AttemptRecord]) -> dict[int, int | None]:
        columns = list(zip(*map(_attempt_args, batch), strict=True))
        inserted = await self.pool.fetch(_RECORD_ATTEMPTS_SQL, *columns, timeout=self.timeout)
        ids = {r["idempotency_key"]: int(r["id"]) for r in inserted}
        # the first delivery of a key stored it; a repeat (here or earlier) stored nothing
        return {i: ids.pop(a.idempotency_key, None) for i, a in enumerate(batch)}

    async def consent_at(
        self,
        number_e164: str,
        purpose: str,
        *,
        organisation: str | None = None,
        at: datetime | None = None,
        consent_channel: str = "automated_call",
        with_history: bool = False,
    ) -> ConsentStatus:
        """What is the consent of ``number`` for ``purpose`` at time ``at`` (default now)?

        The latest decision wins (by when the caller decided, then by id); only events
        the ledger already held at ``at`` count. With ``organisation=None`` every
        organisation's events count (CLI overview); the gate always passes one.
        """
        try:
            async with self.pool.acquire(timeout=self.timeout) as conn:
                now = at or await conn.fetchval("SELECT clock_timestamp()")
                rows = await conn.fetch(
                    _CONSENT_AT_SQL,
                    number_e164,
                    purpose,
                    consent_channel,
                    organisation,
                    now,
                    1000 if with_history else 1,
                    timeout=self.timeout,
                )
        except DB_UNAVAILABLE as exc:
            raise LedgerUnavailable(str(exc) or type(exc).__name__) from exc
        events = [_event(r) for r in rows]
        latest = events[0] if events else None
        state = "none"
        if latest is not None:
            state = "opted_in" if latest.decision == "opt_in" else "opted_out"
        return ConsentStatus(
            number_e164=number_e164,
            purpose=purpose,
            organisation=organisation,
            at=now,
            state=state,
            latest=latest,
            history=events if with_history else [],
        )

    async def attempts_for(self, number_e164: str, limit: int = 100) -> list[dict[str, Any]]:
        rows = await self.pool.fetch(
            """SELECT id, recorded_at, route, outcome, reason, purpose, uniqueid, digits
               FROM consent_attempt WHERE number_e164 = $1
               ORDER BY recorded_at DESC, id DESC LIMIT $2""",
            number_e164,
            limit,
        )
        out = []
        for r in rows:
            item = dict(r)
            item["recorded_at"] = item["recorded_at"].isoformat()
            item["digits"] = json.loads(item["digits"])
            out.append(item)
        return out
