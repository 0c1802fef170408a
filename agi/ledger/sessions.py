"""Call sessions: which calls are in progress, kept in ``call_session`` so a crash leaves a mark."""

from __future__ import annotations

import asyncio
import uuid
from collections import deque
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

import asyncpg
import structlog

from agi.ledger.decisions import replay_journal
from agi.ledger.journal import Journal
from agi.ledger.ledger import Ledger
from agi.ops.logs import error_summary
from agi.ops.signals import wait_any

if TYPE_CHECKING:
    from agi.ops.metrics import Metrics


log = structlog.get_logger("agi.ledger.sessions")


class _CallEnv(Protocol):
    uniqueid: str
    channel_name: str
    callerid: str
    calleridname: str


class SessionCall(Protocol):
    """What :class:`CallSessions` reads of a call (the server's ``Call`` has it all), so the
    ledger needs no import of the server."""

    call_id: str
    route: str
    outcome: str
    started_at: datetime

    @property
    def env(self) -> _CallEnv: ...


#: a started call as :class:`CallSessions` queues it: call id, route, uniqueid, channel
#: name, caller ID number and name (as Asterisk sent them), peer, started_at
_Start = tuple[str, str, str, str, str, str, str, datetime]


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
                 boot_id: uuid.UUID | None = None, metrics: Metrics | None = None) -> None:
        self.pool = pool
        self.metrics = metrics
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
        #: something is queued: :meth:`run` sleeps until then instead of polling
        self._queued = asyncio.Event()

    # -- hooks the server calls (synchronous, never raise)
    #
    # Both run on every call, so they only queue a tuple; rows, the caller ID's E.164
    # form and the column arrays are built once per flush.

    def started(self, call: SessionCall, peer: str) -> None:
        env = call.env
        self._starts.append((call.call_id, call.route or "/", env.uniqueid, env.channel_name,
                             env.callerid, env.calleridname, peer, call.started_at))
        self._queued.set()
        if len(self._starts) > self.MAX_QUEUED:
            self._starts.popleft()
            log.warning("call_sessions_dropped", reason="queue_full")

    def finished(self, call: SessionCall) -> None:
        ends = self._ends
        ends[call.call_id] = (call.outcome, datetime.now(UTC))
        self._queued.set()
        if len(ends) > self.MAX_QUEUED:
            ends.pop(next(iter(ends)))

    # -- background work

    async def run(self, stop: asyncio.Event) -> None:
        """Flush ``interval`` after a call queued something, until ``stop``; then a last flush.

        With nothing queued it sleeps rather than polls: five wakeups a second were most
        of an idle server's CPU (~1.5 ms a second, benchmark part 6: ~1 ms a call at 50
        calls of ~50 s). A start is still written within ``interval``; a flush that
        failed (database down) keeps its rows queued and is retried every ``interval``.
        """
        queued = self._queued
        while not stop.is_set():
            if not queued.is_set():
                await wait_any(stop, queued)
            await wait_any(stop, timeout=self.interval)
            queued.clear()  # before the flush: a call queueing meanwhile sets it again
            await self.flush()
            if self._starts or self._ends:  # not written (outage): try again
                queued.set()
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
        from agi.ledger.numbers import normalise

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
                          -- agi.ledger.ledger.idempotency_key(call_id, channel, "attempt"), in SQL
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
            if self.metrics is not None:
                self.metrics.calls_interrupted.inc(marked)
        return counts


async def recover_at_start(ledger: Ledger, journal: Journal, sessions: CallSessions, *,
                           metrics: Metrics | None = None) -> None:
    """At ``serve`` start: replay the journal, then file calls a crash cut as interrupted.

    The replay comes first so a call whose decision waited in the journal is seen as
    decided, not interrupted. Best effort: a failure is logged and serving goes on.
    """
    try:
        counts = await replay_journal(ledger, journal, metrics=metrics)
        if counts["files"]:
            log.info("journal_replayed", **counts)
    except Exception as exc:  # noqa: BLE001 - the running replayer retries every 2 s
        log.warning("journal_replay_deferred", error=error_summary(exc))
    try:
        await sessions.recover()
    except Exception as exc:  # noqa: BLE001 - serving matters more than bookkeeping
        log.warning("call_recovery_failed", error=error_summary(exc))
