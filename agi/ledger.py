"""The consent ledger: the records of a decision, and the SQL that writes and reads them.

The consent writes (decisions, attempts, with group commit) and the point-in-time reads
(``consent_at``, attempts for a number) live here; other modules hold their own reads:
:mod:`agi.store` (call sessions, crash recovery), :mod:`agi.evidence` and :mod:`agi.chain`
(the evidence document and the hash chain), :mod:`agi.report` (campaign reports) and
:mod:`agi.campaigns` (the dialer's facts). Domain types go in and out, never asyncpg
records. Writes are idempotent on a natural key, so a retried or replayed write never creates
a second row; the database itself refuses UPDATE and DELETE of consent events.
"""

from __future__ import annotations

import asyncio
import functools
import json
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Final, Generic, TypeVar

import asyncpg

from agi import resources

__all__ = [
    "DB_UNAVAILABLE",
    "AttemptRecord",
    "ConsentDecision",
    "ConsentStatus",
    "DigitPress",
    "Ledger",
    "LedgerUnavailable",
    "PromptHeard",
    "StoredEvent",
    "apply_migrations",
    "connect_pool",
    "heard_in_full",
    "idempotency_key",
    "migrations_dir",
    "statement_heard",
]

_Item = TypeVar("_Item")
_Result = TypeVar("_Result")

_MIGRATION_LOCK = 0x636F6E73  # 'cons': one migrator at a time, across hosts


class LedgerUnavailable(Exception):
    """The database could not be reached or answered too late. Fail closed."""


def migrations_dir() -> Path:
    """The migrations shipped with this install (:func:`agi.resources.migrations_dir`)."""
    return resources.migrations_dir()


_MIGRATION_NAME = re.compile(r"(\d{3})_[a-z0-9_]+\.sql")


async def apply_migrations(conn: asyncpg.Connection, directory: Path | None = None) -> list[str]:
    """Apply pending ``NNN_name.sql`` files in order, each in a transaction.

    An advisory lock serialises concurrent migrators (several servers starting at
    once); re-running is a no-op. Returns the names applied.
    """
    directory = directory or migrations_dir()
    files = sorted(p for p in directory.iterdir() if _MIGRATION_NAME.fullmatch(p.name))
    numbers = [p.name[:3] for p in files]
    clashes = sorted({n for n in numbers if numbers.count(n) > 1})
    if clashes:
        # versions are tracked by number: a second file with the same number would be
        # skipped silently on databases that already have the first
        raise ValueError(f"two migrations share a number: {', '.join(clashes)} in {directory}")
    applied: list[str] = []
    await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK)
    try:
        # only the owner may create it; the least-privilege server role just reads it
        if await conn.fetchval("SELECT to_regclass('schema_migration')") is None:
            await conn.execute(
                """CREATE TABLE IF NOT EXISTS schema_migration (
                       version    integer PRIMARY KEY,
                       name       text NOT NULL,
                       applied_at timestamptz NOT NULL DEFAULT clock_timestamp())"""
            )
        done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migration")}
        for path in files:
            version = int(path.name[:3])
            if version in done:
                continue
            async with conn.transaction():
                await conn.execute(path.read_text())
                await conn.execute(
                    "INSERT INTO schema_migration (version, name) VALUES ($1, $2)",
                    version,
                    path.name,
                )
            applied.append(path.name)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK)
    return applied


