"""The decision store the flows use: the ledger first, the durable journal on outage."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import deque
from collections.abc import Mapping
from dataclasses import asdict
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import asyncpg
import structlog

from agi.flows.base import CommitResult, StorageUnavailable
from agi.journal import Journal, JournalError
from agi.ledger import AttemptRecord, ConsentDecision, Ledger, LedgerUnavailable
from agi.logconfig import error_summary

if TYPE_CHECKING:
    from agi.call import Call
    from agi.journal import JournalEntry
    from agi.metrics import Metrics

__all__ = ["CallSessions", "LedgerStore", "is_data_error", "replay_journal"]

log = structlog.get_logger("agi.store")

#: a started call as :class:`CallSessions` queues it: call id, route, uniqueid, channel
#: name, caller ID number and name (as Asterisk sent them), peer, started_at
_Start = tuple[str, str, str, str, str, str, str, datetime]


def is_data_error(exc: BaseException) -> bool:
    """True when the database refused the *data* (a CHECK, a type): retrying cannot help.

    Everything else — refused connections, timeouts, ``57P01 admin shutdown`` while
    PostgreSQL stops, ``57P03 starting up``, ``53xxx`` out of resources, serialization
    failures — is an outage: the decision goes to the journal and is replayed later.
    """
    return isinstance(exc, asyncpg.IntegrityConstraintViolationError | asyncpg.DataError)


class LedgerStore:
    """``DecisionStore`` over :class:`Ledger`, falling back to :class:`Journal`."""

    def __init__(
        self, ledger: Ledger, journal: Journal | None = None, *, metrics: Metrics | None = None
    ) -> None:
        self.ledger = ledger
        self.journal = journal
        self.journaled_total = 0
        self.metrics = metrics

    def _timed(self, operation: str) -> contextlib.AbstractContextManager[None]:
        return self.metrics.db_timer(operation) if self.metrics else contextlib.nullcontext()

    async def commit_decision(self, decision: ConsentDecision) -> CommitResult:
        try:
            with self._timed("record_decision"):
                event_id, created = await self.ledger.record_decision(decision)
            if created and self.metrics:
                self.metrics.consent_decision(decision.purpose, decision.decision)
            return CommitResult(event_id=event_id, created=created)
        except Exception as exc:
            if is_data_error(exc):
                log.error("decision_rejected", error=error_summary(exc))
                raise StorageUnavailable(str(exc)) from exc
            log.warning("ledger_unavailable", error=error_summary(exc),
                        step="commit_decision")
            if self.journal is None:
                raise StorageUnavailable(str(exc)) from exc
        try:
            data = decision.to_json()
            data["source"] = "journal"
            await asyncio.to_thread(self.journal.append, "decision", data)
        except JournalError as exc:
            log.error("journal_unavailable", error=error_summary(exc))
            raise StorageUnavailable(str(exc)) from exc
        self.journaled_total += 1
        if self.metrics:
            self.metrics.consent_decision(decision.purpose, decision.decision, journaled=True)
        log.warning("decision_journaled", idempotency_key=decision.idempotency_key)
        return CommitResult(event_id=None, created=True, journaled=True)

    async def record_attempt(self, attempt: AttemptRecord) -> None:
        try:
            with self._timed("record_attempt"):
                await self.ledger.record_attempt(attempt)
            return
        except Exception as exc:  # noqa: BLE001 - best effort: attempts are audit only
            if is_data_error(exc):
                log.error("attempt_rejected", error=error_summary(exc))
                return
            log.warning("ledger_unavailable", error=error_summary(exc),
                        step="record_attempt")
        if self.journal is None:
            return
        data = asdict(attempt)
        for key in ("call_started_at", "ended_at"):
            if data[key] is not None:
                data[key] = data[key].isoformat()
        try:
            await asyncio.to_thread(self.journal.append, "attempt", data)
        except JournalError as exc:
            log.error("journal_unavailable", error=error_summary(exc))


async def replay_journal(ledger: Ledger, journal: Journal) -> dict[str, int]:
    """Replay every pending journal entry into the ledger, idempotently.

    Returns counts: ``replayed`` (newly stored), ``duplicates`` (already there — a
    second replay, or a replay after a crash mid-replay), ``rejected`` (malformed or
    refused as data: set aside in ``rejected.jsonl``, never silently dropped) and
    ``files``. Raises :class:`LedgerUnavailable` at the first outage, leaving the file
    (and every entry after it) for the next pass.
    """
    counts = {"replayed": 0, "duplicates": 0, "rejected": 0, "files": 0}
    for path in await asyncio.to_thread(journal.take_pending):
        try:
            entries = await asyncio.to_thread(lambda p=path: list(journal.read(p)))  # type: ignore[misc]
        except FileNotFoundError:
            continue  # another replayer finished it
        for entry in entries:
            try:
                created = await _replay_one(ledger, entry)
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                await _reject(journal, entry, f"malformed: {type(exc).__name__}: {exc}")
                counts["rejected"] += 1
                continue
            except Exception as exc:
                if is_data_error(exc):
                    await _reject(journal, entry, f"refused by the database: {exc}")
                    counts["rejected"] += 1
                    continue
                if isinstance(exc, LedgerUnavailable):
                    raise
                raise LedgerUnavailable(str(exc) or type(exc).__name__) from exc
            if created is not None:
                counts["replayed" if created else "duplicates"] += 1
        await asyncio.to_thread(journal.mark_done, path)
        counts["files"] += 1
    return counts


async def _replay_one(ledger: Ledger, entry: JournalEntry) -> bool | None:
    """Store one entry; True if new, False if already there, None if not replayable."""
    from agi.ledger import DigitPress, PromptHeard

    if not isinstance(entry.data, Mapping):
        raise TypeError("entry data is not an object")
    if entry.kind == "decision":
        _, created = await ledger.record_decision(ConsentDecision.from_json(dict(entry.data)))
        return created
    if entry.kind == "attempt":
        data = dict(entry.data)
        for key in ("call_started_at", "ended_at"):
            if data.get(key):
                data[key] = datetime.fromisoformat(data[key])
        data["digits"] = tuple(DigitPress(**d) for d in data.get("digits", ()))
        data["prompts"] = tuple(PromptHeard(**p) for p in data.get("prompts", ()))
        return await ledger.record_attempt(AttemptRecord(**data)) is not None
    raise ValueError(f"unknown entry kind {entry.kind!r}")


async def _reject(journal: Journal, entry: JournalEntry, reason: str) -> None:
    log.error("journal_entry_rejected", file=entry.file.name, lineno=entry.lineno,
              reason=reason[:300])
    from agi.metrics import current

    current().journal_rejected.inc()
    await asyncio.to_thread(journal.reject, entry, reason)


# --------------------------------------------------------------------------- call sessions


class CallSessions:
    """Which calls are in progress, kept in ``call_session`` so a crash leaves a trace.

    The per-call cost stays off the call's path and small: :meth:`started` and
    :meth:`finished` only queue; :meth:`run` flushes every ``interval`` seconds with one
    multi-row INSERT and one multi-row UPDATE, whatever the call rate. A call that
    starts and ends within one interval costs one row. A SIGKILL loses at most the
    last interval's starts (calls younger than ``interval``).

    On start, :meth:`recover` marks this instance's rows from earlier boots that were
    left ``in_progress`` as ``interrupted`` and files an ``interrupted`` attempt for
    each that holds no decision — an interrupted call is never consent.
    """

    MAX_QUEUED = 20_000  # while the database is down; beyond it the oldest are dropped

    def __init__(self, pool: asyncpg.Pool, *, instance: str, default_region: str = "GB",
                 timeout: float = 3.0, interval: float = 0.2,
                 boot_id: uuid.UUID | None = None) -> None:
        self.pool = pool
        self.instance = instance
        self.default_region = default_region
        self.timeout = timeout
        self.interval = interval
        self.boot_id = boot_id or uuid.uuid4()
        #: calls started, not written yet: one tuple each (see :meth:`started`), in order
        self._starts: deque[_Start] = deque()
        #: calls ended, not written yet: call id → (outcome, ended_at)
        self._ends: dict[str, tuple[str, datetime]] = {}
        self._flushed: set[str] = set()  # written as in progress, end not written yet
        self._lock = asyncio.Lock()

    # -- hooks the server calls (synchronous, never raise)
    #
    # Both run on every call, so they only queue a tuple; rows, the caller ID's E.164
    # form and the column arrays are built once per flush.

    def started(self, call: Call, peer: str) -> None:
        env = call.env
        self._starts.append((call.call_id, call.route or "/", env.uniqueid, env.channel,
                             env.callerid, env.calleridname, peer, call.started_at))
        if len(self._starts) > self.MAX_QUEUED:
            self._starts.popleft()
            log.warning("call_sessions_dropped", reason="queue_full")

    def finished(self, call: Call) -> None:
        ends = self._ends
        ends[call.call_id] = (call.outcome, datetime.now(UTC))
        if len(ends) > self.MAX_QUEUED:
            ends.pop(next(iter(ends)))

    # -- background work

    async def run(self, stop: asyncio.Event) -> None:
        """Flush every ``interval`` until ``stop``; then a last flush."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.interval)
            await self.flush()
        await self.flush()

    async def flush(self) -> None:
        """Write queued starts and ends; on failure keep them for the next pass.

        A call started and ended since the last flush is one row, inserted finished;
        an end of a call already written is an UPDATE; an end of a call whose start was
        dropped (queue full) is dropped too.
        """
        async with self._lock:
            starts, ends = self._starts, self._ends
            if not starts and not ends:
                return
            self._starts, self._ends = deque(), {}
            new = {st[0]: st for st in starts}  # a repeated call id: the newest start wins
            ended = {k: end for k, end in ends.items() if k not in new and k in self._flushed}
            try:
                async with self.pool.acquire(timeout=self.timeout) as conn:
                    await self._write(conn, list(new.values()), ends, ended)
            except Exception as exc:  # noqa: BLE001 - bookkeeping must never break a call
                log.warning("call_sessions_unsaved", error=error_summary(exc),
                            pending=len(new) + len(ended))
                # put back, oldest first (a call may have ended meanwhile: the newer wins)
                starts.extend(self._starts)
                while len(starts) > self.MAX_QUEUED:
                    starts.popleft()
                self._starts = starts
                for key, end in ends.items():
                    self._ends.setdefault(key, end)
                return
            self._flushed.difference_update(ended)
            self._flushed.update(k for k in new if k not in ends)

    async def _write(self, conn: asyncpg.Connection, starts: list[_Start],
                     ends: Mapping[str, tuple[str, datetime]],
                     ended: Mapping[str, tuple[str, datetime]]) -> None:
        """Insert ``starts`` (finished already when in ``ends``); update ``ended``."""
        from agi.numbers import normalise

        region = self.default_region
        cut: list[str] = []
        async with conn.transaction():
            if starts:
                cols: tuple[list[Any], ...] = tuple([] for _ in range(12))
                (call_ids, routes, states, outcomes, uniqueids, channels, caller_nums,
                 caller_names, e164s, peers, started_ats, ended_ats) = cols
                for call_id, route, uniqueid, channel, callerid, callername, peer, at in starts:
                    end = ends.get(call_id)
                    call_ids.append(call_id)
                    routes.append(route)
                    if end is None:
                        states.append("in_progress")
                        outcomes.append(None)
                        ended_ats.append(None)
                    else:
                        states.append("finished")
                        outcomes.append(end[0])
                        ended_ats.append(end[1])
                        if end[0] == "cut_short":
                            cut.append(call_id)
                    uniqueids.append(uniqueid or None)
                    channels.append(channel or None)
                    caller_nums.append(callerid or None)
                    caller_names.append(callername or None)
                    e164s.append(normalise(callerid, region))
                    peers.append(peer)
                    started_ats.append(at)
                await conn.execute(
                    """INSERT INTO call_session (instance, boot_id, call_id, route, state,
                           outcome, uniqueid, channel_name, callerid_num, callerid_name,
                           number_e164, peer, started_at, ended_at)
                       SELECT $1, $2, * FROM unnest($3::text[], $4::text[], $5::text[],
                           $6::text[], $7::text[], $8::text[], $9::text[], $10::text[],
                           $11::text[], $12::text[], $13::timestamptz[], $14::timestamptz[])
                       ON CONFLICT (instance, boot_id, call_id) DO NOTHING""",
                    self.instance, self.boot_id, *cols,
                    timeout=self.timeout,
                )
            if ended:
                await conn.execute(
                    """UPDATE call_session s SET state = 'finished', outcome = u.outcome,
                           ended_at = u.ended_at
                       FROM unnest($3::text[], $4::text[], $5::timestamptz[])
                           AS u(call_id, outcome, ended_at)
                       WHERE s.instance = $1 AND s.boot_id = $2 AND s.call_id = u.call_id""",
                    self.instance, self.boot_id, list(ended),
                    [o for o, _ in ended.values()], [t for _, t in ended.values()],
                    timeout=self.timeout,
                )
            cut += [k for k, (o, _) in ended.items() if o == "cut_short"]
            if cut:
                ids = await conn.fetch(
                    "SELECT id FROM call_session WHERE instance = $1 AND boot_id = $2 "
                    "AND call_id = ANY($3::text[])",
                    self.instance, self.boot_id, cut, timeout=self.timeout,
                )
                await self._file_interrupted(conn, [r["id"] for r in ids], "cut_short_by_drain")

    async def _file_interrupted(self, conn: asyncpg.Connection, session_ids: list[int],
                                reason: str) -> int:
        """An 'interrupted' attempt per call session that holds no decision (idempotent)."""
        if not session_ids:
            return 0
        return int(await conn.fetchval(
            """WITH filed AS (
                   INSERT INTO consent_attempt (route, outcome, reason, number_e164, uniqueid,
                       channel_name, callerid_num, callerid_name, call_started_at, ended_at,
                       instance, idempotency_key)
                   SELECT s.route, 'interrupted', $2, s.number_e164, s.uniqueid,
                          s.channel_name, s.callerid_num, s.callerid_name, s.started_at,
                          coalesce(s.ended_at, clock_timestamp()), s.instance,
                          -- agi.ledger.idempotency_key(call_id, channel, "attempt"), in SQL
                          s.call_id || '|' || coalesce(s.channel_name, '') || '|attempt'
                   FROM call_session s
                   WHERE s.id = ANY($1::bigint[])
                     AND NOT EXISTS (
                         SELECT 1 FROM consent_event e
                         WHERE e.uniqueid = s.uniqueid
                            OR e.idempotency_key
                               = s.call_id || '|' || coalesce(s.channel_name, '') || '|decision')
                   ON CONFLICT (idempotency_key) DO NOTHING
                   RETURNING 1)
               SELECT count(*) FROM filed""",
            session_ids, reason, timeout=self.timeout,
        ))

    async def recover(self) -> dict[str, int]:
        """Mark calls left ``in_progress`` by earlier boots of this instance as interrupted."""
        async with self.pool.acquire(timeout=self.timeout) as conn, conn.transaction():
            rows = await conn.fetch(
                """UPDATE call_session SET state = 'interrupted',
                          outcome = coalesce(outcome, 'interrupted')
                   WHERE instance = $1 AND boot_id <> $2 AND state = 'in_progress'
                   RETURNING id""",
                self.instance, self.boot_id, timeout=self.timeout,
            )
            marked = len(rows)
            filed = await self._file_interrupted(conn, [r["id"] for r in rows],
                                                 "server_stopped_mid_call")
        counts = {"interrupted": marked, "attempts_filed": filed}
        if marked:
            log.warning("calls_interrupted_found", **counts)
            from agi.metrics import current

            current().calls_interrupted.inc(marked)
        return counts


async def recover_at_start(ledger: Ledger, journal: Journal, sessions: CallSessions) -> None:
    """At ``serve`` start: replay the journal, then file calls a crash cut as interrupted.

    The replay comes first so a call whose decision waited in the journal is seen as
    decided, not interrupted. Best effort: a failure is logged and serving goes on.
    """
    try:
        counts = await replay_journal(ledger, journal)
        if counts["files"]:
            log.info("journal_replayed", **counts)
    except Exception as exc:  # noqa: BLE001 - the running replayer retries every 2 s
        log.warning("journal_replay_deferred", error=error_summary(exc))
    try:
        await sessions.recover()
    except Exception as exc:  # noqa: BLE001 - serving matters more than bookkeeping
        log.warning("call_recovery_failed", error=error_summary(exc))
