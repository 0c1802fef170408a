"""The decision store the flows use: the ledger first, the durable journal on outage."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import asdict
from typing import TYPE_CHECKING

import structlog

from agi.flows.base import CommitResult, StorageUnavailable
from agi.journal import Journal, JournalError
from agi.ledger import AttemptRecord, ConsentDecision, Ledger, LedgerUnavailable

if TYPE_CHECKING:
    from agi.metrics import Metrics

__all__ = ["LedgerStore", "replay_journal"]

log = structlog.get_logger("agi.store")


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
        except LedgerUnavailable as exc:
            log.warning("ledger_unavailable", error=str(exc)[:200], step="commit_decision")
            if self.journal is None:
                raise StorageUnavailable(str(exc)) from exc
        try:
            data = decision.to_json()
            data["source"] = "journal"
            await asyncio.to_thread(self.journal.append, "decision", data)
        except JournalError as exc:
            log.error("journal_unavailable", error=str(exc)[:200])
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
        except LedgerUnavailable as exc:
            log.warning("ledger_unavailable", error=str(exc)[:200], step="record_attempt")
        if self.journal is None:
            return
        data = asdict(attempt)
        for key in ("call_started_at", "ended_at"):
            if data[key] is not None:
                data[key] = data[key].isoformat()
        try:
            await asyncio.to_thread(self.journal.append, "attempt", data)
        except JournalError as exc:
            log.error("journal_unavailable", error=str(exc)[:200])


async def replay_journal(ledger: Ledger, journal: Journal) -> dict[str, int]:
    """Replay every pending journal entry into the ledger, idempotently.

    Returns counts: ``replayed`` (newly stored), ``duplicates`` (already there),
    ``files``. Stops at the first database error, leaving the rest for later.
    """
    from datetime import datetime

    from agi.ledger import DigitPress, PromptHeard

    counts = {"replayed": 0, "duplicates": 0, "files": 0}
    for path in await asyncio.to_thread(journal.take_pending):
        entries = await asyncio.to_thread(lambda p=path: list(journal.read(p)))
        for entry in entries:
            if entry.kind == "decision":
                decision = ConsentDecision.from_json(entry.data)
                _, created = await ledger.record_decision(decision)
            elif entry.kind == "attempt":
                data = dict(entry.data)
                for key in ("call_started_at", "ended_at"):
                    if data.get(key):
                        data[key] = datetime.fromisoformat(data[key])
                data["digits"] = tuple(DigitPress(**d) for d in data.get("digits", ()))
                data["prompts"] = tuple(PromptHeard(**p) for p in data.get("prompts", ()))
                created = await ledger.record_attempt(AttemptRecord(**data)) is not None
            else:
                continue
            counts["replayed" if created else "duplicates"] += 1
        await asyncio.to_thread(journal.mark_done, path)
        counts["files"] += 1
    return counts