async def pending_migrations(conn: asyncpg.Connection, directory: Path | None = None) -> list[str]:
    directory = directory or migrations_dir()
    files = sorted(p.name for p in directory.iterdir() if _MIGRATION_NAME.fullmatch(p.name))
    try:
        done = {r["name"] for r in await conn.fetch("SELECT name FROM schema_migration")}
    except asyncpg.UndefinedTableError:
        return files
    return [f for f in files if f not in done]


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Pool ``reset``: nothing to undo, so no round trip on every release.

    asyncpg's default sends ``SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *;
    RESET ALL`` each time a connection goes back to the pool — three releases a call,
    ~4 % of the server's CPU per call and as many statements for PostgreSQL. It still
    rolls back a transaction left open before calling this. Nothing of ours leaves
    session state on a pooled connection: no LISTEN, no SET, cursors only inside
    transactions, and the one session-level lock (migrations) is taken on a connection
    of its own (:func:`migrate`).
    """


async def migrate(url: str, *, timeout: float = 10.0) -> list[str]:
    """Apply pending migrations on a connection of their own (see :func:`apply_migrations`)."""
    conn = await asyncpg.connect(url, timeout=timeout)
    try:
        return await apply_migrations(conn)
    finally:
        await conn.close()


async def connect_pool(
    url: str, *, min_size: int = 2, max_size: int = 10, timeout: float = 3.0
) -> asyncpg.Pool:
    """A pool whose every statement is bounded by ``timeout`` seconds."""
    pool = await asyncpg.create_pool(
        url,
        min_size=min_size,
        max_size=max_size,
        timeout=timeout,
        command_timeout=timeout,
        server_settings={"application_name": "consent-ivr"},
        reset=_keep_session,
    )
    assert pool is not None
    return pool


# --------------------------------------------------------------------------- types


@dataclass(frozen=True, slots=True)
class DigitPress:
    """One key the caller pressed, at which step, how long after the call started.

    ``ignored``: pressed while a statement played whole (it counted for nothing, and the
    record says so rather than losing it).
    """

    step: str
    digit: str
    offset_ms: int
    ignored: bool = False


@dataclass(frozen=True, slots=True)
class PromptHeard:
    """One prompt played to the caller (whole or interrupted), with its manifest hash.

    ``heard_ms`` is how much of it the caller heard, ``length_ms`` how long it is (both
    ``None`` when unknown: events recorded before they were kept, a manifest without lengths).
    """

    id: str
    lang: str
    sha256: str
    text: str
    interrupted: bool = False
    heard_ms: int | None = None
    length_ms: int | None = None

    @property
    def heard_in_full(self) -> bool | None:
        """True when played to its end; None when the lengths are unknown."""
        return heard_in_full(self.interrupted, self.heard_ms, self.length_ms)


def idempotency_key(call_id: str, scope: str, step: str) -> str:
    """``<call>|<scope>|<step>``: the one row a step of one call may write, however often the
    write is retried or replayed. ``call_id`` is Asterisk's uniqueid (the server's own id
    only when Asterisk sent none); ``scope`` the channel name, or the route's name.

    Mirrored in SQL by ``agi.store`` (``call_id || '|' || channel_name || '|attempt'``) for the
    attempts it files after a crash; tests/integration/test_reliability_sessions.py holds
    the two to the same text.
    """
    return f"{call_id}|{scope}|{step}"


def heard_in_full(interrupted: bool, heard_ms: int | None, length_ms: int | None) -> bool | None:
    """Was a prompt heard to its end? ``None`` when its lengths were not recorded."""
    if interrupted:
        return False
    if heard_ms is None or length_ms is None:
        return None
    return heard_ms >= length_ms


def statement_heard(prompts: Sequence[Mapping[str, Any]], purpose: str) -> str:
    """Was the purpose's statement heard in full on the call that made this decision?

    ``yes``; ``no`` (played, but not to its end); ``unknown`` (played, lengths not recorded:
    events from before they were kept); ``not played`` (an opt-out needs none; imports and
    events recorded before statements existed have none).
    """
    verdicts = [heard_in_full(bool(p.get("interrupted")), p.get("heard_ms"), p.get("length_ms"))
                for p in prompts if p.get("id") == f"statement-{purpose}"]
    if not verdicts:
        return "not played"
    if True in verdicts:
        return "yes"
    return "no" if False in verdicts else "unknown"


@dataclass(frozen=True, slots=True)
class ConsentDecision:
    """Everything recorded with one decision: who, when, how, and what they heard."""

    number_e164: str
    organisation: str
    purpose: str
    decision: str  # 'opt_in' | 'opt_out'
    method: str
    evidence_strength: str  # 'caller_id' | 'keyed_in' | 'import'
    decided_at: datetime
    idempotency_key: str
    instance: str
    channel: str = "automated_call"
    digits: Sequence[DigitPress] = ()
    prompts: Sequence[PromptHeard] = ()
    uniqueid: str | None = None
    linkedid: str | None = None
    channel_name: str | None = None
    callerid_num: str | None = None
    callerid_name: str | None = None
    call_started_at: datetime | None = None
    captured_by: str = "first_party"
    third_party_name: str | None = None
    source: str = "live"

    def to_json(self) -> dict[str, Any]:
        """Plain JSON-able form (for the durable journal)."""
        out = asdict(self)
        for key in ("decided_at", "call_started_at"):
            if out[key] is not None:
                out[key] = out[key].isoformat()
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ConsentDecision:
        data = dict(data)
        data["decided_at"] = datetime.fromisoformat(data["decided_at"])
        if data.get("call_started_at"):
            data["call_started_at"] = datetime.fromisoformat(data["call_started_at"])
        data["digits"] = tuple(DigitPress(**d) for d in data.get("digits", ()))
        data["prompts"] = tuple(PromptHeard(**p) for p in data.get("prompts", ()))
        return cls(**data)


@dataclass(frozen=True, slots=True)
class AttemptRecord:
    """A call that ended without a decision (or was refused): audit, never consent."""

    route: str
    outcome: str  # no_decision | hangup | error | interrupted | refused
    reason: str
    idempotency_key: str
    instance: str
    number_e164: str | None = None
    organisation: str | None = None
    purpose: str | None = None
    digits: Sequence[DigitPress] = ()
    prompts: Sequence[PromptHeard] = ()
    uniqueid: str | None = None
    linkedid: str | None = None
    channel_name: str | None = None
    callerid_num: str | None = None
    callerid_name: str | None = None
    call_started_at: datetime | None = None
    ended_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """A consent event as stored."""

    id: int
    recorded_at: datetime
    decided_at: datetime
    number_e164: str
    organisation: str
    purpose: str
    channel: str
    decision: str
    method: str
    evidence_strength: str
    captured_by: str
    third_party_name: str | None
    digits: list[dict[str, Any]]
    prompts: list[dict[str, Any]]
    uniqueid: str | None
    linkedid: str | None
    channel_name: str | None
    callerid_num: str | None
    callerid_name: str | None
    call_started_at: datetime | None
    instance: str
    source: str
    idempotency_key: str

    @property
    def statement_heard_in_full(self) -> str:
        """:func:`statement_heard` of this event's prompts: ``yes`` | ``no`` | …"""
        return statement_heard(self.prompts, self.purpose)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        for key, value in out.items():
            if isinstance(value, datetime):
                out[key] = value.isoformat()
        out["statement_heard_in_full"] = self.statement_heard_in_full
        return out


@dataclass(frozen=True, slots=True)
class ConsentStatus:
    """Answer to "what is the consent of N for P at T": the latest event, if any."""

    number_e164: str
    purpose: str
    organisation: str | None
    at: datetime
    state: str  # 'opted_in' | 'opted_out' | 'none'
    latest: StoredEvent | None
    history: list[StoredEvent] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "number": self.number_e164,
            "purpose": self.purpose,
            "organisation": self.organisation,
            "at": self.at.isoformat(),
            "state": self.state,
            "latest": self.latest.to_json() if self.latest else None,
            "history": [e.to_json() for e in self.history],
        }


# Per decision and attempt, so the dicts are spelled out: dataclasses.asdict deep-copies
# field by field (~4 µs a prompt). Same keys, same order (the fields'), same JSON.
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
        d.decided_at, d.number_e164, d.organisation, d.purpose, d.channel, d.decision,
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
        channel: str = "automated_call",
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
                    channel,
                    organisation,
                    now,
                    1000 if with_history else 1,
                    timeout=self.timeout,
                )
        except (OSError, TimeoutError, asyncpg.PostgresConnectionError,
                asyncpg.InterfaceError, asyncpg.exceptions.CannotConnectNowError) as exc:
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
