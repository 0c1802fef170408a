"""The decision store the flows use: the ledger first, the durable journal on outage; the replay.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from dataclasses import asdict
from datetime import datetime
from typing import TYPE_CHECKING

import asyncpg
import structlog

from agi.ledger.journal import Journal, JournalError
from agi.ledger.ledger import Ledger
from agi.ledger.records import (
    AttemptRecord,
    CommitResult,
    ConsentDecision,
    LedgerUnavailable,
    StorageUnavailable,
)
from agi.ops.logs import error_summary

if TYPE_CHECKING:
    from agi.ledger.journal import JournalEntry
    from agi.ops.metrics import Metrics


log = structlog.get_logger("agi.ledger.decisions")




def is_data_error(exc: BaseException) -> bool:
    """True when the database refused the *data* (a CHECK, a type): retrying cannot help.

    Everything else — refused connections, timeouts, ``57P01 admin shutdown`` while
    PostgreSQL stops, ``57P03 starting up``, ``53xxx`` out of resources, serialization
    failures — is an outage: the decision goes to the journal and is replayed later.
    """
    return isinstance(exc, asyncpg.IntegrityConstraintViolationError | asyncpg.DataError)


class LedgerDecisionStore:
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


async def replay_journal(ledger: Ledger, journal: Journal, *,
                         metrics: Metrics | None = None) -> dict[str, int]:
    """Replay every pending journal entry into the ledger, idempotently.

    Returns counts: ``replayed`` (newly stored), ``duplicates`` (already there — a
    second replay, or a replay after a crash mid-replay), ``rejected`` (malformed or
    refused as data: set aside in ``rejected.jsonl``, never silently dropped) and
    ``files``. Raises :class:`LedgerUnavailable` at the first outage, leaving the file
    (and every entry after it) for the next pass. ``metrics`` counts the rejected entries.
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
                await _reject(journal, entry, f"malformed: {type(exc).__name__}: {exc}", metrics)
                counts["rejected"] += 1
                continue
            except Exception as exc:
                if is_data_error(exc):
                    await _reject(journal, entry, f"refused by the database: {exc}", metrics)
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
    from agi.ledger.records import DigitPress, PromptHeard

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


async def _reject(journal: Journal, entry: JournalEntry, reason: str,
                  metrics: Metrics | None) -> None:
    log.error("journal_entry_rejected", file=entry.file.name, lineno=entry.lineno,
              reason=reason[:300])
    if metrics is not None:
        metrics.journal_rejected.inc()
    await asyncio.to_thread(journal.reject, entry, reason)


